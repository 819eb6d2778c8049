package recordstore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/testenv"
)

// BenchmarkFind measures the auditor's lookups on a store of
// AGENTAUTHZ_BENCH_RECORDS records (default 100,000; `make bench-store` runs
// 10,000,000) of 1,000 agents over 64 logs, on SQLite and on PostgreSQL
// (docs/control-plane.md reports the runs). The rows are loaded by bulkLoad,
// which writes the tables directly (loading through Append would verify every
// batch: correct, and far too slow for millions of rows); the queries are the
// ones the API runs. It reports query latency (ns/op) and CPU time per query
// (cpu-µs/op, this process: the SQLite engine, the PostgreSQL client side).
//
//	AGENTAUTHZ_BENCH_RECORDS=10000000 go test -run XXX -bench Find -benchtime 2000x -timeout 3h ./internal/recordstore
func BenchmarkFind(b *testing.B) {
	n := 100_000
	if s := os.Getenv("AGENTAUTHZ_BENCH_RECORDS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n < 1000 {
			b.Fatalf("AGENTAUTHZ_BENCH_RECORDS=%q: want a number of records, at least 1000", s)
		}
	}
	gs, _ := testLog(b, "template", 1, 0)
	tmpl := gs[0].Records[0]
	for _, kind := range []string{"sqlite", "postgres"} {
		b.Run(kind, func(b *testing.B) {
			var dsn string
			if kind == "sqlite" {
				dsn = filepath.Join(b.TempDir(), "records.db")
			} else {
				dsn = benchPostgres(b)
			}
			ctx := context.Background()
			s, err := Open(ctx, dsn)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			start := time.Now()
			if err := bulkLoad(ctx, s, tmpl, n); err != nil {
				b.Fatal(err)
			}
			b.Logf("%s: loaded %d records in %v (rows, then the indexes)", kind, n, time.Since(start).Round(time.Second))
			cpu := func(b *testing.B, f func(i int)) {
				c0 := testenv.CPUTime()
				for i := 0; b.Loop(); i++ {
					f(i)
				}
				b.ReportMetric(float64((testenv.CPUTime()-c0).Microseconds())/float64(b.N), "cpu-µs/op")
			}
			b.Run("by_decision_id", func(b *testing.B) {
				cpu(b, func(i int) {
					id := fmt.Sprintf("d-%09d", (i*7919)%n)
					p, err := s.Find(ctx, Query{DecisionID: id})
					if err != nil || len(p.Records) != 1 {
						b.Fatalf("%s: %d records, %v", id, len(p.Records), err)
					}
				})
			})
			b.Run("by_agent_page_of_100", func(b *testing.B) {
				cpu(b, func(i int) {
					p, err := s.Find(ctx, Query{Agent: fmt.Sprintf("bot-%d", i%1000), Limit: 100})
					if err != nil || len(p.Records) == 0 {
						b.Fatalf("%d records, %v", len(p.Records), err)
					}
				})
			})
			b.Run("by_agent_and_hour", func(b *testing.B) {
				base := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
				cpu(b, func(i int) {
					since := base.Add(time.Duration(i%24) * time.Hour)
					_, err := s.Find(ctx, Query{Agent: fmt.Sprintf("bot-%d", i%1000), Since: since, Until: since.Add(time.Hour), Limit: 100})
					if err != nil {
						b.Fatal(err)
					}
				})
			})
		})
	}
}

// TestBulkLoadAnswers is the short version of BenchmarkFind: the bulk path
// builds a store whose indexes answer the benchmark's queries correctly.
func TestBulkLoadAnswers(t *testing.T) {
	gs, _ := testLog(t, "template", 1, 0)
	tmpl := gs[0].Records[0]
	eachStore(t, func(t *testing.T, s *Store, _ string) {
		ctx := context.Background()
		const n = 5000
		if err := bulkLoad(ctx, s, tmpl, n); err != nil {
			t.Fatal(err)
		}
		p, err := s.Find(ctx, Query{DecisionID: "d-000004321"})
		if err != nil || len(p.Records) != 1 || !strings.Contains(p.Records[0].Line, "d-000004321") {
			t.Fatalf("by decision id: %+v %v", p, err)
		}
		p, err = s.Find(ctx, Query{Agent: "bot-7", Limit: 100})
		if err != nil || len(p.Records) != n/1000 {
			t.Fatalf("by agent: %d records, %v", len(p.Records), err)
		}
		for _, r := range p.Records {
			// Record i is of agent bot-(i mod 1000); the lines carry the
			// template's agent, the decision id says which record it is.
			if !strings.Contains(r.Line, `"decision_id":"d-`) || !strings.Contains(r.Line, `007","agent"`) {
				t.Fatalf("a record of another agent: %s", r.Line)
			}
		}
		var idx int
		if err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM records`).Scan(&idx); err != nil || idx != n {
			t.Fatalf("%d rows, %v", idx, err)
		}
	})
}

// bulkLoad writes n synthetic records made from tmpl (a real record line,
// its decision and request ids replaced), of 1,000 agents over 64 logs, 10
// ms apart from 2026-12-01, half of them denied, through BulkLoad.
func bulkLoad(ctx context.Context, s *Store, tmpl string, n int) error {
	base := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	return s.BulkLoad(ctx, n, func(i int) BulkRecord {
		did, rid, agent := fmt.Sprintf("d-%09d", i), fmt.Sprintf("r-%09d", i), fmt.Sprintf("bot-%d", i%1000)
		line := strings.Replace(strings.Replace(tmpl, "template-d0000", did, 1), "template-r0000", rid, 1)
		return BulkRecord{Log: fmt.Sprintf("log-%02d", i%64), Index: uint64(i / 64), Time: base.Add(time.Duration(i) * 10 * time.Millisecond),
			DecisionID: did, RequestID: rid, Tenant: "acme.test", AgentID: agent, SPIFFEID: "spiffe://acme.test/agent/" + agent,
			Operation: "payments:initiate", Allowed: i%2 == 1, Reason: "allowed", LeafHash: fmt.Sprintf("%064x", i), Line: line}
	})
}

func benchPostgres(b *testing.B) string {
	b.Helper()
	return postgresDSN(b) // TestMain's shared cluster, as for the tests
}
