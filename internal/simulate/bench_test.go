package simulate

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/policy"
	"github.com/agentauthz/agentauthz/internal/testenv"
)

var (
	benchRecords = flag.Int("simulate.records", 1_000_000, "records in BenchmarkSimulate's log")
	benchDir     = flag.String("simulate.dir", "", "keep BenchmarkSimulate's log here and reuse it on the next run (default: a new temporary one)")
	benchPlain   = flag.Bool("simulate.plain", false, "measure the straightforward way instead: every record decoded by decisionlog.Reader and decided")
)

// benchLog writes (or finds, under -simulate.dir) a log of n decisions by
// 1,000 agents, reads and payments, a record every millisecond, each with
// its own request id and source port as in production.
func benchLog(b *testing.B, n int) string {
	dir := *benchDir
	if dir == "" {
		dir = b.TempDir()
	} else {
		dir = filepath.Join(dir, fmt.Sprintf("simulate-%d", n))
		if _, err := os.Stat(filepath.Join(dir, "complete")); err == nil {
			return filepath.Join(dir, "log")
		}
		if err := os.RemoveAll(dir); err != nil {
			b.Fatal(err)
		}
	}
	l, err := decisionlog.Open(decisionlog.Options{Dir: filepath.Join(dir, "log"), KeyDir: filepath.Join(dir, "keys"), Name: "bench", Mode: decisionlog.Async})
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		a := i % 1000
		rec := &decisionlog.Record{DecisionID: fmt.Sprintf("d%d", i), Time: t0.Add(time.Duration(i) * time.Millisecond),
			Agent: decisionlog.Agent{ID: fmt.Sprintf("agent-%d", a), SPIFFEID: fmt.Sprintf("spiffe://acme.example/agent/agent-%d", a),
				Tenant: "acme.example", TrustLevel: fmt.Sprintf("L%d", 1+a%3), Scopes: []string{"payments:initiate", "payments:read"}, Source: "peer_certificate"},
			Request: decisionlog.Request{ID: fmt.Sprintf("req-%08x", i), Method: "GET", Host: "api.acme.example", Path: "/v1/payments",
				Operation: "payments:read", Source: fmt.Sprintf("10.0.%d.%d:%d", a/250, a%250, 1024+i%50000)},
			Decision: decisionlog.Decision{Allowed: true, HTTPStatus: 200, Reasons: []string{"allowed"}},
		}
		if i%2 == 1 {
			rec.Request.Method, rec.Request.Operation = "POST", "payments:initiate"
		}
		if _, err := l.Append(context.Background(), rec); err != nil {
			b.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
	if *benchDir != "" {
		if err := os.WriteFile(filepath.Join(dir, "complete"), nil, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	return filepath.Join(dir, "log")
}

// BenchmarkSimulate replays a log of -simulate.records decisions under a
// policy that tightens payments, and reports records per second of wall
// time and per second of CPU time (user and system, of the whole process:
// garbage collection included). Run with -cpu 1 for the per-core figure:
//
//	go test -run '^$' -bench Simulate -benchtime 1x -cpu 1 ./internal/simulate -args -simulate.records=1000000 -simulate.dir /tmp/simbench
func BenchmarkSimulate(b *testing.B) {
	logDir := benchLog(b, *benchRecords)
	policyDir := writePolicy(b, testPolicy, data(3, "payments:initiate"))
	b.ResetTimer()
	for range b.N {
		var clock time.Time
		engine, err := policy.New(policy.Config{Dir: policyDir, Path: "agentauthz/authz/decision", Now: func() time.Time { return clock }, DecisionCache: 10000})
		if err != nil {
			b.Fatal(err)
		}
		rp, err := NewReplayer(engine, &clock)
		if err != nil {
			b.Fatal(err)
		}
		acc := NewAccumulator(engine.Revision(), time.Time{}, time.Time{}, nil)
		var r interface {
			Source
			Close() error
		} = NewLogSource(logDir)
		if *benchPlain {
			rp.memo, r = false, decisionlog.NewReader(logDir)
		}
		start, cpu0 := time.Now(), testenv.CPUTime()
		if err := Run(context.Background(), r, rp, acc, time.Time{}, time.Time{}); err != nil {
			b.Fatal(err)
		}
		wall, cpu := time.Since(start), testenv.CPUTime()-cpu0
		r.Close()
		rep := acc.Report()
		if rep.Read != *benchRecords {
			b.Fatalf("read %d of %d", rep.Read, *benchRecords)
		}
		want := 0 // the payments of agents below L3, all allowed when recorded
		for i := 1; i < *benchRecords; i += 2 {
			if i%1000%3 != 2 {
				want++
			}
		}
		if Count(rep.NewlyDenied) != want {
			b.Fatalf("%d newly denied, want the payments of agents below L3, %d", Count(rep.NewlyDenied), want)
		}
		b.ReportMetric(float64(rep.Read)/wall.Seconds(), "records/s")
		if cpu > 0 {
			b.ReportMetric(float64(rep.Read)/cpu.Seconds(), "records/cpu-s")
		}
	}
}
