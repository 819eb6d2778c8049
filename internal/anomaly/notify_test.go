package anomaly

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestWebhookRetriesThenDelivers(t *testing.T) {
	var mu sync.Mutex
	calls, got := 0, []Alert{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls == 1 {
			w.WriteHeader(http.StatusServiceUnavailable) // the first try fails
			return
		}
		var a Alert
		if err := json.NewDecoder(r.Body).Decode(&a); err != nil || r.Header.Get("Content-Type") != "application/json" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		got = append(got, a)
	}))
	defer srv.Close()
	m := NewMetrics(prometheus.NewRegistry())
	w := NewWebhook(srv.URL, hclog.NewNullLogger(), m)
	w.backoff = time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	go w.Run(ctx)
	w.Send(Alert{Rule: RuleScopeProbing, Agent: "spiffe://acme.example/agent/a", DecisionIDs: []string{"d1"}})
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(m.Delivered) < 1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	w.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[0].Rule != RuleScopeProbing || calls != 2 {
		t.Fatalf("delivered %+v after %d calls", got, calls)
	}
}

func TestWebhookQueueIsBounded(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	w := NewWebhook("http://127.0.0.1:1/unreachable", hclog.NewNullLogger(), m)
	for range webhookQueue + 25 { // nobody drains it
		w.Send(Alert{Rule: RuleRateBurst})
	}
	if n := testutil.ToFloat64(m.Dropped); n != 25 {
		t.Fatalf("dropped %v, want 25", n)
	}
	if len(w.queue) != webhookQueue {
		t.Fatalf("queue %d, want %d", len(w.queue), webhookQueue)
	}
}
