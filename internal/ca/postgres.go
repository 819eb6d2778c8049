package ca

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// The inventory on PostgreSQL: the same tables, the same queries (written
// once, with SQLite's ? placeholders, which pgConn rewrites), so several
// control-plane instances can share one inventory and one change log. Writers
// take one transaction-scoped advisory lock (inventoryLock) before anything
// else, which makes them take turns exactly as SQLite's single writer does:
// every read-modify-write of the inventory (the change log's next seq and
// prev hash, a CRL number, an agent's status) sees the last committed write.

// IsPostgres reports whether a --store value names a PostgreSQL database.
func IsPostgres(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// inventoryLock is the advisory lock key of inventory writers ("agentauthz"
// in ASCII, as a number); the record store does not use it.
const inventoryLock = 0x6167656e74617574

// pgSchemaTable holds the inventory's schema version on PostgreSQL (the
// record store, which may share the database, keeps its own).
const pgSchemaTable = "inventory_schema"

// pgMigrations[i] moves the PostgreSQL inventory from version i to i+1. The
// first step creates what SQLite reaches at its schemaVersion 3; later steps
// follow the SQLite migrations one for one.
var pgMigrations = []string{
	`
CREATE TABLE trust_domains (
	name                  TEXT PRIMARY KEY,
	org                   TEXT NOT NULL DEFAULT '',
	crl_url               TEXT NOT NULL DEFAULT '',
	max_ttl_seconds       BIGINT NOT NULL,
	imported              INTEGER NOT NULL DEFAULT 0,
	created_at            TEXT NOT NULL,
	revocation_generation BIGINT NOT NULL DEFAULT 0,
	crl_number            BIGINT NOT NULL DEFAULT 0,
	crl_generation        BIGINT NOT NULL DEFAULT -1,
	crl_this_update       TEXT,
	crl_next_update       TEXT,
	crl_der               BYTEA
);
CREATE TABLE agents (
	tenant            TEXT NOT NULL REFERENCES trust_domains(name),
	agent_id          TEXT NOT NULL,
	trust             INTEGER NOT NULL CHECK (trust BETWEEN 0 AND 4),
	scopes            TEXT NOT NULL,
	owner             TEXT NOT NULL,
	ttl_seconds       BIGINT NOT NULL,
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
	seq      BIGINT PRIMARY KEY,
	at       TEXT NOT NULL,
	tenant   TEXT NOT NULL,
	agent_id TEXT NOT NULL DEFAULT '',
	serial   TEXT NOT NULL DEFAULT '',
	event    TEXT NOT NULL,
	operator TEXT NOT NULL,
	detail   TEXT NOT NULL DEFAULT '',
	prev     TEXT,
	hash     TEXT,
	kid      TEXT,
	sig      TEXT
);
CREATE INDEX events_by_agent ON events(tenant, agent_id);
CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'events are append-only';
END $$;
CREATE TRIGGER events_append_only_update BEFORE UPDATE OR DELETE ON events
	FOR EACH ROW EXECUTE FUNCTION events_append_only();
CREATE TRIGGER events_append_only_truncate BEFORE TRUNCATE ON events
	FOR EACH STATEMENT EXECUTE FUNCTION events_append_only();
CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO meta (key, value) VALUES ('revocation_generation', 0);
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
	// 1 → 2, as SQLite's 3 → 4.
	consoleSchema,
	// 2 → 3, as SQLite's 4 → 5.
	consoleOIDCSchema,
}

// openPostgres connects to the inventory on PostgreSQL and migrates it.
func (a *Authority) openPostgres(dsn string) error {
	db, err := OpenPostgres(dsn)
	if err != nil {
		return &StoreError{Path: a.dbPath, Err: err}
	}
	a.db = db
	ctx := context.Background()
	if err := a.db.PingContext(ctx); err != nil {
		a.db.Close()
		return &StoreError{Path: a.dbPath, Err: err}
	}
	if err := a.migratePostgres(ctx); err != nil {
		a.db.Close()
		return err
	}
	return nil
}

// OpenPostgres opens the PostgreSQL database dsn names (a postgres:// URL)
// through a connector that takes queries written for SQLite: ? placeholders
// become $1, $2, …. The inventory and the alert store write each query once
// for both backends this way.
func OpenPostgres(dsn string) (*sql.DB, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		// The parser's message may quote the DSN, password and all.
		return nil, errors.New("not a valid postgres:// URL")
	}
	return sql.OpenDB(pgConnector{stdlib.GetConnector(*cfg)}), nil
}

// RedactDSN is a database URL without its password or parameters, for
// messages.
func RedactDSN(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return "postgres"
	}
	if u.User != nil {
		u.User = url.User(u.User.Username())
	}
	u.RawQuery = ""
	return u.String()
}

// migratePostgres brings the schema to len(pgMigrations), one step per
// transaction under the writers' lock, so instances starting at once apply
// each step once. With MustExist, a database without the inventory is
// ErrNoStore, as a missing inventory.db is.
func (a *Authority) migratePostgres(ctx context.Context) error {
	if a.mustExist {
		var name sql.NullString
		if err := a.db.QueryRowContext(ctx, `SELECT to_regclass('`+pgSchemaTable+`')::text`).Scan(&name); err != nil {
			return &StoreError{Path: a.dbPath, Err: err}
		}
		if !name.Valid {
			return &StoreError{Path: a.dbPath, Err: ErrNoStore}
		}
	}
	if err := MigratePostgres(ctx, a.db, pgSchemaTable, inventoryLock, pgMigrations); err != nil {
		return &StoreError{Path: a.dbPath, Err: err}
	}
	return nil
}

// MigratePostgres brings the schema whose version table is versionTable to
// len(steps): steps[i] moves it from version i to i+1. Each step runs in its
// own transaction under the advisory lock lock, so instances starting at
// once apply each step once; a version newer than len(steps) is an error.
func MigratePostgres(ctx context.Context, db *sql.DB, versionTable string, lock int64, steps []string) error {
	if !sqlIdent.MatchString(versionTable) { // it is put into the statements
		return fmt.Errorf("version table %q: not a plain identifier", versionTable)
	}
	for {
		done, err := migrateStep(ctx, db, versionTable, lock, steps)
		if err != nil || done {
			return err
		}
	}
}

// sqlIdent is a table name MigratePostgres accepts.
var sqlIdent = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)

func migrateStep(ctx context.Context, db *sql.DB, versionTable string, lock int64, steps []string) (done bool, err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return false, err
	}
	defer tx.Rollback() // does nothing after Commit
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(?)`, lock); err != nil {
		return false, err
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS `+versionTable+` (version BIGINT NOT NULL)`); err != nil {
		return false, err
	}
	var v int
	err = tx.QueryRowContext(ctx, `SELECT version FROM `+versionTable).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		_, err = tx.ExecContext(ctx, `INSERT INTO `+versionTable+` (version) VALUES (0)`) //nolint:gosec // versionTable is checked to be an identifier
	}
	if err != nil {
		return false, err
	}
	switch {
	case v > len(steps):
		return false, fmt.Errorf("schema version %d is newer than this binary supports (%d)", v, len(steps))
	case v == len(steps):
		return true, tx.Commit()
	}
	if _, err := tx.ExecContext(ctx, steps[v]); err != nil {
		return false, fmt.Errorf("migrate schema to version %d: %w", v+1, err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE `+versionTable+` SET version = ?`, v+1); err != nil { //nolint:gosec // versionTable is checked to be an identifier
		return false, err
	}
	return false, tx.Commit()
}

// pgConnector opens pgx connections that rewrite ? placeholders.
type pgConnector struct{ driver.Connector }

func (c pgConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.Connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	sc, ok := conn.(*stdlib.Conn)
	if !ok {
		conn.Close()
		return nil, fmt.Errorf("unexpected pgx connection type %T", conn)
	}
	return &pgConn{sc}, nil
}

// pgConn is a pgx connection that takes the inventory's queries as written
// for SQLite: ? placeholders become $1, $2, …. Every other method is pgx's.
type pgConn struct{ *stdlib.Conn }

func (c *pgConn) Prepare(query string) (driver.Stmt, error) { return c.Conn.Prepare(rebind(query)) }

func (c *pgConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	return c.Conn.PrepareContext(ctx, rebind(query))
}

func (c *pgConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	return c.Conn.ExecContext(ctx, rebind(query), args)
}

func (c *pgConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	return c.Conn.QueryContext(ctx, rebind(query), args)
}

// rebind numbers the ? placeholders of query as PostgreSQL's $1, $2, …,
// leaving string literals, quoted identifiers and dollar-quoted bodies
// alone.
func rebind(query string) string {
	if !strings.Contains(query, "?") {
		return query
	}
	var b strings.Builder
	b.Grow(len(query) + 8)
	n := 0
	for i := 0; i < len(query); i++ {
		switch ch := query[i]; ch {
		case '?':
			n++
			fmt.Fprintf(&b, "$%d", n)
		case '\'', '"':
			j := strings.IndexByte(query[i+1:], ch)
			if j < 0 {
				b.WriteString(query[i:])
				return b.String()
			}
			b.WriteString(query[i : i+j+2])
			i += j + 1
		case '$':
			if strings.HasPrefix(query[i:], "$$") {
				j := strings.Index(query[i+2:], "$$")
				if j < 0 {
					b.WriteString(query[i:])
					return b.String()
				}
				b.WriteString(query[i : i+j+4])
				i += j + 3
				continue
			}
			b.WriteByte(ch)
		default:
			b.WriteByte(ch)
		}
	}
	return b.String()
}
