package ca

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"

	"github.com/agentauthz/agentauthz/internal/pgsql"
)

// ErrDestinationNotEmpty means CopyInventory's destination already holds
// an inventory: it copies only into an empty one.
var ErrDestinationNotEmpty = errors.New("the destination already holds an inventory")

// inventoryTables are the tables CopyInventory copies, parents first, with
// their columns (the same on SQLite and PostgreSQL). The console's sign-in
// links, sessions, OIDC sign-ins under way and keys are not copied: they are
// short-lived, and users sign in again.
var inventoryTables = []pgsql.Table{
	{Name: "trust_domains", Order: "name", Cols: []string{"name", "org", "crl_url", "max_ttl_seconds", "imported", "created_at", "revocation_generation",
		"crl_number", "crl_generation", "crl_this_update", "crl_next_update", "crl_der"}},
	{Name: "agents", Order: "tenant, agent_id", Cols: []string{"tenant", "agent_id", "trust", "scopes", "owner", "ttl_seconds", "key_type", "status",
		"revoked_at", "revocation_reason", "created_at", "updated_at"}},
	{Name: "certificates", Order: "tenant, serial", Cols: []string{"tenant", "serial", "agent_id", "trust", "scopes", "owner", "key_type", "not_before",
		"not_after", "status", "revoked_at", "revocation_reason", "operator", "issued_at", "pem"}},
	{Name: "restrictions", Order: "tenant, agent_id", Cols: []string{"tenant", "agent_id", "quarantined", "max_trust", "removed_scopes", "until", "reason",
		"operator", "set_at"}},
	{Name: "events", Order: "seq", Cols: []string{"seq", "at", "tenant", "agent_id", "serial", "event", "operator", "detail", "prev", "hash", "kid", "sig"}},
}

// TableCount is how many rows of a table were copied.
type TableCount struct {
	Table string `json:"table"`
	Rows  int64  `json:"rows"`
}

// InventoryCopy is what CopyInventory copied and what the destination's
// change log verified to.
type InventoryCopy struct {
	Tables    []TableCount     `json:"tables"`
	ChangeLog *ChangeLogResult `json:"changelog"`
}

// CopyInventory copies the SQLite inventory of dataDir (<data>/inventory.db,
// opened read-only and read in one snapshot, never changed) into the empty
// PostgreSQL inventory dsn names, in one transaction: a failed copy leaves
// the destination as empty as it found it. Change-log rows are copied byte
// for byte, and the destination's change log must verify, with the keys of
// the data directory, to the same head as the source's before CopyInventory
// reports success. The caller holds LockDataDir exclusively.
func CopyInventory(ctx context.Context, dataDir, dsn string) (*InventoryCopy, error) {
	src, err := openReadOnly(dataDir)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	keys, keyErr := ChangeLogKeys(dataDir)
	want, err := src.VerifyChangeLog(keys...)
	if err != nil {
		return nil, err
	}
	if want.Problem != nil {
		err := fmt.Errorf("the source change log does not verify at seq %d: %s: %s", want.Problem.Seq, want.Problem.Kind, want.Problem.Detail)
		if keyErr != nil {
			err = fmt.Errorf("%w (%v)", err, keyErr)
		}
		return nil, &StoreError{Path: src.dbPath, Err: err}
	}
	dst, err := Open(dataDir, WithStore(dsn))
	if err != nil {
		return nil, err
	}
	defer dst.Close()
	if err := dst.checkEmpty(ctx, dst.db); err != nil {
		return nil, err
	}
	out := &InventoryCopy{}
	stx, err := src.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, src.storeErr(err)
	}
	defer stx.Rollback() //nolint:errcheck // read-only: nothing to keep
	err = dst.tx(ctx, func(tx *sql.Tx) error {
		if err := dst.checkEmpty(ctx, tx); err != nil { // again, under the writers' lock
			return err
		}
		for _, t := range inventoryTables {
			n, err := pgsql.CopyRows(ctx, stx, tx, t)
			if err != nil {
				return err
			}
			out.Tables = append(out.Tables, TableCount{Table: t.Name, Rows: n})
		}
		var gen int64
		if err := stx.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = 'revocation_generation'`).Scan(&gen); err != nil {
			return src.storeErr(err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE meta SET value = ? WHERE key = 'revocation_generation'`, gen); err != nil {
			return dst.storeErr(err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	got, err := dst.VerifyChangeLog(keys...)
	if err != nil {
		return out, err
	}
	out.ChangeLog = got
	if got.Problem != nil || got.Events != want.Events || got.LastSeq != want.LastSeq || got.Head != want.Head {
		return out, &StoreError{Path: dst.dbPath, Err: fmt.Errorf("the copied change log does not match the source "+
			"(source: %d changes, head %s; copy: %d changes, head %s, problem %v)", want.Events, want.Head, got.Events, got.Head, got.Problem)}
	}
	// Every inventory change writes a change-log row: one written since the
	// snapshot would be missing from the copy.
	var last int64
	if err := src.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) FROM events`).Scan(&last); err != nil {
		return out, src.storeErr(err)
	}
	if last != want.LastSeq {
		return out, &StoreError{Path: src.dbPath, Err: fmt.Errorf("the inventory changed during the copy (change log at seq %d, copied up to %d)", last, want.LastSeq)}
	}
	return out, nil
}

// openReadOnly opens <dataDir>/inventory.db read-only, at the current schema
// version: the source of a copy is never changed, not even upgraded.
func openReadOnly(dataDir string) (*Authority, error) {
	a := &Authority{dir: dataDir, dbPath: filepath.Join(dataDir, "inventory.db"), busyTimeout: defaultBusyTimeout}
	if _, err := os.Stat(a.dbPath); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			err = ErrNoStore
		}
		return nil, &StoreError{Path: a.dbPath, Err: err}
	}
	q := url.Values{}
	q.Set("mode", "ro")
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", a.busyTimeout.Milliseconds()))
	a.db = sql.OpenDB(&connector{dsn: "file:" + a.dbPath + "?" + q.Encode(), timeout: a.busyTimeout})
	var v int
	if err := a.db.QueryRow("PRAGMA user_version").Scan(&v); err != nil {
		a.db.Close()
		return nil, a.storeErr(err)
	}
	if v != schemaVersion {
		a.db.Close()
		return nil, &StoreError{Path: a.dbPath, Err: fmt.Errorf("schema version %d, this binary copies version %d: run any `agentauthz agent` command of this binary on the data directory first, which upgrades it", v, schemaVersion)}
	}
	return a, nil
}

// checkEmpty fails with ErrDestinationNotEmpty if any copied table has a row.
func (a *Authority) checkEmpty(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) error {
	table, err := pgsql.Occupied(ctx, q, inventoryTables)
	if err != nil {
		return a.storeErr(err)
	}
	if table != "" {
		return &StoreError{Path: a.dbPath, Err: fmt.Errorf("%w (table %s has rows)", ErrDestinationNotEmpty, table)}
	}
	return nil
}
