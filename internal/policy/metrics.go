package policy

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	reloads      *prometheus.CounterVec
	revision     *prometheus.GaugeVec
	evalDuration prometheus.Histogram
	cache        *prometheus.CounterVec
	cacheHits    prometheus.Counter
	cacheMisses  prometheus.Counter
	dataRefused  prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentauthz_policy_reload_total",
			Help: "Policy loads by result (success, failure). A failure leaves the previous policy serving.",
		}, []string{"result"}),
		revision: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "agentauthz_policy_revision_info",
			Help: "The policy revision serving now (value 1).",
		}, []string{"revision"}),
		evalDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "agentauthz_policy_eval_duration_seconds",
			Help:    "Time to evaluate the prepared policy query for one request.",
			Buckets: prometheus.ExponentialBuckets(10e-6, 2, 16), // 10 µs .. ~330 ms
		}),
		cache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentauthz_policy_decision_cache_total",
			Help: "Decisions answered from the decision cache (hit) or evaluated and cached (miss). Requests of a policy that is not cacheable are not counted.",
		}, []string{"result"}),
		dataRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "agentauthz_policy_data_refused_total",
			Help: "Policy loads refused because data.agentauthz does not follow its schema (also counted as a reload failure). The previous policy and data keep serving.",
		}),
	}
	m.cacheHits = m.cache.WithLabelValues("hit")
	m.cacheMisses = m.cache.WithLabelValues("miss")
	// Both series exist from the start so that a failure rate can be computed.
	m.reloads.WithLabelValues("success")
	m.reloads.WithLabelValues("failure")
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.reloads, m.revision, m.evalDuration, m.cache, m.dataRefused} {
		if err := reg.Register(c); err != nil {
			return nil, errors.Join(errors.New("policy: register metrics"), err)
		}
	}
	return m, nil
}

func (m *metrics) setRevision(rev string) {
	m.revision.Reset()
	m.revision.WithLabelValues(rev).Set(1)
}
