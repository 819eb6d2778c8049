// Package pgsql is the PostgreSQL access the control plane's stores share
// (the CA inventory, the alert store, the record store): connections that
// take queries written once for both backends, with SQLite's ? placeholders,
// schema migrations that instances starting at once apply once, and database
// URLs fit for messages.
package pgsql

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

// Is reports whether dsn names a PostgreSQL database (a postgres:// or
// postgresql:// URL).
func Is(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// Open opens the PostgreSQL database dsn names (a postgres:// URL)
// through a connector that takes queries written for SQLite: ? placeholders
// become $1, $2, ….
func Open(dsn string) (*sql.DB, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		// The parser's message may quote the DSN, password and all.
		return nil, errors.New("not a valid postgres:// URL")
	}
	return sql.OpenDB(pgConnector{stdlib.GetConnector(*cfg)}), nil
}

// Redact is a database URL without its password or parameters, for
// messages.
func Redact(dsn string) string {
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

// Migrate brings the schema whose version table is versionTable to
// len(steps): steps[i] moves it from version i to i+1. Each step runs in its
// own transaction under the advisory lock lock, so instances starting at
// once apply each step once; a version newer than len(steps) is an error.
func Migrate(ctx context.Context, db *sql.DB, versionTable string, lock int64, steps []string) error {
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

// sqlIdent is a table name Migrate accepts.
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

// pgConn is a pgx connection that takes queries as written for SQLite: ? placeholders become $1, $2, …. Every other method is pgx's.
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

// Pgx is the pgx connection under a driver connection of Open's (as
// (*sql.Conn).Raw passes it), for what database/sql cannot do, such as COPY.
func Pgx(driverConn any) (*pgx.Conn, bool) {
	c, ok := driverConn.(*pgConn)
	if !ok {
		return nil, false
	}
	return c.Conn.Conn(), true
}
