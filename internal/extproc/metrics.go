package extproc

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of the processor.
type Metrics struct {
	responses   *prometheus.CounterVec
	lookups     *prometheus.CounterVec
	signSeconds prometheus.Histogram
	active      prometheus.Gauge
}

// Outcomes counted in agentauthz_extproc_responses_total. Every response
// gets exactly one of the first group; replaced_upstream_signature and
// mcp_tools_filtered are counted besides.
var outcomes = []string{
	"signed", "unsigned_too_large", "unsigned_streamed", "unsigned_not_sent",
	"no_decision", "headers_too_large", "unsignable", "log_failed", "sign_failed",
	"protocol_error", "stream_ended_early", "internal_error", "mcp_unfilterable",
	"replaced_upstream_signature", "mcp_tools_filtered",
}

// NewMetrics registers the processor's metrics with reg (nil: unregistered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentauthz_extproc_responses_total",
			Help: "Responses seen by the ext_proc processor, by outcome (docs/responses.md).",
		}, []string{"outcome"}),
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentauthz_extproc_decision_lookups_total",
			Help: "Decisions bound to responses, by where they were found: local (made by this process) or envoy_metadata (ext_authz metadata Envoy forwarded: another replica's decision).",
		}, []string{"source"}),
		signSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "agentauthz_extproc_sign_seconds",
			Help:    "Time to build and sign one response signature.",
			Buckets: []float64{10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 5e-3},
		}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "agentauthz_extproc_streams_active",
			Help: "ext_proc streams open now.",
		}),
	}
	for _, o := range outcomes {
		m.responses.WithLabelValues(o)
	}
	for _, s := range []string{"local", "envoy_metadata"} {
		m.lookups.WithLabelValues(s)
	}
	if reg != nil {
		reg.MustRegister(m.responses, m.lookups, m.signSeconds, m.active)
	}
	return m
}

func (m *Metrics) outcome(o string) { m.responses.WithLabelValues(o).Inc() }
