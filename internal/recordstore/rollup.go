package recordstore

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

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

// agentDay is rollups' index of the daily rollup, which windows sum.
var agentDay = slices.IndexFunc(rollups, func(r rollup) bool { return r.table == "rollup_agent_day" })

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
	// The windows are made again from the new counts when read.
	for _, q := range []string{`DELETE FROM rollup_window_counts`, `DELETE FROM rollup_windows`} {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return s.wrap(err)
		}
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
		rows := make([][]any, len(ks))
		for j, k := range ks {
			row := make([]any, 0, len(r.keys)+3)
			row = append(row, k.bucket)
			for x := range r.keys {
				row = append(row, k.keys[x])
			}
			rows[j] = append(row, c[i][k].n, c[i][k].allowed)
		}
		if err := s.upsert(ctx, tx, r.table, append(append([]string{r.bucket}, r.keys...), "n", "allowed"), r.pk, rows); err != nil {
			return err
		}
	}
	return nil
}

// upsertRows is how many rows one upsert statement carries: a round trip
// each on PostgreSQL (the parameters stay far below both databases'
// limits).
const upsertRows = 250

// upsert adds rows (cols; the last two n and allowed) to table, whose
// primary key is pk, in statements of upsertRows rows: a row already there
// gets the counts added. The rows' keys are distinct.
func (s *Store) upsert(ctx context.Context, tx *sql.Tx, table string, cols, pk []string, rows [][]any) error {
	one := "(?" + strings.Repeat(", ?", len(cols)-1) + ")"
	for lo := 0; lo < len(rows); lo += upsertRows {
		chunk := rows[lo:min(len(rows), lo+upsertRows)]
		args := make([]any, 0, len(chunk)*len(cols))
		for _, r := range chunk {
			args = append(args, r...)
		}
		//nolint:gosec // built from the fixed table definitions; the values are arguments
		q := fmt.Sprintf(`INSERT INTO %s (%s) VALUES %s%s ON CONFLICT (%s) DO UPDATE SET n = %s.n + excluded.n, allowed = %s.allowed + excluded.allowed`,
			table, strings.Join(cols, ", "), one, strings.Repeat(", "+one, len(chunk)-1), strings.Join(pk, ", "), table, table)
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			return s.wrap(fmt.Errorf("rollup %s: %w", table, err))
		}
	}
	return nil
}

// Windows: the agents × operations matrix ranks every agent by its
// decisions since a day, which summed over the daily rollup reads agents ×
// operations × days rows (600,000 for 10,000 agents over 30 days). A
// window instead holds the sums since one day, one row per agent and
// operation: the reader asks for a start day, the store makes a window
// start there (once; the next day's reader moves it on by subtracting the
// day that left it) and Append adds its records to every window they fall
// in, in the same transaction. At most maxWindows exist; the oldest made
// goes first, and one not read for maxIdleDays goes when another is made
// (each costs every Append a little). A window moves on by at most
// maxMoveDays: the 7-day window must not become the 1-day one.
const (
	maxWindows  = 8
	maxMoveDays = 3
	maxIdleDays = 3
)

// windowsReadDay is the migration that records the day each window was
// last read.
const windowsReadDay = `ALTER TABLE rollup_windows ADD COLUMN read_day_us BIGINT NOT NULL DEFAULT 0`

// today is the current UTC day, µs.
func today() int64 { return micros(time.Now().UTC().Truncate(24 * time.Hour)) }

const windowTables = `
CREATE TABLE rollup_windows (
	id           BIGINT PRIMARY KEY,
	start_day_us BIGINT NOT NULL UNIQUE
);
CREATE TABLE rollup_window_counts (
	window_id BIGINT NOT NULL,
	spiffe_id TEXT NOT NULL,
	operation TEXT NOT NULL,
	tenant    TEXT NOT NULL,
	agent_id  TEXT NOT NULL,
	n         BIGINT NOT NULL,
	allowed   BIGINT NOT NULL,
	PRIMARY KEY (window_id, spiffe_id, operation, tenant, agent_id)
);
`

// makeWindow makes sure a window starts at start (µs, a UTC day), in its
// own transaction: moved on from the latest window that starts at most
// maxMoveDays before it, else counted from the daily rollup.
func (s *Store) makeWindow(ctx context.Context, start int64) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return s.wrap(err)
	}
	defer tx.Rollback()
	if s.postgres {
		// Appends (row exclusive) wait, and so do other makers.
		if _, err := tx.ExecContext(ctx, `LOCK TABLE rollup_window_counts IN EXCLUSIVE MODE`); err != nil {
			return s.wrap(err)
		}
	}
	var id, from int64
	err = tx.QueryRowContext(ctx, `SELECT id FROM rollup_windows WHERE start_day_us = ?`, start).Scan(&id)
	if err == nil {
		return nil // made meanwhile
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return s.wrap(err)
	}
	err = tx.QueryRowContext(ctx, `SELECT id, start_day_us FROM rollup_windows WHERE start_day_us < ? AND start_day_us >= ?
		ORDER BY start_day_us DESC LIMIT 1`, start, start-maxMoveDays*(24*time.Hour).Microseconds()).Scan(&id, &from)
	var stmts []string
	var args [][]any
	switch {
	case err == nil:
		stmts = []string{
			// Every row of those days is in the window (it counts them).
			`UPDATE rollup_window_counts SET n = rollup_window_counts.n - d.n, allowed = rollup_window_counts.allowed - d.allowed
			FROM (SELECT spiffe_id, operation, tenant, agent_id, SUM(n) AS n, SUM(allowed) AS allowed FROM rollup_agent_day
				WHERE day_us >= ? AND day_us < ? GROUP BY spiffe_id, operation, tenant, agent_id) AS d
			WHERE rollup_window_counts.window_id = ? AND rollup_window_counts.spiffe_id = d.spiffe_id AND rollup_window_counts.operation = d.operation
				AND rollup_window_counts.tenant = d.tenant AND rollup_window_counts.agent_id = d.agent_id`,
			`DELETE FROM rollup_window_counts WHERE window_id = ? AND n = 0`,
			`UPDATE rollup_windows SET start_day_us = ?, read_day_us = ? WHERE id = ?`,
		}
		args = [][]any{{from, start, id}, {id}, {start, today(), id}}
	case errors.Is(err, sql.ErrNoRows):
		idle := today() - maxIdleDays*(24*time.Hour).Microseconds()
		for _, q := range []string{`DELETE FROM rollup_window_counts WHERE window_id IN (SELECT id FROM rollup_windows WHERE read_day_us < ?)`,
			`DELETE FROM rollup_windows WHERE read_day_us < ?`} {
			if _, err := tx.ExecContext(ctx, q, idle); err != nil {
				return s.wrap(err)
			}
		}
		var count, maxID int64
		var minID sql.NullInt64
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(MAX(id), 0), MIN(id) FROM rollup_windows`).Scan(&count, &maxID, &minID); err != nil {
			return s.wrap(err)
		}
		if count >= maxWindows {
			stmts = append(stmts, `DELETE FROM rollup_window_counts WHERE window_id = ?`, `DELETE FROM rollup_windows WHERE id = ?`)
			args = append(args, []any{minID.Int64}, []any{minID.Int64})
		}
		id = maxID + 1
		stmts = append(stmts, `INSERT INTO rollup_windows (id, start_day_us, read_day_us) VALUES (?, ?, ?)`,
			`INSERT INTO rollup_window_counts (window_id, spiffe_id, operation, tenant, agent_id, n, allowed)
			SELECT ?, spiffe_id, operation, tenant, agent_id, SUM(n), SUM(allowed) FROM rollup_agent_day WHERE day_us >= ?
			GROUP BY spiffe_id, operation, tenant, agent_id`)
		args = append(args, []any{id, start, today()}, []any{id, start})
	default:
		return s.wrap(err)
	}
	for i, q := range stmts {
		if _, err := tx.ExecContext(ctx, q, args[i]...); err != nil {
			return s.wrap(fmt.Errorf("rollup window: %w", err))
		}
	}
	return s.wrap(tx.Commit())
}

// addToWindows adds an Append's daily counts (c's rollup_agent_day) to the
// windows they fall in, in the Append's transaction.
func (s *Store) addToWindows(ctx context.Context, tx *sql.Tx, day map[rollupKey]*rollupCount) error {
	if len(day) == 0 {
		return nil
	}
	if s.postgres {
		// Taken before the windows are read: a window being made or moved
		// (exclusive) is then either done, and read here, or waits.
		if _, err := tx.ExecContext(ctx, `LOCK TABLE rollup_window_counts IN ROW EXCLUSIVE MODE`); err != nil {
			return s.wrap(err)
		}
	}
	rows, err := tx.QueryContext(ctx, `SELECT id, start_day_us FROM rollup_windows ORDER BY id`)
	if err != nil {
		return s.wrap(err)
	}
	type window struct{ id, start int64 }
	var ws []window
	for rows.Next() {
		var w window
		if err := rows.Scan(&w.id, &w.start); err != nil {
			rows.Close()
			return s.wrap(err)
		}
		ws = append(ws, w)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return s.wrap(err)
	}
	if len(ws) == 0 {
		return nil
	}
	for _, w := range ws {
		sum := map[[4]string]*rollupCount{}
		for k, x := range day {
			if k.bucket < w.start {
				continue
			}
			y := sum[k.keys]
			if y == nil {
				y = &rollupCount{}
				sum[k.keys] = y
			}
			y.n += x.n
			y.allowed += x.allowed
		}
		keys := make([][4]string, 0, len(sum))
		for k := range sum {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, func(a, b [4]string) int { return slices.Compare(a[:], b[:]) }) // one lock order
		rows := make([][]any, len(keys))
		for i, k := range keys {
			// k is spiffe_id, tenant, agent_id, operation: the daily
			// rollup's keys.
			rows[i] = []any{w.id, k[0], k[1], k[2], k[3], sum[k].n, sum[k].allowed}
		}
		if err := s.upsert(ctx, tx, "rollup_window_counts", []string{"window_id", "spiffe_id", "tenant", "agent_id", "operation", "n", "allowed"},
			[]string{"window_id", "spiffe_id", "operation", "tenant", "agent_id"}, rows); err != nil {
			return err
		}
	}
	return nil
}

// PrepareWindow makes the window that starts at since (a UTC day) unless it
// exists, so that the first reader of that period does not wait for it; it
// reports whether it made one.
func (s *Store) PrepareWindow(ctx context.Context, since time.Time) (bool, error) {
	start := micros(since)
	if start%(24*time.Hour).Microseconds() != 0 {
		return false, fmt.Errorf("%w: from %v, not on a UTC day", ErrBadQuery, since)
	}
	var id int64
	err := s.db.QueryRowContext(ctx, `SELECT id FROM rollup_windows WHERE start_day_us = ?`, start).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return true, s.makeWindow(ctx, start)
	}
	return false, s.wrap(err)
}

// windowQuery runs q (its first argument: the window's start day) on the
// window that starts at since (a UTC day), made if needed. A window can be
// moved on between its making and the query (a reader of the next day's
// window): the query then finds no window and runs again.
func (s *Store) windowQuery(ctx context.Context, since time.Time, q string, args []any, scan func(*sql.Rows) error) error {
	start := micros(since)
	if start%(24*time.Hour).Microseconds() != 0 {
		return fmt.Errorf("%w: from %v, not on a UTC day", ErrBadQuery, since)
	}
	for range 3 {
		var id, read int64
		err := s.db.QueryRowContext(ctx, `SELECT id, read_day_us FROM rollup_windows WHERE start_day_us = ?`, start).Scan(&id, &read)
		if errors.Is(err, sql.ErrNoRows) {
			if err := s.makeWindow(ctx, start); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return s.wrap(err)
		}
		if t := today(); read < t { // once a day
			if _, err := s.db.ExecContext(ctx, `UPDATE rollup_windows SET read_day_us = ? WHERE id = ?`, t, id); err != nil {
				return s.wrap(err)
			}
		}
		rows, err := s.db.QueryContext(ctx, q, append([]any{start}, args...)...)
		if err != nil {
			return s.wrap(err)
		}
		n := 0
		for rows.Next() {
			n++
			if err := scan(rows); err != nil {
				rows.Close()
				return s.wrap(err)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return s.wrap(err)
		}
		if n > 0 {
			return nil
		}
		// Nothing: an empty window, or one moved on meanwhile.
		if err := s.db.QueryRowContext(ctx, `SELECT id FROM rollup_windows WHERE start_day_us = ?`, start).Scan(&id); err == nil {
			return nil
		}
	}
	return s.wrap(errors.New("rollup window: moved on three times while read"))
}
