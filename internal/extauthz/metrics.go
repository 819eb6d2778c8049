package extauthz

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentauthz/agentauthz/internal/reason"
)

// Metrics are the decision metrics. Reason labels are bounded: a code a
// policy invents that is not a plain snake_case word counts as "other".
type Metrics struct {
	decisions    *prometheus.CounterVec
	latency      prometheus.Histogram
	recordErrors prometheus.Counter
}

// NewMetrics registers the decision metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentauthz_decisions_total",
			Help: "Check decisions by outcome and reason code.",
		}, []string{"allowed", "reason"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "agentauthz_check_duration_seconds",
			Help:    "Time to answer one Check, record included.",
			Buckets: []float64{.0001, .00025, .0005, .001, .002, .005, .01, .025, .05, .1, .25, 1},
		}),
		recordErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "agentauthz_decision_record_errors_total",
			Help: "Decisions whose record could not be written (the request was denied).",
		}),
	}
	reg.MustRegister(m.decisions, m.latency, m.recordErrors)
	for _, c := range reason.Known() {
		m.decisions.WithLabelValues(strconv.FormatBool(c == reason.Allowed), string(c))
	}
	return m
}

func (m *Metrics) observe(c reason.Code, allowed bool, d time.Duration) {
	label := string(c)
	if !reasonLabelRE.MatchString(label) {
		label = "other"
	}
	m.decisions.WithLabelValues(strconv.FormatBool(allowed), label).Inc()
	m.latency.Observe(d.Seconds())
}
