package decisionlog

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	appends   *prometheus.CounterVec
	appendsOK prometheus.Counter // every successful append: resolved once
	batch     prometheus.Histogram
	latency   prometheus.Histogram
	ready     prometheus.Gauge
	// segments counts segments started, by whether a preallocated file
	// was ready ("preallocated") or the segment is appended to ("appended").
	segments *prometheus.CounterVec
	// recovered counts tails Open cut off the last segment after a crash:
	// "torn_record" (a partial or undecodable last record) or "torn_batch"
	// (a write torn by a power loss); either is kept in a side file.
	recovered *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		appends: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentauthz_decisionlog_appends_total",
			Help: "Decision log appends by result (ok, unavailable, buffer_full, invalid, closed).",
		}, []string{"result"}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "agentauthz_decisionlog_fsync_batch_records",
			Help:    "Records made durable by one fsync (group commit batch size).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 14),
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "agentauthz_decisionlog_append_duration_seconds",
			Help:    "Time from Append to acknowledgement (durable in sync mode, enqueued in async mode).",
			Buckets: []float64{.00005, .0001, .00025, .0005, .001, .002, .005, .01, .025, .05, .1, .25, 1},
		}),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "agentauthz_decisionlog_ready",
			Help: "1 while the decision log can be written, 0 while it is failing.",
		}),
		segments: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentauthz_decisionlog_segments_total",
			Help: "Segments started: preallocated (zeros written ahead, data-only flushes) or appended (none was ready).",
		}, []string{"kind"}),
		recovered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentauthz_decisionlog_recovered_tails_total",
			Help: "Crash damage Open cut off the end of the log: torn_record (a partial or undecodable last record) or torn_batch (a write torn by a power loss); the cut bytes are kept in a .torn-* side file.",
		}, []string{"kind"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.appends, m.batch, m.latency, m.ready, m.segments, m.recovered} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	for _, r := range []string{"ok", "unavailable", "buffer_full", "invalid", "closed"} {
		m.appends.WithLabelValues(r)
	}
	m.appendsOK = m.appends.WithLabelValues("ok")
	m.segments.WithLabelValues("preallocated")
	m.segments.WithLabelValues("appended")
	m.recovered.WithLabelValues("torn_record")
	m.recovered.WithLabelValues("torn_batch")
	return m, nil
}
