package anomaly

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics counts alerts and webhook deliveries.
type Metrics struct {
	Alerts    *prometheus.CounterVec
	Delivered prometheus.Counter
	Failed    prometheus.Counter
	Dropped   prometheus.Counter
}

// NewMetrics registers the anomaly metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Alerts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentauthz_anomaly_alerts_total", Help: "Anomaly alerts raised, by rule.",
		}, []string{"rule"}),
		Delivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "agentauthz_anomaly_webhook_delivered_total", Help: "Alerts the webhook accepted (2xx).",
		}),
		Failed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "agentauthz_anomaly_webhook_failed_total", Help: "Alerts given up on after every retry.",
		}),
		Dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "agentauthz_anomaly_webhook_dropped_total", Help: "Alerts dropped because the webhook queue was full.",
		}),
	}
	reg.MustRegister(m.Alerts, m.Delivered, m.Failed, m.Dropped)
	for _, r := range Rules {
		m.Alerts.WithLabelValues(r)
	}
	return m
}

// Webhook posts each alert as JSON to a URL, with bounded retries and a
// bounded queue: when the receiver is down, the oldest queued alerts are
// dropped (and counted), never the detector slowed.
type Webhook struct {
	url     string
	client  *http.Client
	log     hclog.Logger
	m       *Metrics
	retries int
	backoff time.Duration

	mu    sync.Mutex
	queue []Alert
	wake  chan struct{}
	done  chan struct{}
}

const webhookQueue = 1000

// NewWebhook starts a sender; Close flushes what it can and stops it.
func NewWebhook(url string, log hclog.Logger, m *Metrics) *Webhook {
	w := &Webhook{url: url, client: &http.Client{Timeout: 5 * time.Second}, log: log, m: m, retries: 5, backoff: 500 * time.Millisecond,
		wake: make(chan struct{}, 1), done: make(chan struct{})}
	return w
}

// Send queues an alert.
func (w *Webhook) Send(a Alert) {
	w.mu.Lock()
	if len(w.queue) >= webhookQueue {
		w.queue = w.queue[1:]
		w.m.Dropped.Inc()
	}
	w.queue = append(w.queue, a)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Run delivers queued alerts until ctx ends, then tries what is left once.
func (w *Webhook) Run(ctx context.Context) {
	defer close(w.done)
	for {
		select {
		case <-ctx.Done():
			w.drain(context.WithoutCancel(ctx), 1)
			return
		case <-w.wake:
			w.drain(ctx, w.retries)
		}
	}
}

func (w *Webhook) drain(ctx context.Context, attempts int) {
	for {
		w.mu.Lock()
		if len(w.queue) == 0 {
			w.mu.Unlock()
			return
		}
		a := w.queue[0]
		w.queue = w.queue[1:]
		w.mu.Unlock()
		if err := w.deliver(ctx, a, attempts); err != nil {
			w.m.Failed.Inc()
			w.log.Warn("anomaly webhook: alert not delivered", "rule", a.Rule, "agent", a.Agent, "error", err)
			continue
		}
		w.m.Delivered.Inc()
	}
}

func (w *Webhook) deliver(ctx context.Context, a Alert, attempts int) error {
	body, err := json.Marshal(a)
	if err != nil {
		return err
	}
	delay := w.backoff
	var last error
	for i := range attempts {
		if i > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(delay):
			}
			delay *= 2
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := w.client.Do(req)
		if err != nil {
			last = err
			continue
		}
		resp.Body.Close()
		if resp.StatusCode/100 == 2 {
			return nil
		}
		last = fmt.Errorf("HTTP %d", resp.StatusCode)
		if resp.StatusCode/100 == 4 && resp.StatusCode != http.StatusTooManyRequests {
			return last // the receiver refuses it; retrying will not help
		}
	}
	return fmt.Errorf("%d attempts: %w", attempts, last)
}

// Wait blocks until Run has returned.
func (w *Webhook) Wait() { <-w.done }
