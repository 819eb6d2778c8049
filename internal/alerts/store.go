package alerts

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver

	"github.com/agentauthz/agentauthz/internal/anomaly"
	"github.com/agentauthz/agentauthz/internal/pgsql"
)

// Alert is a detector alert as the control plane keeps it: the explained
// alert, whether its signed change-log row was written, who acknowledged it
// and the response it caused.
type Alert struct {
	ID       string        `json:"id"`
	Alert    anomaly.Alert `json:"alert"`
	Logged   bool          `json:"logged"`
	Ack      *anomaly.Ack  `json:"ack,omitempty"`
	Response *Response     `json:"response,omitempty"`
}

// Open reports whether the alert still waits for a responder: its
// response not decided or reviewed yet, or, without a response, not
// acknowledged.
func (a *Alert) Open() bool {
	if a.Response != nil {
		return a.Response.Open()
	}
	return a.Ack == nil
}

// Response is what an alert's rule did about it.
type Response struct {
	Mode   string `json:"mode"`
	Action Action `json:"action"`
	State  string `json:"state"`
	// Until is when the applied restriction ends.
	Until *time.Time `json:"until,omitempty"`
	// Applied is the restriction as set (its reason and time identify it
	// when it is undone); Prev the agent's restriction before it.
	Applied *Restriction `json:"applied,omitempty"`
	Prev    *Restriction `json:"prev,omitempty"`
	Error   string       `json:"error,omitempty"`
	// By, At and Reason: the responder's decision.
	By     string     `json:"by,omitempty"`
	At     *time.Time `json:"at,omitempty"`
	Reason string     `json:"reason,omitempty"`
}

// Restriction is the part of a ca.Restriction a response keeps.
type Restriction struct {
	Quarantined   bool       `json:"quarantined,omitempty"`
	MaxTrust      *int       `json:"max_trust,omitempty"`
	RemovedScopes []string   `json:"removed_scopes,omitempty"`
	Until         *time.Time `json:"until,omitempty"`
	Reason        string     `json:"reason"`
	SetAt         time.Time  `json:"set_at"`
}

// Open reports whether a responder still has to decide (a proposal, a
// failed response) or review (an automatic restriction).
func (r *Response) Open() bool {
	return r.State == StatePending || r.State == StateApplied || r.State == StateFailed
}

// db is the control plane's alert store: the alerts with their
// acknowledgements and responses (the signed change log holds the evidence;
// this is what is queried), the detector's state and cursors, and the lease
// that lets one control-plane instance at a time run the detector. It is
// <data>/alerts.db (SQLite), or, when the control plane's store is
// PostgreSQL, tables of that database, shared by every instance. The queries
// are written once, for SQLite; pgsql.Open rewrites their placeholders.
type db struct {
	sql  *sql.DB
	path string // for messages: the file, or the database URL without secrets
	pg   bool
}

const schema = `
CREATE TABLE IF NOT EXISTS alerts (
	id        TEXT PRIMARY KEY,
	time_us   BIGINT NOT NULL,
	rule      TEXT NOT NULL,
	agent     TEXT NOT NULL,
	tenant    TEXT NOT NULL,
	agent_id  TEXT NOT NULL,
	body      TEXT NOT NULL,
	logged    BIGINT NOT NULL DEFAULT 0,
	ack       TEXT NOT NULL DEFAULT '',
	response  TEXT NOT NULL DEFAULT '',
	open      BIGINT NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS alerts_by_time ON alerts (time_us);
CREATE INDEX IF NOT EXISTS alerts_by_agent ON alerts (tenant, agent_id, time_us);
CREATE TABLE IF NOT EXISTS detector (
	name     TEXT PRIMARY KEY,
	state    BLOB NOT NULL,
	cursors  TEXT NOT NULL,
	saved_us BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS lease (
	name     TEXT PRIMARY KEY,
	holder   TEXT NOT NULL,
	until_us BIGINT NOT NULL
);
`

// pgSchemaTable holds the alert store's schema version on PostgreSQL (the
// inventory and the record store, in the same database, keep their own).
const pgSchemaTable = "alerts_schema"

// pgLock is the advisory lock key of the alert store's migrations ("alerts"
// in ASCII, as a number).
const pgLock = 0x616c65727473

// pgMigrations[i] moves the alert store on PostgreSQL from version i to
// i+1; the first step is the SQLite schema with PostgreSQL's types.
var pgMigrations = []string{strings.ReplaceAll(schema, "BLOB", "BYTEA")}

// openDB opens the alert store: on PostgreSQL when dsn is a postgres://
// URL, else the SQLite file path.
func openDB(path, dsn string) (*db, error) {
	if pgsql.Is(dsn) {
		return openPostgres(dsn)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Add("_txlock", "immediate")
	s, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("alert store %s: %w", path, err)
	}
	for stmt := range strings.SplitSeq(schema, ";") {
		if strings.TrimSpace(stmt) == "" {
			continue
		}
		if _, err := s.Exec(stmt); err != nil {
			s.Close()
			return nil, fmt.Errorf("alert store %s: %w", path, err)
		}
	}
	if err := os.Chmod(path, 0o600); err != nil {
		s.Close()
		return nil, err
	}
	return &db{sql: s, path: path}, nil
}

func openPostgres(dsn string) (*db, error) {
	d := &db{path: pgsql.Redact(dsn), pg: true}
	var err error
	if d.sql, err = pgsql.Open(dsn); err != nil {
		return nil, d.wrap(err)
	}
	if err := pgsql.Migrate(context.Background(), d.sql, pgSchemaTable, pgLock, pgMigrations); err != nil {
		d.sql.Close()
		return nil, d.wrap(err)
	}
	return d, nil
}

func (d *db) wrap(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("alert store %s: %w", d.path, err)
}

// insert stores a new alert; false when its id is already stored (the same
// records seen again after a restart).
func (d *db) insert(a *Alert) (bool, error) {
	body, err := json.Marshal(a.Alert)
	if err != nil {
		return false, err
	}
	resp := ""
	if a.Response != nil {
		b, err := json.Marshal(a.Response)
		if err != nil {
			return false, err
		}
		resp = string(b)
	}
	res, err := d.sql.Exec(`INSERT INTO alerts (id, time_us, rule, agent, tenant, agent_id, body, response) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO NOTHING`, a.ID, a.Alert.Time.UnixMicro(), a.Alert.Rule, a.Alert.Agent, a.Alert.Tenant, a.Alert.AgentID, string(body), resp)
	if err != nil {
		return false, d.wrap(err)
	}
	n, err := res.RowsAffected()
	return n == 1, d.wrap(err)
}

// update writes an alert's logged flag, acknowledgement and response.
func (d *db) update(a *Alert) error {
	ack, resp := "", ""
	if a.Ack != nil {
		b, _ := json.Marshal(a.Ack) // plain strings and a time: cannot fail
		ack = string(b)
	}
	if a.Response != nil {
		b, err := json.Marshal(a.Response)
		if err != nil {
			return err
		}
		resp = string(b)
	}
	logged, open := 0, 0
	if a.Logged {
		logged = 1
	}
	if a.Open() {
		open = 1
	}
	_, err := d.sql.Exec(`UPDATE alerts SET logged = ?, ack = ?, response = ?, open = ? WHERE id = ?`, logged, ack, resp, open, a.ID)
	return d.wrap(err)
}

// Filter selects alerts; empty fields match everything.
type Filter struct {
	Open bool
	Rule string
	// Agent is a SPIFFE ID, an agent id or a certificate hash.
	Agent  string
	Tenant string
	// Limit is at most MaxLimit; 0 means DefaultLimit.
	Limit int
}

// Page sizes of List.
const (
	DefaultLimit = 100
	MaxLimit     = 1000
)

// ErrBadFilter marks a filter that cannot run.
var ErrBadFilter = errors.New("bad filter")

func (d *db) list(ctx context.Context, f Filter) ([]Alert, error) {
	if f.Limit < 0 || f.Limit > MaxLimit {
		return nil, fmt.Errorf("%w: limit %d outside 0..%d", ErrBadFilter, f.Limit, MaxLimit)
	}
	if f.Limit == 0 {
		f.Limit = DefaultLimit
	}
	var where []string
	var args []any
	if f.Open {
		where = append(where, "open = 1")
	}
	if f.Rule != "" {
		where = append(where, "rule = ?")
		args = append(args, f.Rule)
	}
	if f.Tenant != "" {
		where = append(where, "tenant = ?")
		args = append(args, f.Tenant)
	}
	if f.Agent != "" {
		where = append(where, "(agent = ? OR agent_id = ?)")
		args = append(args, f.Agent, f.Agent)
	}
	q := `SELECT id, body, logged, ack, response FROM alerts`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY time_us DESC, id LIMIT ?"
	args = append(args, f.Limit)
	return d.query(ctx, q, args...)
}

func (d *db) get(ctx context.Context, id string) (*Alert, error) {
	as, err := d.query(ctx, `SELECT id, body, logged, ack, response FROM alerts WHERE id = ?`, id)
	if err != nil {
		return nil, err
	}
	if len(as) == 0 {
		return nil, fmt.Errorf("%w: no alert %q", ErrNotFound, id)
	}
	return &as[0], nil
}

func (d *db) unlogged(ctx context.Context) ([]Alert, error) {
	return d.query(ctx, `SELECT id, body, logged, ack, response FROM alerts WHERE logged = 0 ORDER BY time_us LIMIT 1000`)
}

func (d *db) query(ctx context.Context, q string, args ...any) ([]Alert, error) {
	rows, err := d.sql.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, d.wrap(err)
	}
	defer rows.Close()
	out := []Alert{}
	for rows.Next() {
		var a Alert
		var body, ack, resp string
		var logged int
		if err := rows.Scan(&a.ID, &body, &logged, &ack, &resp); err != nil {
			return nil, d.wrap(err)
		}
		a.Logged = logged == 1
		if err := json.Unmarshal([]byte(body), &a.Alert); err != nil {
			return nil, d.wrap(fmt.Errorf("alert %s: %w", a.ID, err))
		}
		if ack != "" {
			a.Ack = &anomaly.Ack{}
			if err := json.Unmarshal([]byte(ack), a.Ack); err != nil {
				return nil, d.wrap(fmt.Errorf("alert %s: %w", a.ID, err))
			}
		}
		if resp != "" {
			a.Response = &Response{}
			if err := json.Unmarshal([]byte(resp), a.Response); err != nil {
				return nil, d.wrap(fmt.Errorf("alert %s: %w", a.ID, err))
			}
		}
		out = append(out, a)
	}
	return out, d.wrap(rows.Err())
}

// errLeaseLost: another instance took the detector lease over.
var errLeaseLost = errors.New("the detector lease was taken over by another control-plane instance")

// saveState stores the detector's state and cursors together, so a restart
// resumes from a consistent point, if holder still holds the lease: an
// instance that lost it (paused past its expiry) must not move back the
// cursors of the one that took over. The lease row stays locked until the
// commit, so a takeover waits for the save or the save sees it.
func (d *db) saveState(holder string, state []byte, cursors map[string]uint64, at time.Time) error {
	c, _ := json.Marshal(cursors) // a map of strings to numbers: cannot fail
	tx, err := d.sql.Begin()
	if err != nil {
		return d.wrap(err)
	}
	defer tx.Rollback() // does nothing after Commit
	res, err := tx.Exec(`UPDATE lease SET until_us = until_us WHERE name = 'detector' AND holder = ?`, holder)
	if err != nil {
		return d.wrap(err)
	}
	if n, err := res.RowsAffected(); err != nil || n != 1 {
		return d.wrap(cmp.Or(err, errLeaseLost))
	}
	if _, err := tx.Exec(`INSERT INTO detector (name, state, cursors, saved_us) VALUES ('central', ?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET state = excluded.state, cursors = excluded.cursors, saved_us = excluded.saved_us`,
		state, string(c), at.UnixMicro()); err != nil {
		return d.wrap(err)
	}
	return d.wrap(tx.Commit())
}

// loadState returns the saved state (nil when there is none) and cursors.
func (d *db) loadState() ([]byte, map[string]uint64, error) {
	var state []byte
	var c string
	err := d.sql.QueryRow(`SELECT state, cursors FROM detector WHERE name = 'central'`).Scan(&state, &c)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, map[string]uint64{}, nil
	}
	if err != nil {
		return nil, nil, d.wrap(err)
	}
	cursors := map[string]uint64{}
	if err := json.Unmarshal([]byte(c), &cursors); err != nil {
		return nil, nil, d.wrap(fmt.Errorf("detector cursors: %w", err))
	}
	return state, cursors, nil
}

// lease takes or renews the detector lease for holder for d; false when
// another holder's lease has not run out. One statement: on SQLite the
// write lock, on PostgreSQL the row lock of ON CONFLICT DO UPDATE (which
// evaluates the WHERE on the latest committed row) make instances taking it
// at once take turns, so exactly one holds it.
//
// Whose clock: on PostgreSQL, instances on several hosts share the lease,
// so its times are the database's (clock_timestamp() in the statement) and
// now is not used: an instance whose clock is off cannot take a lease still
// held, nor hold one longer. On SQLite the instances share one data
// directory and so one host and one clock: now is that clock.
func (d *db) lease(holder string, now time.Time, dur time.Duration) (bool, error) {
	q := `INSERT INTO lease (name, holder, until_us) VALUES ('detector', ?, ?)
		ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_us = excluded.until_us
		WHERE lease.holder = excluded.holder OR lease.until_us < ?`
	args := []any{holder, now.Add(dur).UnixMicro(), now.UnixMicro()}
	if d.pg {
		q = `INSERT INTO lease (name, holder, until_us) VALUES ('detector', ?, ` + pgNowMicros + ` + ?::bigint)
		ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_us = excluded.until_us
		WHERE lease.holder = excluded.holder OR lease.until_us < ` + pgNowMicros
		args = []any{holder, dur.Microseconds()}
	}
	res, err := d.sql.Exec(q, args...)
	if err != nil {
		return false, d.wrap(err)
	}
	n, err := res.RowsAffected()
	return n == 1, d.wrap(err)
}

// pgNowMicros is the database's clock in microseconds since the epoch.
const pgNowMicros = `(extract(epoch from clock_timestamp()) * 1000000)::bigint`

func (d *db) release(holder string) error {
	_, err := d.sql.Exec(`DELETE FROM lease WHERE name = 'detector' AND holder = ?`, holder)
	return d.wrap(err)
}
