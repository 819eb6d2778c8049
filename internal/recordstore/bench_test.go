package recordstore

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/agentauthz/agentauthz/internal/pgsql"
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
				c0 := processCPU()
				for i := 0; b.Loop(); i++ {
					f(i)
				}
				b.ReportMetric(float64((processCPU()-c0).Microseconds())/float64(b.N), "cpu-µs/op")
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
// its decision and request ids replaced) straight into the records table:
// the secondary indexes are dropped, the rows written in large transactions
// (SQLite: 50,000 rows each, synchronous=OFF on this connection;
// PostgreSQL: COPY, synchronous_commit off), then the indexes are built
// again from their stored definitions and the tables analysed.
func bulkLoad(ctx context.Context, s *Store, tmpl string, n int) error {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	var idxSQL []string
	listIdx := `SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'records' AND sql IS NOT NULL`
	if s.postgres {
		listIdx = `SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'records' AND indexname <> 'records_pkey'`
	}
	rows, err := conn.QueryContext(ctx, listIdx)
	if err != nil {
		return err
	}
	var names []string
	for rows.Next() {
		var name, def string
		if err := rows.Scan(&name, &def); err != nil {
			rows.Close()
			return err
		}
		names, idxSQL = append(names, name), append(idxSQL, def)
	}
	rows.Close()
	for _, name := range names {
		if _, err := conn.ExecContext(ctx, "DROP INDEX "+name); err != nil {
			return err
		}
	}
	base := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	row := func(i int) []any {
		did, rid, agent := fmt.Sprintf("d-%09d", i), fmt.Sprintf("r-%09d", i), fmt.Sprintf("bot-%d", i%1000)
		line := strings.Replace(strings.Replace(tmpl, "template-d0000", did, 1), "template-r0000", rid, 1)
		return []any{fmt.Sprintf("log-%02d", i%64), int64(i / 64), base.Add(time.Duration(i) * 10 * time.Millisecond).UnixMicro(),
			"decision", did, rid, "acme.test", agent, "spiffe://acme.test/agent/" + agent, "payments:initiate", int64(i % 2), "allowed",
			fmt.Sprintf("%064x", i), line}
	}
	cols := []string{"log", "idx", "time_us", "kind", "decision_id", "request_id", "tenant", "agent_id", "spiffe_id",
		"operation", "allowed", "reason", "leaf_hash", "line"}
	if s.postgres {
		err = conn.Raw(func(dc any) error {
			pc, ok := pgsql.Pgx(dc)
			if !ok {
				return fmt.Errorf("not a pgsql connection: %T", dc)
			}
			if _, err := pc.Exec(ctx, "SET synchronous_commit = off"); err != nil {
				return err
			}
			if _, err := pc.Exec(ctx, "SET maintenance_work_mem = '256MB'"); err != nil {
				return err
			}
			i := 0
			_, err := pc.CopyFrom(ctx, pgx.Identifier{"records"}, cols, pgx.CopyFromFunc(func() ([]any, error) {
				if i == n {
					return nil, nil
				}
				i++
				return row(i - 1), nil
			}))
			return err
		})
	} else {
		err = sqliteLoad(ctx, conn, cols, n, row)
	}
	if err != nil {
		return err
	}
	for _, def := range idxSQL {
		if _, err := conn.ExecContext(ctx, def); err != nil {
			return err
		}
	}
	if s.postgres {
		_, err = conn.ExecContext(ctx, "ANALYZE records")
		return err
	}
	_, err = conn.ExecContext(ctx, "ANALYZE")
	return err
}

// sqliteLoad inserts n rows with one prepared statement, 50,000 rows per
// transaction, without waiting for the disk (a benchmark's own store).
func sqliteLoad(ctx context.Context, conn *sql.Conn, cols []string, n int, row func(int) []any) error {
	if _, err := conn.ExecContext(ctx, "PRAGMA synchronous = OFF"); err != nil {
		return err
	}
	defer conn.ExecContext(ctx, "PRAGMA synchronous = FULL") //nolint:errcheck // the connection is closed next
	q := "INSERT INTO records (" + strings.Join(cols, ", ") + ") VALUES (?" + strings.Repeat(", ?", len(cols)-1) + ")"
	const per = 50_000
	for lo := 0; lo < n; lo += per {
		tx, err := conn.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		st, err := tx.PrepareContext(ctx, q)
		if err != nil {
			tx.Rollback()
			return err
		}
		for i := lo; i < min(n, lo+per); i++ {
			if _, err := st.ExecContext(ctx, row(i)...); err != nil {
				st.Close()
				tx.Rollback()
				return err
			}
		}
		st.Close()
		if err := tx.Commit(); err != nil {
			return err
		}
	}
	return nil
}

func benchPostgres(b *testing.B) string {
	b.Helper()
	return postgresDSN(b) // TestMain's shared cluster, as for the tests
}
