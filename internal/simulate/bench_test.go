package simulate

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/policy"
	"github.com/agentauthz/agentauthz/internal/server"
)

var benchRecords = flag.Int("simulate.records", 1_000_000, "records in BenchmarkSimulate's log")

// BenchmarkSimulate replays a log of -simulate.records decisions by 1,000
// agents (reads and payments) under a policy that tightens payments, and
// reports records per second. Run with -cpu 1 for the per-core figure.
func BenchmarkSimulate(b *testing.B) {
	dir := b.TempDir()
	l, err := decisionlog.Open(decisionlog.Options{Dir: filepath.Join(dir, "log"), KeyDir: filepath.Join(dir, "keys"), Name: "bench", Mode: decisionlog.Async})
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	for i := range *benchRecords {
		a := i % 1000
		rec := &decisionlog.Record{DecisionID: fmt.Sprintf("d%d", i), Time: t0.Add(time.Duration(i) * time.Millisecond),
			Agent: decisionlog.Agent{ID: fmt.Sprintf("agent-%d", a), SPIFFEID: fmt.Sprintf("spiffe://acme.example/agent/agent-%d", a),
				Tenant: "acme.example", TrustLevel: fmt.Sprintf("L%d", 1+a%3), Scopes: []string{"payments:initiate", "payments:read"}, Source: "peer_certificate"},
			Request:  decisionlog.Request{ID: "r", Method: "GET", Host: "api.acme.example", Path: "/v1/payments", Operation: "payments:read", Source: "10.0.0.1:5000"},
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
	policyDir := writePolicy(b, testPolicy, data(3, "payments:initiate"))
	b.ResetTimer()
	for range b.N {
		var clock time.Time
		engine, err := policy.New(policy.Config{Dir: policyDir, Path: "agentauthz/authz/decision", Now: func() time.Time { return clock }, DecisionCache: 10000})
		if err != nil {
			b.Fatal(err)
		}
		rp, err := NewReplayer(server.PolicyAdapter(engine), &clock)
		if err != nil {
			b.Fatal(err)
		}
		acc := NewAccumulator(engine.Revision(), time.Time{}, time.Time{}, nil)
		r := decisionlog.NewReader(filepath.Join(dir, "log"))
		start := time.Now()
		if err := Run(context.Background(), r, rp, acc, time.Time{}, time.Time{}); err != nil {
			b.Fatal(err)
		}
		r.Close()
		rep := acc.Report()
		if rep.Read != *benchRecords {
			b.Fatalf("read %d of %d", rep.Read, *benchRecords)
		}
		b.ReportMetric(float64(rep.Read)/time.Since(start).Seconds(), "records/s")
	}
}
