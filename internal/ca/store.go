package ca

import (
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"time"

	_ "modernc.org/sqlite" // registers the pure-Go "sqlite" driver
)

// Sentinel errors callers branch on.
var (
	ErrNotFound       = errors.New("not found")
	ErrExists         = errors.New("already exists")
	ErrNoStore        = errors.New("no inventory store")
	ErrCorruptStore   = errors.New("database is corrupted")
	ErrKeyPermissions = errors.New("ca key file is readable by group or others")
)

// StoreError reports an unusable inventory store and where it is.
type StoreError struct {
	Path string
	Err  error
}

func (e *StoreError) Error() string { return fmt.Sprintf("inventory store %s: %v", e.Path, e.Err) }
func (e *StoreError) Unwrap() error { return e.Err }

// schemaVersion is PRAGMA user_version of the current schema. Version 0 is an
// empty database; migrations[i] moves version i to i+1.
const schemaVersion = 1

var migrations = []string{
	// 0 → 1
	`
CREATE TABLE trust_domains (
	name                  TEXT PRIMARY KEY,
	org                   TEXT NOT NULL DEFAULT '',
	crl_url               TEXT NOT NULL DEFAULT '',
	max_ttl_seconds       INTEGER NOT NULL,
	imported              INTEGER NOT NULL DEFAULT 0,
	created_at            TEXT NOT NULL,
	revocation_generation INTEGER NOT NULL DEFAULT 0,
	crl_number            INTEGER NOT NULL DEFAULT 0,
	crl_generation        INTEGER NOT NULL DEFAULT -1,
	crl_this_update       TEXT,
	crl_next_update       TEXT,
	crl_der               BLOB
);
CREATE TABLE agents (
	tenant            TEXT NOT NULL REFERENCES trust_domains(name),
	agent_id          TEXT NOT NULL,
	trust             INTEGER NOT NULL CHECK (trust BETWEEN 0 AND 4),
	scopes            TEXT NOT NULL,
	owner             TEXT NOT NULL,
	ttl_seconds       INTEGER NOT NULL,
	key_type          TEXT NOT NULL,
	status            TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
	revoked_at        TEXT,
	revocation_reason TEXT,
	created_at        TEXT NOT NULL,
	updated_at        TEXT NOT NULL,
	PRIMARY KEY (tenant, agent_id)
);
CREATE TABLE certificates (
	tenant            TEXT NOT NULL,
	serial            TEXT NOT NULL,
	agent_id          TEXT NOT NULL,
	trust             INTEGER NOT NULL CHECK (trust BETWEEN 0 AND 4),
	scopes            TEXT NOT NULL,
	owner             TEXT NOT NULL,
	key_type          TEXT NOT NULL,
	not_before        TEXT NOT NULL,
	not_after         TEXT NOT NULL,
	status            TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
	revoked_at        TEXT,
	revocation_reason TEXT,
	operator          TEXT NOT NULL,
	issued_at         TEXT NOT NULL,
	pem               TEXT NOT NULL,
	PRIMARY KEY (tenant, serial),
	FOREIGN KEY (tenant, agent_id) REFERENCES agents(tenant, agent_id)
);
CREATE INDEX certificates_by_agent ON certificates(tenant, agent_id);
CREATE TABLE events (
	seq      INTEGER PRIMARY KEY AUTOINCREMENT,
	at       TEXT NOT NULL,
	tenant   TEXT NOT NULL,
	agent_id TEXT NOT NULL DEFAULT '',
	serial   TEXT NOT NULL DEFAULT '',
	event    TEXT NOT NULL,
	operator TEXT NOT NULL,
	detail   TEXT NOT NULL DEFAULT ''
);
CREATE INDEX events_by_agent ON events(tenant, agent_id);
CREATE TRIGGER events_append_only_update BEFORE UPDATE ON events
	BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER events_append_only_delete BEFORE DELETE ON events
	BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta (key, value) VALUES ('revocation_generation', 0);
`,
}

// Option configures Open.
type Option func(*Authority)

// WithClock sets the clock used for validity windows, CRLs and events.
func WithClock(now func() time.Time) Option { return func(a *Authority) { a.now = now } }

// WithRand sets the randomness source for keys and serials (tests only).
func WithRand(r io.Reader) Option { return func(a *Authority) { a.rand = r } }

// MustExist makes Open fail with ErrNoStore instead of creating an empty
// inventory, so read-only commands change nothing in a fresh directory.
func MustExist() Option { return func(a *Authority) { a.mustExist = true } }

// Authority is the CA tooling over one data directory. It is safe for
// concurrent use; Close releases the store.
type Authority struct {
	dir       string
	dbPath    string
	db        *sql.DB
	now       func() time.Time
	rand      io.Reader
	mustExist bool
}

// Open opens (creating if needed) the inventory of dataDir.
func Open(dataDir string, opts ...Option) (*Authority, error) {
	a := &Authority{dir: dataDir, dbPath: filepath.Join(dataDir, "inventory.db"), now: time.Now, rand: rand.Reader}
	for _, o := range opts {
		o(a)
	}
	if _, err := os.Stat(a.dbPath); errors.Is(err, os.ErrNotExist) {
		if a.mustExist {
			return nil, &StoreError{Path: a.dbPath, Err: ErrNoStore}
		}
		if err := os.MkdirAll(dataDir, 0o700); err != nil {
			return nil, fmt.Errorf("create data dir: %w", err)
		}
	} else if err != nil {
		return nil, &StoreError{Path: a.dbPath, Err: err}
	}
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Set("_txlock", "immediate") // writers take the lock up front: no upgrade deadlocks between processes
	db, err := sql.Open("sqlite", "file:"+a.dbPath+"?"+q.Encode())
	if err != nil {
		return nil, &StoreError{Path: a.dbPath, Err: err}
	}
	a.db = db
	if err := a.migrate(context.Background()); err != nil {
		db.Close()
		return nil, err
	}
	return a, nil
}

// Close releases the inventory store.
func (a *Authority) Close() error { return a.db.Close() }

// DataDir is the data directory the authority works on.
func (a *Authority) DataDir() string { return a.dir }

func (a *Authority) corrupt(err error) error {
	return &StoreError{Path: a.dbPath, Err: fmt.Errorf("%w: %v", ErrCorruptStore, err)}
}

func (a *Authority) migrate(ctx context.Context) error {
	var v int
	if err := a.db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return a.corrupt(err)
	}
	var check string
	if err := a.db.QueryRowContext(ctx, "PRAGMA quick_check").Scan(&check); err != nil {
		return a.corrupt(err)
	}
	if check != "ok" {
		return a.corrupt(errors.New(check))
	}
	if v > schemaVersion {
		return &StoreError{Path: a.dbPath, Err: fmt.Errorf("schema version %d is newer than this binary supports (%d)", v, schemaVersion)}
	}
	for ; v < schemaVersion; v++ {
		tx, err := a.db.BeginTx(ctx, nil)
		if err != nil {
			return &StoreError{Path: a.dbPath, Err: err}
		}
		// Re-read inside the write lock: another process may have migrated.
		var cur int
		if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&cur); err != nil {
			tx.Rollback()
			return a.corrupt(err)
		}
		if cur != v {
			tx.Rollback()
			v = cur - 1
			continue
		}
		if _, err := tx.ExecContext(ctx, migrations[v]); err != nil {
			tx.Rollback()
			return &StoreError{Path: a.dbPath, Err: fmt.Errorf("migrate schema to version %d: %w", v+1, err)}
		}
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", v+1)); err != nil {
			tx.Rollback()
			return &StoreError{Path: a.dbPath, Err: err}
		}
		if err := tx.Commit(); err != nil {
			return &StoreError{Path: a.dbPath, Err: err}
		}
	}
	return nil
}

// tx runs f in one IMMEDIATE write transaction.
func (a *Authority) tx(ctx context.Context, f func(*sql.Tx) error) error {
	tx, err := a.db.BeginTx(ctx, nil)
	if err != nil {
		return &StoreError{Path: a.dbPath, Err: err}
	}
	if err := f(tx); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return &StoreError{Path: a.dbPath, Err: fmt.Errorf("commit: %w", err)}
	}
	return nil
}

const (
	timeFormat  = "2006-01-02T15:04:05Z"        // validity: second precision, sorts lexically
	eventFormat = "2006-01-02T15:04:05.000000Z" // events: µs
)

func fmtTime(t time.Time) string  { return t.UTC().Format(timeFormat) }
func fmtEvent(t time.Time) string { return t.UTC().Format(eventFormat) }

func parseTime(s string) time.Time {
	t, _ := time.Parse(time.RFC3339Nano, s)
	return t
}

func addEvent(tx *sql.Tx, at time.Time, tenant, agentID, serial, event, operator, detail string) error {
	_, err := tx.Exec(`INSERT INTO events (at, tenant, agent_id, serial, event, operator, detail) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		fmtEvent(at), tenant, agentID, serial, event, operator, detail)
	if err != nil {
		return fmt.Errorf("record event %s: %w", event, err)
	}
	return nil
}

// bumpRevocation records that the revocation state of tenant changed.
func bumpRevocation(tx *sql.Tx, tenant string) error {
	if _, err := tx.Exec(`UPDATE meta SET value = value + 1 WHERE key = 'revocation_generation'`); err != nil {
		return fmt.Errorf("bump revocation generation: %w", err)
	}
	if _, err := tx.Exec(`UPDATE trust_domains SET revocation_generation = revocation_generation + 1 WHERE name = ?`, tenant); err != nil {
		return fmt.Errorf("bump revocation generation: %w", err)
	}
	return nil
}

// RevocationGeneration is a counter that changes whenever a revocation (or
// the lifting of an agent revocation) is committed, by any process. It is one
// indexed read, cheap enough to poll every 100 ms.
func (a *Authority) RevocationGeneration() (int64, error) {
	var g int64
	err := a.db.QueryRow(`SELECT value FROM meta WHERE key = 'revocation_generation'`).Scan(&g)
	if err != nil {
		return 0, &StoreError{Path: a.dbPath, Err: err}
	}
	return g, nil
}
