// Package recordstore owns the control plane's central decision store: the
// signed records every replica ships, verified (signature, sequence and hash
// chain, per log) before they are stored, indexed for the auditor's
// questions across the fleet (by decision id, request id, agent, time, …).
// It runs on SQLite (embedded, the default) or PostgreSQL (several control
// plane instances on one database) with one schema and one set of queries.
package recordstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver

	"github.com/agentauthz/agentauthz/internal/pgsql"
)

// Store is the central decision store. It is safe for concurrent use, also
// by several processes (SQLite: one write transaction at a time; PostgreSQL:
// a row lock per log).
type Store struct {
	db       *sql.DB
	postgres bool
	where    string // for errors: a path or the database name, never a password
}

// ErrConflict means a record with the same log and seq but other content is
// already stored: two different histories for one log.
var ErrConflict = errors.New("conflicts with the stored record")

// Open opens the store named by dsn: a postgres:// or postgresql:// URL, or
// a SQLite file path (created with its directory). Migrations run at open.
func Open(ctx context.Context, dsn string) (*Store, error) {
	s := &Store{}
	var err error
	if pgsql.Is(dsn) {
		s.postgres = true
		s.where = pgsql.Redact(dsn)
		s.db, err = pgsql.Open(dsn) // queries are written with SQLite's ? placeholders
	} else {
		path := strings.TrimPrefix(dsn, "sqlite:")
		s.where = path
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, err
		}
		q := url.Values{}
		q.Add("_pragma", "busy_timeout(10000)")
		q.Add("_pragma", "journal_mode(WAL)")
		q.Add("_pragma", "synchronous(FULL)")
		q.Add("_txlock", "immediate")
		s.db, err = sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	}
	if err != nil {
		return nil, s.wrap(err)
	}
	if err := s.db.PingContext(ctx); err != nil {
		s.db.Close()
		return nil, s.wrap(err)
	}
	if err := s.migrate(ctx); err != nil {
		s.db.Close()
		return nil, err
	}
	return s, nil
}

func (s *Store) wrap(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("record store %s: %w", s.where, err)
}

// Close closes the store.
func (s *Store) Close() error { return s.db.Close() }

// Kind is "postgres" or "sqlite".
func (s *Store) Kind() string {
	if s.postgres {
		return "postgres"
	}
	return "sqlite"
}

// migrations[i] moves schema version i to i+1; both databases run the same
// statements (BIGINT and TEXT mean the same to both).
var migrations = []string{
	`
CREATE TABLE logs (
	name       TEXT PRIMARY KEY,
	size       BIGINT NOT NULL,
	root       TEXT NOT NULL,
	tree       TEXT NOT NULL,
	keys       TEXT NOT NULL,
	first_keys TEXT NOT NULL,
	head       BIGINT NOT NULL DEFAULT 0,
	updated_us BIGINT NOT NULL
);
CREATE TABLE records (
	log         TEXT NOT NULL,
	idx         BIGINT NOT NULL,
	time_us     BIGINT NOT NULL,
	kind        TEXT NOT NULL,
	decision_id TEXT NOT NULL,
	request_id  TEXT NOT NULL,
	tenant      TEXT NOT NULL,
	agent_id    TEXT NOT NULL,
	spiffe_id   TEXT NOT NULL,
	operation   TEXT NOT NULL,
	allowed     BIGINT NOT NULL,
	reason      TEXT NOT NULL,
	leaf_hash   TEXT NOT NULL,
	line        TEXT NOT NULL,
	PRIMARY KEY (log, idx)
);
CREATE INDEX records_by_decision ON records (decision_id);
CREATE INDEX records_by_request ON records (request_id);
CREATE INDEX records_by_agent ON records (agent_id, time_us);
CREATE INDEX records_by_time ON records (time_us);
CREATE TABLE checkpoints (
	log    TEXT NOT NULL,
	size   BIGINT NOT NULL,
	signed TEXT NOT NULL,
	PRIMARY KEY (log, size)
);
CREATE TABLE refusals (
	at_us  BIGINT NOT NULL,
	log    TEXT NOT NULL,
	idx    BIGINT NOT NULL,
	reason TEXT NOT NULL,
	detail TEXT NOT NULL
);
`,
	// 1 → 2: the agent and time indexes carry the page order (time, log,
	// index), so a page of an agent with many records is read in order
	// instead of sorted.
	`
DROP INDEX records_by_agent;
DROP INDEX records_by_time;
CREATE INDEX records_by_agent ON records (agent_id, time_us, log, idx);
CREATE INDEX records_by_spiffe ON records (spiffe_id, time_us, log, idx);
CREATE INDEX records_by_time ON records (time_us, log, idx);
`,
	// 2 → 3: the rollup tables (rollup.go), filled from the stored records.
	rollupTables(),
	// 3 → 4: the windows over the daily rollup (rollup.go), made when read.
	windowTables,
	// 4 → 5: the day each window was last read, to drop idle ones.
	windowsReadDay,
	// 5 → 6: nothing on SQLite; on PostgreSQL windowsFillFactor (migrate).
	"",
	// 6 → 7: an agent's decisions by outcome, log and time, for what a
	// revocation did (AfterRevocation): a few seeks per log instead of
	// every decision a revoked agent made since.
	`CREATE INDEX records_by_spiffe_outcome ON records (spiffe_id, allowed, log, time_us)`,
}

// windowsFillFactor leaves half of each page of the windows free on
// PostgreSQL, so that moving a window on (and adding to it) updates its rows
// in place (HOT: no new index entries): a move of 20,000 rows took 69 ms of
// the server's CPU before, 46 ms after.
const (
	windowsFillFactorVersion = 6
	windowsFillFactor        = `ALTER TABLE rollup_window_counts SET (fillfactor = 50)`
)

// migrate brings the schema to len(migrations), one step per transaction,
// re-reading the version under the write lock so that several instances
// starting at once apply each step once.
func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)`); err != nil {
		return s.wrap(fmt.Errorf("schema: %w", err))
	}
	for {
		tx, err := s.db.BeginTx(ctx, nil)
		if err != nil {
			return s.wrap(err)
		}
		if s.postgres {
			// One migrator at a time across instances.
			if _, err := tx.ExecContext(ctx, `LOCK TABLE schema_version IN EXCLUSIVE MODE`); err != nil {
				tx.Rollback()
				return s.wrap(err)
			}
		}
		var v int
		err = tx.QueryRowContext(ctx, `SELECT version FROM schema_version`).Scan(&v)
		if errors.Is(err, sql.ErrNoRows) {
			if _, err = tx.ExecContext(ctx, `INSERT INTO schema_version (version) VALUES (0)`); err == nil {
				v = 0
			}
		}
		if err != nil {
			tx.Rollback()
			return s.wrap(fmt.Errorf("schema version: %w", err))
		}
		if v > len(migrations) {
			tx.Rollback()
			return s.wrap(fmt.Errorf("schema version %d is newer than this binary supports (%d)", v, len(migrations)))
		}
		if v == len(migrations) {
			return s.wrap(tx.Commit())
		}
		for _, stmt := range strings.Split(migrations[v], ";") {
			if strings.TrimSpace(stmt) == "" {
				continue
			}
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				tx.Rollback()
				return s.wrap(fmt.Errorf("migrate to version %d: %w", v+1, err))
			}
		}
		if v+1 == rollupsVersion {
			if err := s.fillRollups(ctx, tx); err != nil {
				tx.Rollback()
				return fmt.Errorf("migrate to version %d: %w", v+1, err)
			}
		}
		if v+1 == windowsFillFactorVersion && s.postgres {
			if _, err := tx.ExecContext(ctx, windowsFillFactor); err != nil {
				tx.Rollback()
				return s.wrap(fmt.Errorf("migrate to version %d: %w", v+1, err))
			}
		}
		if _, err := tx.ExecContext(ctx, `UPDATE schema_version SET version = ?`, v+1); err != nil {
			tx.Rollback()
			return s.wrap(err)
		}
		if err := tx.Commit(); err != nil {
			return s.wrap(fmt.Errorf("migrate to version %d: %w", v+1, err))
		}
	}
}

func micros(t time.Time) int64 { return t.UnixMicro() }
