package ca

import (
	"context"
	"crypto/rand"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"modernc.org/sqlite" // also registers the pure-Go "sqlite" driver
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/agentauthz/agentauthz/internal/pgsql"
)

// Sentinel errors callers branch on.
var (
	ErrNotFound       = errors.New("not found")
	ErrExists         = errors.New("already exists")
	ErrNoStore        = errors.New("no inventory store")
	ErrCorruptStore   = errors.New("database is corrupted")
	ErrStoreBusy      = errors.New("database is in use by another process")
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
const schemaVersion = 6

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
	// 1 → 2: fleet-wide restrictions, one per agent, pushed to replicas.
	`
CREATE TABLE restrictions (
	tenant         TEXT NOT NULL,
	agent_id       TEXT NOT NULL,
	quarantined    INTEGER NOT NULL CHECK (quarantined IN (0, 1)),
	max_trust      INTEGER CHECK (max_trust BETWEEN 0 AND 4),
	removed_scopes TEXT NOT NULL,
	until          TEXT,
	reason         TEXT NOT NULL,
	operator       TEXT NOT NULL,
	set_at         TEXT NOT NULL,
	PRIMARY KEY (tenant, agent_id),
	FOREIGN KEY (tenant, agent_id) REFERENCES agents(tenant, agent_id)
);
`,
	// 2 → 3: the signed change log (changelog.go); NULL on older rows.
	`
ALTER TABLE events ADD COLUMN prev TEXT;
ALTER TABLE events ADD COLUMN hash TEXT;
ALTER TABLE events ADD COLUMN kid TEXT;
ALTER TABLE events ADD COLUMN sig TEXT;
`,
	// 3 → 4: the console's sign-in links and sessions (console.go).
	consoleSchema,
	// 4 → 5: the console's OIDC sign-ins under way (console.go).
	consoleOIDCSchema,
	// 5 → 6: nothing secret in the console's tables (console.go).
	consoleSealedSchema,
}

// consoleSchema is the console's tables, the same on SQLite and PostgreSQL.
const consoleSchema = `
CREATE TABLE console_links (
	hash    TEXT PRIMARY KEY,
	name    TEXT NOT NULL,
	role    TEXT NOT NULL,
	expires BIGINT NOT NULL
);
CREATE TABLE console_sessions (
	hash     TEXT PRIMARY KEY,
	operator TEXT NOT NULL,
	role     TEXT NOT NULL,
	csrf     TEXT NOT NULL,
	expires  BIGINT NOT NULL
);
CREATE INDEX console_sessions_by_expiry ON console_sessions(expires);
CREATE TABLE console_keys (
	name TEXT PRIMARY KEY,
	key  TEXT NOT NULL
);
`

// consoleSealedSchema stops keeping the console's secrets in the clear: a
// session's CSRF token is derived from its cookie value, and a pending OIDC
// sign-in's nonce and PKCE verifier are sealed under its state, which only
// the browser holds. Sessions and sign-ins under way end once, on upgrade.
const consoleSealedSchema = `
DELETE FROM console_sessions;
ALTER TABLE console_sessions DROP COLUMN csrf;
DELETE FROM console_oidc;
ALTER TABLE console_oidc DROP COLUMN nonce;
ALTER TABLE console_oidc DROP COLUMN verifier;
ALTER TABLE console_oidc ADD COLUMN sealed TEXT NOT NULL DEFAULT '';
`

// consoleOIDCSchema is the console's OIDC sign-ins under way, the same on
// SQLite and PostgreSQL.
const consoleOIDCSchema = `
CREATE TABLE console_oidc (
	hash     TEXT PRIMARY KEY,
	nonce    TEXT NOT NULL,
	verifier TEXT NOT NULL,
	expires  BIGINT NOT NULL
);
`

// defaultBusyTimeout is how long a connection waits for a lock another
// connection (usually another process) holds on the inventory before giving
// up with ErrStoreBusy.
const defaultBusyTimeout = 10 * time.Second

// Option configures Open.
type Option func(*Authority)

// WithClock sets the clock used for validity windows, CRLs and events.
func WithClock(now func() time.Time) Option { return func(a *Authority) { a.now = now } }

// WithRand sets the randomness source for keys and serials (tests only).
func WithRand(r io.Reader) Option { return func(a *Authority) { a.rand = r } }

// MustExist makes Open fail with ErrNoStore instead of creating an empty
// inventory, so read-only commands change nothing in a fresh directory.
func MustExist() Option { return func(a *Authority) { a.mustExist = true } }

// WithStore keeps the inventory and the change log in the database dsn
// names: a postgres:// or postgresql:// URL (several control-plane instances
// share one inventory) or "" for <data>/inventory.db (SQLite, the default).
// The CA keys and the change-log key stay files in the data directory either
// way (docs/control-plane.md, "High availability").
func WithStore(dsn string) Option { return func(a *Authority) { a.dsn = dsn } }

// withBusyTimeout overrides defaultBusyTimeout (tests only).
func withBusyTimeout(d time.Duration) Option { return func(a *Authority) { a.busyTimeout = d } }

// Authority is the CA tooling over one data directory. It is safe for
// concurrent use; Close releases the store.
type Authority struct {
	dir         string
	dbPath      string
	db          *sql.DB
	now         func() time.Time
	rand        io.Reader
	mustExist   bool
	busyTimeout time.Duration
	ck          changeKeyState
	dsn         string // WithStore
	pg          bool   // the inventory is on PostgreSQL
}

// Open opens (creating if needed) the inventory of dataDir.
func Open(dataDir string, opts ...Option) (*Authority, error) {
	a := &Authority{dir: dataDir, dbPath: filepath.Join(dataDir, "inventory.db"), now: time.Now, rand: rand.Reader,
		busyTimeout: defaultBusyTimeout}
	for _, o := range opts {
		o(a)
	}
	if a.dsn != "" {
		if !IsPostgres(a.dsn) {
			return nil, &StoreError{Path: pgsql.Redact(a.dsn), Err: errors.New("the inventory store must be a postgres:// URL (or none, for <data>/inventory.db)")}
		}
		a.pg, a.dbPath = true, pgsql.Redact(a.dsn)
		if err := os.MkdirAll(dataDir, 0o700); err != nil { // the keys stay files
			return nil, fmt.Errorf("create data dir: %w", err)
		}
		if err := a.openPostgres(a.dsn); err != nil {
			return nil, err
		}
		return a, nil
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
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", a.busyTimeout.Milliseconds()))
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Set("_txlock", "immediate") // writers take the lock up front: no upgrade deadlocks between processes
	db := sql.OpenDB(&connector{dsn: "file:" + a.dbPath + "?" + q.Encode(), timeout: a.busyTimeout})
	a.db = db
	if err := a.migrate(context.Background()); err != nil {
		db.Close()
		return nil, err
	}
	return a, nil
}

// Close releases the inventory store.
func (a *Authority) Close() error { return a.db.Close() }

// StoreKind is "postgres" or "sqlite".
func (a *Authority) StoreKind() string {
	if a.pg {
		return "postgres"
	}
	return "sqlite"
}

// DataDir is the data directory the authority works on.
func (a *Authority) DataDir() string { return a.dir }

func (a *Authority) corrupt(err error) error {
	return &StoreError{Path: a.dbPath, Err: fmt.Errorf("%w: %v", ErrCorruptStore, err)}
}

// storeErr reports a failed operation on the inventory database, classified
// by its SQLite result code: only SQLITE_CORRUPT and SQLITE_NOTADB mean a
// damaged store; SQLITE_BUSY and SQLITE_LOCKED (still, after the busy
// timeout) mean that another connection holds the lock.
func (a *Authority) storeErr(err error) error {
	switch sqliteCode(err) {
	case sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB:
		return a.corrupt(err)
	case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
		return &StoreError{Path: a.dbPath, Err: fmt.Errorf("%w (still locked after %s): %w", ErrStoreBusy, a.busyTimeout, err)}
	}
	return &StoreError{Path: a.dbPath, Err: err}
}

// sqliteCode is the primary SQLite result code in err, or 0.
func sqliteCode(err error) int {
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() & 0xff // connections report extended codes
	}
	return 0
}

// isBusy says whether err is SQLite's "another connection holds the lock".
func isBusy(err error) bool {
	c := sqliteCode(err)
	return c == sqlite3.SQLITE_BUSY || c == sqlite3.SQLITE_LOCKED
}

// connector opens inventory connections, retrying a connection whose setup
// failed with SQLITE_BUSY or SQLITE_LOCKED until timeout has passed. The busy
// timeout alone does not cover that setup: PRAGMA journal_mode=WAL on a
// database not yet in WAL mode (a new one) takes the write lock while holding
// a read lock, and SQLite refuses that upgrade at once, without calling the
// busy handler, if another connection has the write lock, as it does when it
// is setting up the same new database. Once that connection has committed,
// the database is in WAL mode and a retry only has to read that.
type connector struct {
	dsn     string
	timeout time.Duration
}

// sqliteDriver is the registered "sqlite" driver.
var sqliteDriver = func() driver.Driver {
	db, err := sql.Open("sqlite", "")
	if err != nil {
		panic(err)
	}
	defer db.Close()
	return db.Driver()
}()

func (c *connector) Driver() driver.Driver { return sqliteDriver }

func (c *connector) Connect(ctx context.Context) (driver.Conn, error) {
	deadline := time.Now().Add(c.timeout)
	for wait := time.Millisecond; ; wait = min(2*wait, 50*time.Millisecond) {
		conn, err := sqliteDriver.Open(c.dsn)
		if err == nil || !isBusy(err) {
			return conn, err
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, err
		}
		t := time.NewTimer(min(wait, left))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, err
		case <-t.C:
		}
	}
}

// migrate checks the SQLite store and brings its schema to schemaVersion. Several
// processes may migrate a new store at once: each migration step runs in a
// BEGIN IMMEDIATE transaction (the DSN's _txlock) that re-reads the version,
// so they take turns and each step is applied once.
func (a *Authority) migrate(ctx context.Context) error {
	var v int
	if err := a.db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return a.storeErr(err)
	}
	var check string
	if err := a.db.QueryRowContext(ctx, "PRAGMA quick_check").Scan(&check); err != nil {
		return a.storeErr(err)
	}
	if check != "ok" {
		return a.corrupt(errors.New(check))
	}
	for {
		if v > schemaVersion {
			return &StoreError{Path: a.dbPath, Err: fmt.Errorf("schema version %d is newer than this binary supports (%d)", v, schemaVersion)}
		}
		if v == schemaVersion {
			return nil
		}
		tx, err := a.db.BeginTx(ctx, nil)
		if err != nil {
			return a.storeErr(err)
		}
		// Re-read inside the write lock: another process may have migrated.
		var cur int
		if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&cur); err != nil {
			tx.Rollback()
			return a.storeErr(err)
		}
		if cur != v {
			tx.Rollback()
			v = cur
			continue
		}
		if _, err := tx.ExecContext(ctx, migrations[v]); err != nil {
			tx.Rollback()
			return a.storeErr(fmt.Errorf("migrate schema to version %d: %w", v+1, err))
		}
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", v+1)); err != nil {
			tx.Rollback()
			return a.storeErr(err)
		}
		if err := tx.Commit(); err != nil {
			return a.storeErr(fmt.Errorf("migrate schema to version %d: commit: %w", v+1, err))
		}
		v++
	}
}

// tx runs f in one write transaction: IMMEDIATE on SQLite, under the
// writers' advisory lock on PostgreSQL, so writers take turns on both.
func (a *Authority) tx(ctx context.Context, f func(*sql.Tx) error) error {
	tx, err := a.db.BeginTx(ctx, nil)
	if err != nil {
		return a.storeErr(err)
	}
	if a.pg {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(?)`, int64(inventoryLock)); err != nil {
			tx.Rollback()
			return a.storeErr(err)
		}
	}
	if err := f(tx); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return a.storeErr(fmt.Errorf("commit: %w", err))
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

// RecordEvent appends a control-plane change that is not a certificate
// lifecycle step (e.g. an operator certificate issued) to the event log.
func (a *Authority) RecordEvent(tenant, agentID, serial, event, operator, detail string) error {
	if err := validateOperator(operator); err != nil {
		return err
	}
	if err := validateText("detail", detail, 1024); err != nil {
		return err
	}
	return a.tx(context.Background(), func(tx *sql.Tx) error {
		return a.addEvent(tx, a.now(), tenant, agentID, serial, event, operator, detail)
	})
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
