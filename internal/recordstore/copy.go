package recordstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"

	"github.com/agentauthz/agentauthz/internal/pgsql"
)

// ErrNotEmpty means CopyTo's destination already holds records: it copies
// only into an empty store.
var ErrNotEmpty = errors.New("the destination already holds decision records")

// copiedTables are the tables CopyTo copies, with their columns (the same on
// SQLite and PostgreSQL). The rollups are rebuilt from the records instead.
var copiedTables = []pgsql.Table{
	{Name: "logs", Order: "name", Cols: []string{"name", "size", "root", "tree", "keys", "first_keys", "head", "updated_us"}},
	{Name: "checkpoints", Order: "log, size", Cols: []string{"log", "size", "signed"}},
	{Name: "refusals", Order: "at_us, log, idx", Cols: []string{"at_us", "log", "idx", "reason", "detail"}},
	{Name: "records", Order: "log, idx", Cols: []string{"log", "idx", "time_us", "kind", "decision_id", "request_id", "tenant", "agent_id", "spiffe_id",
		"operation", "allowed", "reason", "leaf_hash", "line"}},
}

// LogCopy is one log as copied: its records and tree head, the same on both
// sides.
type LogCopy struct {
	Log     string `json:"log"`
	Records int64  `json:"records"`
	Size    int64  `json:"size"`
	Root    string `json:"root"`
}

// Copy is what CopyTo copied.
type Copy struct {
	Tables map[string]int64 `json:"tables"`
	Logs   []LogCopy        `json:"logs"`
}

// CopyTo copies the SQLite record store at path (opened read-only, read in
// one snapshot, copyBatch rows at a time, never changed) into the empty
// PostgreSQL store dsn names, in one transaction, then rebuilds the
// destination's rollups and checks that every log has the same records,
// size and root on both sides. A failed copy before the commit leaves the
// destination empty.
func CopyTo(ctx context.Context, path, dsn string) (*Copy, error) {
	if !pgsql.Is(dsn) {
		return nil, errors.New("the destination must be a postgres:// URL")
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("record store %s: %w", path, err)
	}
	src := &Store{where: path}
	q := url.Values{}
	q.Set("mode", "ro")
	q.Add("_pragma", "busy_timeout(10000)")
	var err error
	if src.db, err = sql.Open("sqlite", "file:"+path+"?"+q.Encode()); err != nil {
		return nil, src.wrap(err)
	}
	defer src.Close()
	var v int
	if err := src.db.QueryRowContext(ctx, `SELECT version FROM schema_version`).Scan(&v); err != nil {
		return nil, src.wrap(fmt.Errorf("schema version: %w", err))
	}
	if v != len(migrations) {
		return nil, src.wrap(fmt.Errorf("schema version %d, this binary copies version %d: start this binary's control plane on the data directory once, which upgrades it", v, len(migrations)))
	}
	dst, err := Open(ctx, dsn)
	if err != nil {
		return nil, err
	}
	defer dst.Close()
	stx, err := src.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, src.wrap(err)
	}
	defer stx.Rollback() //nolint:errcheck // read-only: nothing to keep
	tx, err := dst.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, dst.wrap(err)
	}
	defer tx.Rollback() //nolint:errcheck // does nothing after Commit
	// No append while the copy runs: an append locks its log's row, which
	// waits for this.
	if _, err := tx.ExecContext(ctx, `LOCK TABLE logs IN EXCLUSIVE MODE`); err != nil {
		return nil, dst.wrap(err)
	}
	if err := checkEmpty(ctx, tx); err != nil {
		return nil, dst.wrap(err)
	}
	out := &Copy{Tables: map[string]int64{}}
	for _, t := range copiedTables {
		n, err := pgsql.CopyRows(ctx, stx, tx, t)
		if err != nil {
			return nil, dst.wrap(err)
		}
		out.Tables[t.Name] = n
	}
	if err := tx.Commit(); err != nil {
		return nil, dst.wrap(fmt.Errorf("commit: %w", err))
	}
	want, err := logSummary(ctx, stx)
	if err != nil {
		return out, src.wrap(err)
	}
	got, err := logSummary(ctx, dst.db)
	if err != nil {
		return out, dst.wrap(err)
	}
	if len(got) != len(want) {
		return out, dst.wrap(fmt.Errorf("copied %d logs, the source has %d", len(got), len(want)))
	}
	for i := range want {
		if got[i] != want[i] {
			return out, dst.wrap(fmt.Errorf("log %q: copied %d records (size %d, root %s), the source has %d (size %d, root %s)",
				want[i].Log, got[i].Records, got[i].Size, got[i].Root, want[i].Records, want[i].Size, want[i].Root))
		}
	}
	out.Logs = got
	if err := dst.RebuildRollups(ctx); err != nil {
		return out, fmt.Errorf("rebuild rollups: %w", err)
	}
	return out, nil
}

// logSummary is every log's record count and tree head, by name. Every
// stored log has its records 0..size-1, so the count, the last index and
// the root say whether two copies hold the same log.
func logSummary(ctx context.Context, q interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}) ([]LogCopy, error) {
	rows, err := q.QueryContext(ctx, `SELECT l.name, l.size, l.root,
		(SELECT COUNT(*) FROM records r WHERE r.log = l.name),
		(SELECT COALESCE(MAX(idx) + 1, 0) FROM records r WHERE r.log = l.name)
		FROM logs l ORDER BY l.name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []LogCopy
	for rows.Next() {
		var l LogCopy
		var next int64
		if err := rows.Scan(&l.Log, &l.Size, &l.Root, &l.Records, &next); err != nil {
			return nil, err
		}
		if next != l.Records || l.Records != l.Size {
			return nil, fmt.Errorf("log %q: %d records up to index %d, size %d: not one contiguous log", l.Log, l.Records, next-1, l.Size)
		}
		out = append(out, l)
	}
	return out, rows.Err()
}

// CheckEmpty fails with ErrNotEmpty if the PostgreSQL database dsn names
// holds rows CopyTo would copy (creating the tables if they are missing), so
// that a migration can refuse before it copies anything.
func CheckEmpty(ctx context.Context, dsn string) error {
	if !pgsql.Is(dsn) {
		return errors.New("the destination must be a postgres:// URL")
	}
	dst, err := Open(ctx, dsn)
	if err != nil {
		return err
	}
	defer dst.Close()
	return dst.wrap(checkEmpty(ctx, dst.db))
}

// checkEmpty fails with ErrNotEmpty if any copied table has a row.
func checkEmpty(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) error {
	table, err := pgsql.Occupied(ctx, q, copiedTables)
	if err == nil && table != "" {
		err = fmt.Errorf("%w (table %s has rows)", ErrNotEmpty, table)
	}
	return err
}
