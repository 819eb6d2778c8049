package anomaly

import (
	"bytes"
	"runtime"
	"testing"
	"time"
)

// BenchmarkObserve feeds the 50-agent, 14-day history through every
// detector and reports records per second (run with -cpu 1 for one core)
// and the memory the state holds per agent.
func BenchmarkObserve(b *testing.B) {
	tr := Generate(TrafficConfig{Seed: 1})
	b.ResetTimer()
	for range b.N {
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		d := New(Config{}, nil)
		start := time.Now()
		for _, e := range tr.Events {
			d.Observe(e)
		}
		el := time.Since(start)
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(len(tr.Events))/el.Seconds(), "records/s")
		agents := len(d.State().Agents)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(agents), "heap-bytes/agent")
		var buf bytes.Buffer
		if err := d.State().Save(&buf); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(buf.Len())/float64(agents), "state-bytes/agent")
		runtime.KeepAlive(d)
	}
}
