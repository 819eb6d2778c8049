package decisionlog

import (
	"context"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/agentauthz/agentauthz/internal/testenv"
)

// BenchmarkAppendPaced appends open loop at 7,200 records/s from 64
// workers, as the load harness's half-load run calls the log, and reports
// the latency from each record's scheduled start (b.N records:
// -benchtime 20000x is about 3 s) and the flushes per second: the log's own
// share of the half-load p99 (docs/decision-log.md, "Group commit, measured").
func BenchmarkAppendPaced(b *testing.B) {
	const rate, workers = 7200, 64
	o := testOptions(b)
	reg := prometheus.NewRegistry()
	o.Registerer = reg
	l := mustOpen(b, o)
	defer l.Close()
	waitPrepared(b, l)
	// The first segment is appended to (none was prepared yet): fill it
	// until the log runs on a preallocated one, as a server does after its
	// first megabyte.
	for w := 0; counterValue(b, reg, "agentauthz_decisionlog_segments_total", "preallocated") == 0; w++ {
		appendN(b, l, w*100, 100)
	}
	tokens := make(chan time.Time, 1<<16)
	lat := make([][]time.Duration, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			i := w * 1000003
			for sched := range tokens {
				if _, err := l.Append(context.WithoutCancel(context.Background()), sampleRecord(i)); err != nil {
					b.Error(err)
				}
				lat[w] = append(lat[w], time.Since(sched))
				i++
			}
		})
	}
	flushes0 := metric(b, reg, "agentauthz_decisionlog_fsync_batch_records").GetHistogram().GetSampleCount()
	b.ResetTimer()
	cpu0 := testenv.CPUTime()
	start := time.Now()
	// The pacer sleeps in nanosleep(2) with 1 µs timer slack: the runtime's
	// timers wake an idle process with millisecond resolution.
	runtime.LockOSThread()
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1000, 0, 0, 0)
	interval := time.Second / rate
	next := time.Now()
	for n := 0; n < b.N; {
		for now := time.Now(); !next.After(now) && n < b.N; n++ {
			tokens <- next
			next = next.Add(interval)
		}
		if d := time.Until(next); d > 0 {
			ts := unix.NsecToTimespec(int64(d))
			_ = unix.Nanosleep(&ts, &ts)
		}
	}
	runtime.UnlockOSThread()
	close(tokens)
	wg.Wait()
	el := time.Since(start)
	cpu := testenv.CPUTime() - cpu0
	b.StopTimer()
	flushes := metric(b, reg, "agentauthz_decisionlog_fsync_batch_records").GetHistogram().GetSampleCount() - flushes0
	all := slices.Concat(lat...)
	slices.Sort(all)
	q := func(p float64) float64 { return float64(all[int(p*float64(len(all)-1))].Microseconds()) }
	b.ReportMetric(float64(len(all))/el.Seconds(), "records/s")
	b.ReportMetric(q(.5), "p50-µs")
	b.ReportMetric(q(.99), "p99-µs")
	b.ReportMetric(q(.999), "p99.9-µs")
	b.ReportMetric(q(1), "max-µs")
	b.ReportMetric(float64(flushes)/el.Seconds(), "flushes/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(len(all)), "cpu-µs/record")
}
