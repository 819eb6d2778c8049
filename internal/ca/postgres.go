package ca

import (
	"context"
	"database/sql"

	"github.com/agentauthz/agentauthz/internal/pgsql"
)

// The inventory on PostgreSQL: the same tables, the same queries (written
// once, with SQLite's ? placeholders, which pgsql's connections rewrite), so
// several control-plane instances can share one inventory and one change log. Writers
// take one transaction-scoped advisory lock (inventoryLock) before anything
// else, which makes them take turns exactly as SQLite's single writer does:
// every read-modify-write of the inventory (the change log's next seq and
// prev hash, a CRL number, an agent's status) sees the last committed write.

// IsPostgres reports whether a --store value names a PostgreSQL database.
func IsPostgres(dsn string) bool { return pgsql.Is(dsn) }

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
	// 3 → 4, as SQLite's 5 → 6.
	consoleSealedSchema,
}

// openPostgres connects to the inventory on PostgreSQL and migrates it.
func (a *Authority) openPostgres(dsn string) error {
	db, err := pgsql.Open(dsn)
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
	if err := pgsql.Migrate(ctx, a.db, pgSchemaTable, inventoryLock, pgMigrations); err != nil {
		return &StoreError{Path: a.dbPath, Err: err}
	}
	return nil
}
