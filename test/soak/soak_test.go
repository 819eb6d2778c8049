//go:build soak

// Package soak runs `agentauthz serve` for a long time at half of its
// measured maximum load and checks that memory and goroutines stay flat.
// It is not part of `make test`: run it with `make soak`, i.e.
//
//	go test -tags soak -run TestSoak -timeout 30m -v ./test/soak
//
// AGENTAUTHZ_SOAK_DURATION (default 10m) and AGENTAUTHZ_SOAK_CALIBRATE
// (default 15s) change the durations. The decision log grows by roughly
// 1.5 KB per decision; 10 minutes at half of max load on a 2-core machine
// is a few GB under the test's temporary directory.
package soak

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/agentauthz/agentauthz/internal/checkreq"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/test/process"
)

func envDuration(t *testing.T, name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return d
}

// requests is a mix of allowed and denied Checks by the dev agents, with
// distinct request ids so that nothing is trivially identical.
func requests(t *testing.T, p *process.Proc) []*authv3.CheckRequest {
	var out []*authv3.CheckRequest
	for i := 0; i < 64; i++ {
		specs := []checkreq.Request{
			{Method: "POST", Path: "/v1/payments", CertPEM: p.AgentCert(t, "payments-agent"), Via: checkreq.ViaPeer},
			{Method: "GET", Path: fmt.Sprintf("/v1/payments/p-%d", i), CertPEM: p.AgentCert(t, "reader"), Via: checkreq.ViaXFCC},
			{Method: "POST", Path: "/v1/payments", CertPEM: p.AgentCert(t, "sanctions-screener"), Via: checkreq.ViaPeer},
			{Method: "GET", Path: "/v1/payments", Via: checkreq.ViaNone},
		}
		s := specs[i%len(specs)]
		s.RequestID = fmt.Sprintf("soak-%d", i)
		req, err := checkreq.Build(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, req)
	}
	return out
}

type sample struct {
	at         time.Duration
	rss        float64 // bytes, /proc/<pid>/status VmRSS
	goroutines float64 // go_goroutines from /metrics
	heap       float64 // go_memstats_heap_inuse_bytes from /metrics
	fds        float64 // process_open_fds from /metrics
}

func take(t *testing.T, p *process.Proc, start time.Time) sample {
	t.Helper()
	rss, err := p.RSSBytes()
	if err != nil {
		t.Fatal(err)
	}
	s := sample{at: time.Since(start).Round(time.Second), rss: float64(rss)}
	for name, dst := range map[string]*float64{"go_goroutines": &s.goroutines, "go_memstats_heap_inuse_bytes": &s.heap, "process_open_fds": &s.fds} {
		if *dst, err = p.Metric(name); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// settle waits for the idle process to reach a steady goroutine count and
// samples it. With a baseline, it waits (at most a minute) for the counts
// to come back to it, and fails if they do not: a leak.
func settle(t *testing.T, p *process.Proc, baseline *sample) sample {
	t.Helper()
	start := time.Now()
	var s sample
	for {
		time.Sleep(time.Second)
		s = take(t, p, start)
		if baseline == nil {
			prev := s
			time.Sleep(time.Second)
			if s = take(t, p, start); s.goroutines == prev.goroutines {
				return s
			}
		} else if s.goroutines <= baseline.goroutines+5 && s.fds <= baseline.fds+2 {
			return s
		}
		if time.Since(start) > time.Minute {
			if baseline != nil {
				t.Errorf("idle after the soak: %.0f goroutines and %.0f fds, before: %.0f and %.0f",
					s.goroutines, s.fds, baseline.goroutines, baseline.fds)
			}
			return s
		}
	}
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// TestSoak: calibrate the maximum rate, then run at half of it and check
// that RSS and heap stay flat (the median of the last quarter of samples
// may exceed the median of the first quarter, after a warm-up fifth, by 15%
// plus 16 MiB), and that the idle process after the soak has the goroutines
// and open files it had before. The log verifies afterwards.
func TestSoak(t *testing.T) {
	duration := envDuration(t, "AGENTAUTHZ_SOAK_DURATION", 10*time.Minute)
	calibrate := envDuration(t, "AGENTAUTHZ_SOAK_CALIBRATE", 15*time.Second)
	bin, err := process.Build(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data := t.TempDir()
	p := process.Start(t, process.Options{Binary: bin, DataDir: data})
	client := p.Client(t)
	reqs := requests(t, p)
	const workers = 128 // group commit: throughput grows with concurrency

	ctx, cancel := context.WithTimeout(context.Background(), calibrate)
	res := process.Load{Client: client, Requests: reqs, Workers: workers}.Run(ctx)
	cancel()
	maxRate := float64(len(res.Acked)) / calibrate.Seconds()
	if res.Errors > 0 || maxRate < 10 {
		t.Fatalf("calibration: %.0f/s with %d errors", maxRate, res.Errors)
	}
	rate := maxRate / 2
	// Goroutines and open files track the requests in flight, so their
	// leak check compares the idle process before and after the soak.
	idleBefore := settle(t, p, nil)
	t.Logf("max %.0f checks/s; soaking at %.0f/s for %v", maxRate, rate, duration)

	start := time.Now()
	var answered atomic.Int64
	ctx, cancel = context.WithTimeout(context.Background(), duration)
	defer cancel()
	done := make(chan process.LoadResult, 1)
	go func() {
		done <- process.Load{Client: client, Requests: reqs, Workers: workers, Rate: rate,
			OnAnswer: func(string, bool) { answered.Add(1) }}.Run(ctx)
	}()
	interval := max(duration/60, time.Second)
	var samples []sample
	tick := time.NewTicker(interval)
	defer tick.Stop()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-tick.C:
			s := take(t, p, start)
			samples = append(samples, s)
			t.Logf("%6v rss %6.1f MiB heap %6.1f MiB goroutines %4.0f fds %3.0f answered %d",
				s.at, s.rss/(1<<20), s.heap/(1<<20), s.goroutines, s.fds, answered.Load())
		}
	}
	soak := <-done
	if soak.Errors > 0 {
		t.Errorf("%d transport errors during the soak", soak.Errors)
	}
	achieved := float64(len(soak.Acked)) / duration.Seconds()
	t.Logf("soak: %d answered (%.0f/s, %d allowed, %d denied)", len(soak.Acked), achieved, soak.Allowed, soak.Denied)
	if achieved < rate*0.8 {
		t.Errorf("the service kept up with only %.0f/s of the %.0f/s offered", achieved, rate)
	}

	if len(samples) < 8 {
		t.Fatalf("only %d samples; run for longer", len(samples))
	}
	steady := samples[len(samples)/5:]
	q := len(steady) / 4
	col := func(f func(sample) float64, part []sample) float64 {
		var xs []float64
		for _, s := range part {
			xs = append(xs, f(s))
		}
		return median(xs)
	}
	for _, m := range []struct {
		name      string
		f         func(sample) float64
		ratio     float64 // allowed relative growth
		allowance float64 // plus an absolute allowance
	}{
		{"rss bytes", func(s sample) float64 { return s.rss }, 0.15, 16 << 20},
		{"heap bytes", func(s sample) float64 { return s.heap }, 0.15, 16 << 20},
	} {
		first, last := col(m.f, steady[:q]), col(m.f, steady[len(steady)-q:])
		limit := first*(1+m.ratio) + m.allowance
		t.Logf("%s: first quarter %.0f, last quarter %.0f (limit %.0f)", m.name, first, last, limit)
		if last > limit {
			t.Errorf("%s grew from %.0f to %.0f over the soak (limit %.0f)", m.name, first, last, limit)
		}
	}

	idleAfter := settle(t, p, &idleBefore)
	t.Logf("idle before: %.0f goroutines, %.0f fds; idle after: %.0f goroutines, %.0f fds",
		idleBefore.goroutines, idleBefore.fds, idleAfter.goroutines, idleAfter.fds)

	p.Signal(syscall.SIGTERM)
	wctx, wcancel := context.WithTimeout(context.Background(), process.StartTimeout)
	defer wcancel()
	if err := p.Wait(wctx); err != nil {
		t.Fatalf("stop: %v", err)
	}
	keys, err := decisionlog.LoadKeySet(filepath.Join(data, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	vr, err := decisionlog.Verify(filepath.Join(data, "log"), keys)
	if err != nil || vr.Problem != nil {
		t.Fatalf("log after the soak: %v %v", err, vr.Problem)
	}
	t.Logf("log verifies: %d records", vr.Records)
}
