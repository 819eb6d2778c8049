package recordstore

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/agentauthz/agentauthz/internal/pgsql"
)

// BulkRecord is one decision record for BulkLoad.
type BulkRecord struct {
	Log                                                         string
	Index                                                       uint64
	Time                                                        time.Time
	DecisionID, RequestID, Tenant, AgentID, SPIFFEID, Operation string
	Allowed                                                     bool
	Reason                                                      string
	// Line is the record as stored (a real record line, for the pages that
	// decode it); LeafHash its leaf hash, hex.
	Line, LeafHash string
}

// BulkLoad writes n records, record(0) … record(n-1), straight into the
// store, unverified: the fixtures of the benchmarks, which need millions of
// rows (Append verifies every batch: right, and far too slow for that).
// Nothing in the service calls it. The records table's secondary indexes
// are dropped, the rows written in large transactions (SQLite: 50,000 rows
// each, synchronous=OFF on this connection; PostgreSQL: COPY,
// synchronous_commit off), the indexes built again from their stored
// definitions, the rollups recounted (RebuildRollups, the migration's code)
// and the tables analysed. Each log's size becomes its largest index + 1.
func (s *Store) BulkLoad(ctx context.Context, n int, record func(i int) BulkRecord) error {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return s.wrap(err)
	}
	defer conn.Close()
	var idxSQL []string
	listIdx := `SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'records' AND sql IS NOT NULL`
	if s.postgres {
		listIdx = `SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'records' AND indexname <> 'records_pkey'`
	}
	rows, err := conn.QueryContext(ctx, listIdx)
	if err != nil {
		return s.wrap(err)
	}
	var names []string
	for rows.Next() {
		var name, def string
		if err := rows.Scan(&name, &def); err != nil {
			rows.Close()
			return s.wrap(err)
		}
		names, idxSQL = append(names, name), append(idxSQL, def)
	}
	rows.Close()
	for _, name := range names {
		if _, err := conn.ExecContext(ctx, "DROP INDEX "+name); err != nil {
			return s.wrap(err)
		}
	}
	sizes := map[string]uint64{}
	row := func(i int) []any {
		r := record(i)
		sizes[r.Log] = max(sizes[r.Log], r.Index+1)
		allowed := int64(0)
		if r.Allowed {
			allowed = 1
		}
		return []any{r.Log, int64(r.Index), r.Time.UnixMicro(), "decision", r.DecisionID, r.RequestID, r.Tenant, r.AgentID, r.SPIFFEID,
			r.Operation, allowed, r.Reason, r.LeafHash, r.Line}
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
		return s.wrap(err)
	}
	for _, def := range idxSQL {
		if _, err := conn.ExecContext(ctx, def); err != nil {
			return s.wrap(err)
		}
	}
	now := time.Now().UnixMicro()
	for log, size := range sizes {
		if _, err := conn.ExecContext(ctx, `INSERT INTO logs (name, size, root, tree, keys, first_keys, head, updated_us)
			VALUES (?, ?, '', '[]', '{"keys":[]}', '{"keys":[]}', ?, ?)
			ON CONFLICT (name) DO UPDATE SET size = excluded.size, head = excluded.head, updated_us = excluded.updated_us`,
			log, int64(size), int64(size), now); err != nil {
			return s.wrap(err)
		}
	}
	if err := s.RebuildRollups(ctx); err != nil {
		return err
	}
	_, err = conn.ExecContext(ctx, "ANALYZE")
	return s.wrap(err)
}

// sqliteLoad inserts n rows with one prepared statement, 50,000 rows per
// transaction, without waiting for the disk (a benchmark's own store).
func sqliteLoad(ctx context.Context, conn *sql.Conn, cols []string, n int, row func(int) []any) error {
	if _, err := conn.ExecContext(ctx, "PRAGMA synchronous = OFF"); err != nil {
		return err
	}
	defer conn.ExecContext(ctx, "PRAGMA synchronous = FULL") //nolint:errcheck // the connection is closed next
	//nolint:gosec // the fixed column names
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
