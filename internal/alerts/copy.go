package alerts

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"

	"github.com/agentauthz/agentauthz/internal/pgsql"
)

// ErrNotEmpty means CopyTo's destination already holds alerts or detector
// state: it copies only into an empty alert store.
var ErrNotEmpty = errors.New("the destination already holds an alert store")

// copiedTables are the tables CopyTo copies, with their columns (the same on
// SQLite and PostgreSQL). The lease is not copied: the first instance on
// the destination takes a new one.
var copiedTables = []pgsql.Table{
	{Name: "alerts", Order: "id", Cols: []string{"id", "time_us", "rule", "agent", "tenant", "agent_id", "body", "logged", "ack", "response", "open"}},
	{Name: "detector", Order: "name", Cols: []string{"name", "state", "cursors", "saved_us"}},
}

// CopyTo copies the SQLite alert store at path (opened read-only, read in
// one snapshot, never changed) into the empty PostgreSQL alert store dsn
// names, in one transaction, and returns the rows copied per table. With
// the detector's state and cursors copied, the detector on the destination
// goes on where it stopped instead of reading every stored record again.
func CopyTo(ctx context.Context, path, dsn string) (map[string]int64, error) {
	if !pgsql.Is(dsn) {
		return nil, errors.New("the destination must be a postgres:// URL")
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("alert store %s: %w", path, err)
	}
	q := url.Values{}
	q.Set("mode", "ro")
	q.Add("_pragma", "busy_timeout(10000)")
	src, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("alert store %s: %w", path, err)
	}
	defer src.Close()
	dst, err := openPostgres(dsn)
	if err != nil {
		return nil, err
	}
	defer dst.sql.Close()
	stx, err := src.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("alert store %s: %w", path, err)
	}
	defer stx.Rollback() //nolint:errcheck // read-only: nothing to keep
	tx, err := dst.sql.BeginTx(ctx, nil)
	if err != nil {
		return nil, dst.wrap(err)
	}
	defer tx.Rollback() //nolint:errcheck // does nothing after Commit
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(?)`, int64(pgLock)); err != nil {
		return nil, dst.wrap(err)
	}
	if err := checkEmpty(ctx, tx); err != nil {
		return nil, dst.wrap(err)
	}
	out := map[string]int64{}
	for _, t := range copiedTables {
		n, err := pgsql.CopyRows(ctx, stx, tx, t)
		if err != nil {
			return nil, dst.wrap(err)
		}
		var want int64
		if err := stx.QueryRowContext(ctx, `SELECT COUNT(*) FROM `+t.Name).Scan(&want); err != nil { //nolint:gosec // a constant table name
			return nil, fmt.Errorf("alert store %s: %w", path, err)
		}
		if n != want {
			return nil, dst.wrap(fmt.Errorf("copied %d rows of %s, the source has %d", n, t.Name, want))
		}
		out[t.Name] = n
	}
	return out, dst.wrap(tx.Commit())
}

// CheckEmpty fails with ErrNotEmpty if the PostgreSQL database dsn names
// holds rows CopyTo would copy (creating the tables if they are missing), so
// that a migration can refuse before it copies anything.
func CheckEmpty(ctx context.Context, dsn string) error {
	if !pgsql.Is(dsn) {
		return errors.New("the destination must be a postgres:// URL")
	}
	dst, err := openPostgres(dsn)
	if err != nil {
		return err
	}
	defer dst.sql.Close()
	return dst.wrap(checkEmpty(ctx, dst.sql))
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
