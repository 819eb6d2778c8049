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
)

// BenchmarkFind measures the auditor's lookups on a store of
// AGENTAUTHZ_BENCH_RECORDS records (default 100,000) of 1,000 agents over 64
// logs, on SQLite and on PostgreSQL (docs/control-plane.md reports the runs).
// The rows are loaded with plain INSERTs from one real record line used as a
// template (loading through Append would verify every batch: correct, and
// far too slow for millions of rows); the queries are the ones the API runs.
//
//	AGENTAUTHZ_BENCH_RECORDS=1000000 go test -run XXX -bench Find -benchtime 2000x ./internal/recordstore
func BenchmarkFind(b *testing.B) {
	n := 100_000
	if s := os.Getenv("AGENTAUTHZ_BENCH_RECORDS"); s != "" {
		n, _ = strconv.Atoi(s)
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
			b.Logf("%s: loaded %d records in %v", kind, n, time.Since(start).Round(time.Second))
			b.Run("by_decision_id", func(b *testing.B) {
				for i := 0; b.Loop(); i++ {
					id := fmt.Sprintf("d-%09d", (i*7919)%n)
					p, err := s.Find(ctx, Query{DecisionID: id})
					if err != nil || len(p.Records) != 1 {
						b.Fatalf("%s: %d records, %v", id, len(p.Records), err)
					}
				}
			})
			b.Run("by_agent_page_of_100", func(b *testing.B) {
				for i := 0; b.Loop(); i++ {
					p, err := s.Find(ctx, Query{Agent: fmt.Sprintf("bot-%d", i%1000), Limit: 100})
					if err != nil || len(p.Records) == 0 {
						b.Fatalf("%d records, %v", len(p.Records), err)
					}
				}
			})
			b.Run("by_agent_and_hour", func(b *testing.B) {
				base := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
				for i := 0; b.Loop(); i++ {
					since := base.Add(time.Duration(i%24) * time.Hour)
					_, err := s.Find(ctx, Query{Agent: fmt.Sprintf("bot-%d", i%1000), Since: since, Until: since.Add(time.Hour), Limit: 100})
					if err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

// bulkLoad inserts n synthetic records made from tmpl, 1,000 per statement.
func bulkLoad(ctx context.Context, s *Store, tmpl string, n int) error {
	const per = 1000
	base := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	for lo := 0; lo < n; lo += per {
		hi := min(n, lo+per)
		var sb strings.Builder
		sb.WriteString(`INSERT INTO records (log, idx, time_us, kind, decision_id, request_id, tenant, agent_id, spiffe_id,
			operation, allowed, reason, leaf_hash, line) VALUES `)
		args := make([]any, 0, (hi-lo)*14)
		for i := lo; i < hi; i++ {
			if i > lo {
				sb.WriteByte(',')
			}
			sb.WriteString("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
			did, rid, agent := fmt.Sprintf("d-%09d", i), fmt.Sprintf("r-%09d", i), fmt.Sprintf("bot-%d", i%1000)
			line := strings.Replace(strings.Replace(tmpl, "template-d0000", did, 1), "template-r0000", rid, 1)
			args = append(args, fmt.Sprintf("log-%02d", i%64), int64(i/64), base.Add(time.Duration(i)*10*time.Millisecond).UnixMicro(),
				"decision", did, rid, "acme.test", agent, "spiffe://acme.test/agent/"+agent, "payments:initiate", int64(i%2), "allowed",
				fmt.Sprintf("%064x", i), line)
		}
		if _, err := s.db.ExecContext(ctx, s.q(sb.String()), args...); err != nil {
			return err
		}
	}
	if s.postgres {
		_, err := s.db.ExecContext(ctx, "ANALYZE records")
		return err
	}
	_, err := s.db.ExecContext(ctx, "ANALYZE")
	return err
}

func benchPostgres(b *testing.B) string {
	b.Helper()
	return postgresDSN(b) // TestMain's shared cluster, as for the tests
}
