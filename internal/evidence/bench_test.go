package evidence

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/testenv"
)

// benchRecords is the size of the benchmark's history:
// AGENTAUTHZ_REPORT_RECORDS (default 100,000; docs/performance.md reports
// 10,000,000). AGENTAUTHZ_REPORT_LOG_DIR keeps the written log between runs
// (it is written once, then reused while it holds that many records).
func benchRecords(b *testing.B) int {
	n := 100_000
	if s := os.Getenv("AGENTAUTHZ_REPORT_RECORDS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n < 1 {
			b.Fatalf("AGENTAUTHZ_REPORT_RECORDS=%q", s)
		}
	}
	return n
}

var benchStart = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

const benchAgents = 1000

// benchRecord is decision i of a fleet of benchAgents agents making ten
// requests a second: mostly allowed, some scope and trust denials, an
// identity attack now and then; agent 7's revocation at the middle.
func benchRecord(i, n int) *decisionlog.Record {
	ag := i % benchAgents
	at := benchStart.Add(time.Duration(i) * 100 * time.Millisecond)
	id := fmt.Sprintf("agent-%04d", ag)
	r := &decisionlog.Record{DecisionID: fmt.Sprintf("dec-%010d", i), Time: at,
		Agent: decisionlog.Agent{ID: id, SPIFFEID: "spiffe://" + td + "/agent/" + id, Tenant: td, TrustLevel: "L2",
			Scopes: []string{"payments:read", "payments:initiate"}, Serial: fmt.Sprintf("%x", ag+1), CertSHA256: fmt.Sprintf("%064x", ag+1), Issuer: "CN=acme"},
		Request:  decisionlog.Request{ID: fmt.Sprintf("req-%d", i), Method: "POST", Host: "pay.internal", Path: "/v1/payments", Operation: []string{"payments:read", "payments:initiate", "refunds:issue"}[i/benchAgents%3], Source: "10.0.0.7:41234"},
		Decision: decisionlog.Decision{Allowed: true, HTTPStatus: 200, Reasons: []string{"allowed"}, PolicyRevision: "rev-42"}}
	switch {
	case ag == 7 && i >= n/2:
		r.Decision = decisionlog.Decision{HTTPStatus: 403, Reasons: []string{"certificate_revoked"}, PolicyRevision: "rev-42"}
	case i%97 == 0:
		r.Agent = decisionlog.Agent{CertSHA256: fmt.Sprintf("%064x", i), Issuer: "CN=elsewhere"}
		r.Decision = decisionlog.Decision{HTTPStatus: 401, Reasons: []string{"untrusted_issuer"}}
	case r.Request.Operation == "refunds:issue":
		r.Decision = decisionlog.Decision{HTTPStatus: 403, Reasons: []string{"scope_missing"}, PolicyRevision: "rev-42"}
	}
	return r
}

// genSource yields benchRecord 0..n-1 without a disk: Collect's own cost.
type genSource struct{ n int }

func (g genSource) Verify(context.Context) (LogSource, error) {
	return LogSource{Dir: "generated", Name: "gen", Verified: true, Records: uint64(g.n)}, nil
}

func (g genSource) Scan(_ context.Context, _, _ time.Time, each func(Scanned) error) (int, error) {
	for i := range g.n {
		if err := each(Scanned{Record: benchRecord(i, g.n)}); err != nil {
			return 0, err
		}
	}
	return 0, nil
}

func benchInventory(n int) *Inventory {
	inv := &Inventory{ChangeLog: &ca.ChangeLogResult{}}
	for ag := range benchAgents {
		id := fmt.Sprintf("agent-%04d", ag)
		inv.Certs = append(inv.Certs, ca.Certificate{TrustDomain: td, AgentID: id, Serial: fmt.Sprintf("%x", ag+1), Status: "active",
			Scopes: []string{"payments:read", "payments:initiate"}, NotBefore: benchStart.Add(-time.Hour), NotAfter: benchStart.Add(30 * 24 * time.Hour)})
		inv.Events = append(inv.Events, ca.Event{At: benchStart.Add(-time.Hour), TrustDomain: td, AgentID: id, Event: "issue", Operator: "alice"})
	}
	inv.Events = append(inv.Events, ca.Event{At: benchStart.Add(time.Duration(n/2) * 100 * time.Millisecond), TrustDomain: td, AgentID: "agent-0007", Event: "revoke", Operator: "bob"})
	return inv
}

// writeBenchLog writes benchRecord 0..n-1 to a real signed log (async mode,
// 16 writers: large group-commit batches as under load).
func writeBenchLog(b *testing.B, dir string, n int) decisionlog.KeySet {
	keyDir := filepath.Join(dir, "keys")
	logDir := filepath.Join(dir, "log")
	if ks, err := decisionlog.LoadKeySet(keyDir); err == nil {
		if res, err := os.ReadFile(filepath.Join(dir, "records")); err == nil && string(res) == strconv.Itoa(n) {
			return ks
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		b.Fatal(err)
	}
	l, err := decisionlog.Open(decisionlog.Options{Dir: logDir, KeyDir: keyDir, Name: "bench", Mode: decisionlog.Async})
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	const writers = 16
	for w := range writers {
		wg.Go(func() {
			for i := w; i < n; i += writers {
				if _, err := l.Append(context.Background(), benchRecord(i, n)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	ks := l.PublicKeys()
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "records"), []byte(strconv.Itoa(n)), 0o644); err != nil {
		b.Fatal(err)
	}
	return ks
}

// BenchmarkReport builds the evidence pack over a generated history: from
// memory (generated: Collect's own cost) and from a real signed log
// (log: verification beside the counting pass, as audit report runs). It
// reports records per second and per CPU-second, and the peak heap.
//
//	AGENTAUTHZ_REPORT_RECORDS=10000000 AGENTAUTHZ_REPORT_LOG_DIR=/var/tmp/report-bench \
//	  go test -run '^$' -bench BenchmarkReport -benchtime 1x ./internal/evidence
func BenchmarkReport(b *testing.B) {
	n := benchRecords(b)
	run := func(b *testing.B, src Source) {
		in := Inputs{Sources: []Source{src}, Inventory: benchInventory(n), DataDir: "bench", Sample: 10, Seed: 1}
		var peak uint64
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			var m runtime.MemStats
			for {
				runtime.ReadMemStats(&m)
				peak = max(peak, m.HeapAlloc)
				select {
				case <-stop:
					return
				case <-time.After(200 * time.Millisecond):
				}
			}
		})
		runtime.GC()
		b.ResetTimer()
		cpu0 := testenv.CPUTime()
		for b.Loop() {
			r, err := Collect(context.Background(), in)
			if err != nil {
				b.Fatal(err)
			}
			if r.Logs[0].InRange != n || len(r.Revocations) != 1 || r.Revocations[0].FirstDenied.IsZero() || !r.Logs[0].Verified {
				b.Fatalf("report over %d records: %+v %+v", n, r.Logs, r.Revocations)
			}
		}
		cpu := testenv.CPUTime() - cpu0
		close(stop)
		wg.Wait()
		total := float64(n) * float64(b.N)
		b.ReportMetric(total/b.Elapsed().Seconds(), "records/s")
		b.ReportMetric(total/cpu.Seconds(), "records/cpu-s")
		b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MiB")
	}
	b.Run("generated", func(b *testing.B) { run(b, genSource{n}) })
	b.Run("log", func(b *testing.B) {
		dir := os.Getenv("AGENTAUTHZ_REPORT_LOG_DIR")
		if dir == "" {
			dir = b.TempDir()
		}
		t0, cpu0 := time.Now(), testenv.CPUTime()
		ks := writeBenchLog(b, dir, n)
		b.Logf("log of %d records ready in %v (%v CPU)", n, time.Since(t0).Round(time.Millisecond), (testenv.CPUTime() - cpu0).Round(time.Millisecond))
		run(b, DirSource{Dir: filepath.Join(dir, "log"), Keys: ks})
	})
}
