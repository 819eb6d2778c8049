package revocation

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics is a collector reading the Checker's state at scrape time, so the
// ages are exact and nothing runs in the background to update gauges.
type metrics struct {
	c *Checker

	age, lastRefresh, entries, agents, push, fallback, stale, ready, errs, disabled, refused, pushAge *prometheus.Desc
}

func newMetrics(c *Checker) *metrics {
	t := []string{"tenant"}
	return &metrics{
		c: c,
		age: prometheus.NewDesc("agentauthz_revocation_data_age_seconds",
			"Seconds since thisUpdate of the oldest CRL in force for the tenant.", t, nil),
		lastRefresh: prometheus.NewDesc("agentauthz_revocation_last_refresh_timestamp_seconds",
			"Unix time of the last successful refresh from any source (including 304 Not Modified).", t, nil),
		entries: prometheus.NewDesc("agentauthz_revocation_revoked_entries",
			"Revoked serials in the CRLs in force for the tenant.", t, nil),
		agents: prometheus.NewDesc("agentauthz_revocation_revoked_agents",
			"Agent ids under an agent-level revocation (from the push channel).", t, nil),
		push: prometheus.NewDesc("agentauthz_revocation_push_connected",
			"1 while the watch stream to ca serve is connected, else 0.", t, nil),
		fallback: prometheus.NewDesc("agentauthz_revocation_push_fallback_polling",
			"1 while the push channel is down and its CRL is polled instead.", t, nil),
		stale: prometheus.NewDesc("agentauthz_revocation_stale",
			"1 when checks answer revocation_status_unknown (never loaded, or past nextUpdate+grace).", t, nil),
		ready: prometheus.NewDesc("agentauthz_revocation_sources_ready",
			"1 once every configured source of the tenant has loaded once.", t, nil),
		disabled: prometheus.NewDesc("agentauthz_revocation_disabled",
			"1 for a tenant whose revocation checking is off by explicit opt-out (revoked certificates accepted), 0 for one checked.", t, nil),
		errs: prometheus.NewDesc("agentauthz_revocation_refresh_errors_total",
			"Failed or refused refreshes by source kind (file, url, watch), and failed writes of the CRL high-water marks (state).", []string{"tenant", "source"}, nil),
		refused: prometheus.NewDesc("agentauthz_revocation_push_refused_total",
			"Watch events refused by reason (unsigned, bad_signature, expired, older_generation, bad_restrictions).", []string{"tenant", "reason"}, nil),
		pushAge: prometheus.NewDesc("agentauthz_revocation_push_state_age_seconds",
			"Seconds since the last verified watch event was applied; the restrictions and agent revocations it carried stay in force meanwhile.", t, nil),
	}
}

func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.age, m.lastRefresh, m.entries, m.agents, m.push, m.fallback, m.stale, m.ready, m.errs, m.disabled, m.refused, m.pushAge} {
		ch <- d
	}
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	c := m.c
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, name := range c.disabled {
		ch <- prometheus.MustNewConstMetric(m.disabled, prometheus.GaugeValue, 1, name)
	}
	for _, name := range c.order {
		ch <- prometheus.MustNewConstMetric(m.disabled, prometheus.GaugeValue, 0, name)
		t := c.tenants[name]
		s := t.snapLocked()
		var oldest, n float64
		first := true
		for _, crl := range t.held {
			age := now.Sub(crl.ThisUpdate).Seconds()
			if first || age > oldest {
				oldest, first = age, false
			}
			n += float64(crl.Serials.Len())
		}
		if !first {
			ch <- prometheus.MustNewConstMetric(m.age, prometheus.GaugeValue, oldest, name)
		}
		if !t.lastRefresh.IsZero() {
			ch <- prometheus.MustNewConstMetric(m.lastRefresh, prometheus.GaugeValue,
				float64(t.lastRefresh.UnixNano())/1e9, name)
		}
		ch <- prometheus.MustNewConstMetric(m.entries, prometheus.GaugeValue, n, name)
		ch <- prometheus.MustNewConstMetric(m.agents, prometheus.GaugeValue, float64(len(t.agents)), name)
		if t.cfg.WatchURL != "" {
			ch <- prometheus.MustNewConstMetric(m.push, prometheus.GaugeValue, b2f(t.pushConnected), name)
			ch <- prometheus.MustNewConstMetric(m.fallback, prometheus.GaugeValue, b2f(t.fallback), name)
			for _, r := range []string{PushUnsigned, PushBadSignature, PushExpired, PushOlder, PushBadRestriction} {
				ch <- prometheus.MustNewConstMetric(m.refused, prometheus.CounterValue, float64(t.pushRefused[r]), name, r)
			}
			if !t.pushAt.IsZero() {
				ch <- prometheus.MustNewConstMetric(m.pushAge, prometheus.GaugeValue, now.Sub(t.pushAt).Seconds(), name)
			}
		}
		ch <- prometheus.MustNewConstMetric(m.stale, prometheus.GaugeValue,
			b2f(!s.ready || now.After(s.staleAfter)), name)
		ch <- prometheus.MustNewConstMetric(m.ready, prometheus.GaugeValue, b2f(s.ready), name)
		for _, kind := range []string{kindFile, kindURL, kindWatch, kindState} {
			ch <- prometheus.MustNewConstMetric(m.errs, prometheus.CounterValue, float64(t.errs[kind]), name, kind)
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
