package recordstore

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
)

// The console's charts and Compliance page count decisions over days of
// millions of records: counting the records at each request took seconds
// (docs/performance.md). The rollup tables hold those counts, each at the
// grain its readers need, and Append keeps them in the transaction that
// stores the records, so they always equal a GROUP BY over the records
// table (TestRollupsMatchRecords). A batch shipped twice is stored once
// (Append skips it as a duplicate) and so counted once. Every row counts
// decision records (kind "decision"): n of them, allowed among them.
type rollup struct {
	table  string
	bucket string // the time column: the record's time, truncated to width
	width  int64  // µs
	keys   []string
	pk     []string // the primary key: the readers' order
}

var rollups = []rollup{
	// The fleet's chart: decisions and denials per minute.
	{"rollup_fleet_minute", "minute_us", 60e6, nil, []string{"minute_us"}},
	// An agent's chart.
	{"rollup_agent_minute", "minute_us", 60e6, []string{"spiffe_id"}, []string{"spiffe_id", "minute_us"}},
	// Compliance: denials by reason, the busiest operations.
	{"rollup_fleet_hour", "hour_us", 3600e6, []string{"operation", "reason"}, []string{"hour_us", "operation", "reason"}},
	// Compliance: the agents × operations matrix. In agent order: ranking
	// the agents reads the table once, in order, without sorting it.
	{"rollup_agent_day", "day_us", 86400e6, []string{"spiffe_id", "tenant", "agent_id", "operation"},
		[]string{"spiffe_id", "day_us", "operation", "tenant", "agent_id"}},
}

// rollupsVersion is the schema version that adds the rollup tables: its
// migration fills them from the stored records (fillRollups).
const rollupsVersion = 3

// rollupTables is the migration that creates the tables.
func rollupTables() string {
	var b strings.Builder
	for _, r := range rollups {
		fmt.Fprintf(&b, "CREATE TABLE %s (\n\t%s BIGINT NOT NULL,\n", r.table, r.bucket)
		for _, k := range r.keys {
			fmt.Fprintf(&b, "\t%s TEXT NOT NULL,\n", k)
		}
		fmt.Fprintf(&b, "\tn BIGINT NOT NULL,\n\tallowed BIGINT NOT NULL,\n\tPRIMARY KEY (%s)\n);\n", strings.Join(r.pk, ", "))
	}
	return b.String()
}

// fillRollups recounts every rollup from the records table, in tx: the
// migration that adds the tables runs it, and RebuildRollups.
func (s *Store) fillRollups(ctx context.Context, tx *sql.Tx) error {
	if s.postgres {
		// Appends (row exclusive) wait until this transaction ends, so no
		// batch is counted twice or missed; readers go on.
		if _, err := tx.ExecContext(ctx, `LOCK TABLE records IN SHARE MODE`); err != nil {
			return s.wrap(err)
		}
	}
	for _, r := range rollups {
		bucket := fmt.Sprintf("time_us - time_us %% %d", r.width)
		group := append([]string{bucket}, r.keys...)
		cols := append([]string{r.bucket}, r.keys...)
		stmts := []string{
			"DELETE FROM " + r.table,
			fmt.Sprintf(`INSERT INTO %s (%s, n, allowed) SELECT %s, COUNT(*), CAST(SUM(allowed) AS BIGINT) FROM records WHERE kind = '%s' GROUP BY %s`,
				r.table, strings.Join(cols, ", "), strings.Join(group, ", "), decisionlog.KindDecision, strings.Join(group, ", ")),
		}
		if s.postgres {
			stmts = append(stmts, "ANALYZE "+r.table)
		}
		for _, q := range stmts {
			if _, err := tx.ExecContext(ctx, q); err != nil {
				return s.wrap(fmt.Errorf("rollup %s: %w", r.table, err))
			}
		}
	}
	return nil
}

// RebuildRollups recounts the rollup tables from the stored records, in
// one transaction (stores written by a binary older than the rollups, or
// loaded by BulkLoad, need it once; Append keeps them current after that).
func (s *Store) RebuildRollups(ctx context.Context) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return s.wrap(err)
	}
	defer tx.Rollback()
	if err := s.fillRollups(ctx, tx); err != nil {
		return err
	}
	return s.wrap(tx.Commit())
}

// rollupKey is one row of one rollup.
type rollupKey struct {
	bucket int64
	keys   [4]string
}

type rollupCount struct{ n, allowed int64 }

// counts is what one Append adds to the rollups.
type counts []map[rollupKey]*rollupCount

func newCounts() counts {
	c := make(counts, len(rollups))
	for i := range c {
		c[i] = map[rollupKey]*rollupCount{}
	}
	return c
}

// add counts one stored decision record.
func (c counts) add(timeUS int64, spiffeID, tenant, agentID, operation, reason string, allowed int64) {
	col := func(name string) string {
		switch name {
		case "spiffe_id":
			return spiffeID
		case "tenant":
			return tenant
		case "agent_id":
			return agentID
		case "operation":
			return operation
		case "reason":
			return reason
		}
		panic("rollup column " + name)
	}
	for i, r := range rollups {
		k := rollupKey{bucket: timeUS - timeUS%r.width}
		for j, name := range r.keys {
			k.keys[j] = col(name)
		}
		x := c[i][k]
		if x == nil {
			x = &rollupCount{}
			c[i][k] = x
		}
		x.n++
		x.allowed += allowed
	}
}

// writeCounts adds the counts to the rollup tables, in the Append's transaction.
func (s *Store) writeCounts(ctx context.Context, tx *sql.Tx, c counts) error {
	for i, r := range rollups {
		if len(c[i]) == 0 {
			continue
		}
		cols := append([]string{r.bucket}, r.keys...)
		//nolint:gosec // built from the fixed rollup definitions; the values are arguments
		st, err := tx.PrepareContext(ctx, fmt.Sprintf(`INSERT INTO %s (%s, n, allowed) VALUES (?%s, ?, ?)
			ON CONFLICT (%s) DO UPDATE SET n = %s.n + excluded.n, allowed = %s.allowed + excluded.allowed`,
			r.table, strings.Join(cols, ", "), strings.Repeat(", ?", len(r.keys)), strings.Join(r.pk, ", "), r.table, r.table))
		if err != nil {
			return s.wrap(err)
		}
		// In one order (bucket, then keys), so that two Appends that share
		// rows (PostgreSQL: a row lock each) wait for each other rather
		// than deadlock.
		ks := make([]rollupKey, 0, len(c[i]))
		for k := range c[i] {
			ks = append(ks, k)
		}
		slices.SortFunc(ks, func(a, b rollupKey) int {
			if a.bucket != b.bucket {
				return cmp.Compare(a.bucket, b.bucket)
			}
			return slices.Compare(a.keys[:], b.keys[:])
		})
		args := make([]any, len(cols)+2)
		for _, k := range ks {
			x := c[i][k]
			args[0] = k.bucket
			for j := range r.keys {
				args[1+j] = k.keys[j]
			}
			args[len(cols)], args[len(cols)+1] = x.n, x.allowed
			if _, err := st.ExecContext(ctx, args...); err != nil {
				st.Close()
				return s.wrap(fmt.Errorf("rollup %s: %w", r.table, err))
			}
		}
		st.Close()
	}
	return nil
}
