package decisionlog

import (
	"context"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// BenchmarkAppendPaced appends open loop at a fixed rate from 64 workers, as
// the load harness's half-load run calls the log, and reports the latency
// from each record's scheduled start (b.N records: -benchtime 20000x is
// about 3 s at 7,200/s). Its sub-benchmarks are variants of the commit path;
// with -count they take turns, so a drift of the shared machine's speed
// does not decide between them.
func BenchmarkAppendPaced(b *testing.B) {
	for _, v := range []struct {
		name   string
		window time.Duration
		leader bool
		noPrep bool
	}{
		{"writer", 0, false, false},
		{"noprep", 0, false, true},
		{"yield", 0, false, false},
		{"leader", 0, true, false},
		{"window=250us", 250 * time.Microsecond, false, false},
		{"window=500us", 500 * time.Microsecond, false, false},
		{"window=1ms", time.Millisecond, false, false},
	} {
		b.Run(v.name, func(b *testing.B) {
			o := testOptions(b)
			o.commitWindow, o.leader = v.window, v.leader
			o.yield = v.name == "yield"
			if v.noPrep {
				// The first preparation passes, later ones wait: no
				// preparer writes during the measured window.
				var n atomic.Int32
				o.prepHook = func(stop <-chan struct{}) error {
					if n.Add(1) == 1 {
						return nil
					}
					<-stop
					return errStopped
				}
			}
			benchPaced(b, o, 7200)
		})
	}
}

func benchPaced(b *testing.B, o Options, rate float64) {
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
	const workers = 64
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
	flushes0 := histCount(b, reg, "agentauthz_decisionlog_fsync_batch_records")
	b.ResetTimer()
	cpu0 := cpuTime()
	start := time.Now()
	func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1000, 0, 0, 0)
		interval := time.Duration(float64(time.Second) / rate)
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
		close(tokens)
	}()
	wg.Wait()
	el := time.Since(start)
	cpu := cpuTime() - cpu0
	b.StopTimer()
	flushes := histCount(b, reg, "agentauthz_decisionlog_fsync_batch_records") - flushes0
	all := slices.Concat(lat...)
	slices.Sort(all)
	n := len(all)
	if n == 0 {
		return
	}
	q := func(p float64) float64 { return float64(all[int(p*float64(n-1))].Microseconds()) }
	b.ReportMetric(float64(n)/el.Seconds(), "records/s")
	b.ReportMetric(q(.5), "p50-µs")
	b.ReportMetric(q(.99), "p99-µs")
	b.ReportMetric(q(.999), "p99.9-µs")
	b.ReportMetric(q(1), "max-µs")
	b.ReportMetric(float64(flushes)/el.Seconds(), "flushes/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(n), "cpu-µs/record")
}

func histCount(t testing.TB, g prometheus.Gatherer, name string) uint64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

// EXPERIMENT: closed loop, 16 appenders.
func BenchmarkAppendClosed(b *testing.B) {
	for _, v := range []string{"writer", "leader", "window=500us"} {
		b.Run(v, func(b *testing.B) {
			o := testOptions(b)
			o.leader = v == "leader"
			if v == "window=500us" {
				o.commitWindow = 500 * time.Microsecond
			}
			reg := prometheus.NewRegistry()
			o.Registerer = reg
			l := mustOpen(b, o)
			defer l.Close()
			waitPrepared(b, l)
			for w := 0; counterValue(b, reg, "agentauthz_decisionlog_segments_total", "preallocated") == 0; w++ {
				appendN(b, l, w*100, 100)
			}
			benchAppendOpts2(b, l, 16)
		})
	}
}

func benchAppendOpts2(b *testing.B, l *Log, workers int) {
	var next atomic.Int64
	var wg sync.WaitGroup
	lat := make([][]time.Duration, workers)
	b.ResetTimer()
	cpu0 := cpuTime()
	start := time.Now()
	for w := range workers {
		wg.Go(func() {
			for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
				t0 := time.Now()
				if _, err := l.Append(context.Background(), sampleRecord(int(i))); err != nil {
					b.Error(err)
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	cpu := cpuTime() - cpu0
	all := slices.Concat(lat...)
	slices.Sort(all)
	n := len(all)
	b.ReportMetric(float64(n)/el.Seconds(), "records/s")
	b.ReportMetric(float64(all[n/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(all[n*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(float64(all[n*99/100].Microseconds()), "p99.9-µs")
	b.ReportMetric(0, "flushes/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(n), "cpu-µs/record")
}
