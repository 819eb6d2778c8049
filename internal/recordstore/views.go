package recordstore

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
)

// Bucket is one interval of a histogram of decisions.
type Bucket struct {
	Start     time.Time `json:"start"`
	Decisions int64     `json:"decisions"`
	Denials   int64     `json:"denials"`
}

// MaxBuckets bounds a histogram.
const MaxBuckets = 500

// Histogram counts the decisions (and the denials among them) from since
// for n buckets of width step, of one agent (its SPIFFE ID) or the whole
// fleet (""), from the minute rollups: since is on a minute and step a
// whole number of minutes. Every bucket is returned, empty ones too.
func (s *Store) Histogram(ctx context.Context, agent string, since time.Time, step time.Duration, n int) ([]Bucket, error) {
	if n <= 0 || n > MaxBuckets || step < time.Minute || step%time.Minute != 0 || micros(since)%60e6 != 0 {
		return nil, fmt.Errorf("%w: %d buckets of %v from %v (want 1..%d of whole minutes, from a minute)", ErrBadQuery, n, step, since, MaxBuckets)
	}
	from, width := micros(since), step.Microseconds()
	table, col, where := "rollup_fleet_minute", "minute_us", ""
	args := []any{from, width, from, from + width*int64(n)}
	switch {
	case strings.HasPrefix(agent, "spiffe://"):
		table, where = "rollup_agent_minute", " AND spiffe_id = ?"
		args = append(args, agent)
	case agent != "":
		return nil, fmt.Errorf("%w: an agent's histogram takes its SPIFFE ID, not %q", ErrBadQuery, agent)
	case step%time.Hour == 0 && from%time.Hour.Microseconds() == 0:
		table, col = "rollup_fleet_hour", "hour_us" // 60 times fewer rows
	}
	//nolint:gosec // built from fixed fragments and ? placeholders; the values are arguments
	rows, err := s.db.QueryContext(ctx, `SELECT (`+col+` - ?) / ? AS b, CAST(SUM(n) AS BIGINT), CAST(SUM(n - allowed) AS BIGINT) FROM `+table+
		` WHERE `+col+` >= ? AND `+col+` < ?`+where+` GROUP BY b`, args...)
	if err != nil {
		return nil, s.wrap(err)
	}
	defer rows.Close()
	out := make([]Bucket, n)
	for i := range out {
		out[i].Start = since.Add(time.Duration(i) * step).UTC()
	}
	for rows.Next() {
		var b, count, denied int64
		if err := rows.Scan(&b, &count, &denied); err != nil {
			return nil, s.wrap(err)
		}
		if b >= 0 && b < int64(n) {
			out[b].Decisions, out[b].Denials = count, denied
		}
	}
	return out, s.wrap(rows.Err())
}

// Sizes returns how many records of each log are stored: a tail compares
// two of them to find what arrived in between.
func (s *Store) Sizes(ctx context.Context) (map[string]uint64, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name, size FROM logs`)
	if err != nil {
		return nil, s.wrap(err)
	}
	defer rows.Close()
	out := map[string]uint64{}
	for rows.Next() {
		var name string
		var size int64
		if err := rows.Scan(&name, &size); err != nil {
			return nil, s.wrap(err)
		}
		out[name] = uint64(size)
	}
	return out, s.wrap(rows.Err())
}

// Range returns the records of log with from <= index < to, newest first,
// at most limit of them: what a tail shows of a log that grew from from to
// to records.
func (s *Store) Range(ctx context.Context, log string, from, to uint64, limit int) ([]Stored, error) {
	if limit <= 0 || limit > MaxLimit {
		return nil, fmt.Errorf("%w: limit %d outside 1..%d", ErrBadQuery, limit, MaxLimit)
	}
	rows, err := s.db.QueryContext(ctx, `SELECT idx, line FROM records WHERE log = ? AND idx >= ? AND idx < ? ORDER BY idx DESC LIMIT ?`,
		log, int64(from), int64(to), limit)
	if err != nil {
		return nil, s.wrap(err)
	}
	defer rows.Close()
	var out []Stored
	for rows.Next() {
		st := Stored{Log: log}
		var idx int64
		if err := rows.Scan(&idx, &st.Line); err != nil {
			return nil, s.wrap(err)
		}
		st.Index = uint64(idx)
		if st.Record, err = decisionlog.DecodeRecordLine([]byte(st.Line)); err != nil {
			return nil, s.wrap(fmt.Errorf("stored record %s/%d: %w", log, st.Index, err))
		}
		out = append(out, st)
	}
	return out, s.wrap(rows.Err())
}

// Count is one group of an aggregate.
type Count struct {
	Key     string `json:"key"`
	N       int64  `json:"n"`
	Allowed int64  `json:"allowed"`
}

// DenialsByReason counts the denied decisions since since (on an hour) by
// their primary reason, most first, from the hourly rollup.
func (s *Store) DenialsByReason(ctx context.Context, since time.Time) ([]Count, error) {
	return s.counts(ctx, `SELECT reason, CAST(SUM(n - allowed) AS BIGINT) AS d, CAST(SUM(allowed) AS BIGINT) FROM rollup_fleet_hour
		WHERE hour_us >= ? GROUP BY reason HAVING SUM(n - allowed) > 0 ORDER BY d DESC, reason LIMIT ?`, since, time.Hour, 100)
}

// Operations counts the decisions since since (on an hour) by operation,
// most first, at most limit of them (Allowed: how many were allowed).
func (s *Store) Operations(ctx context.Context, since time.Time, limit int) ([]Count, error) {
	return s.counts(ctx, `SELECT operation, CAST(SUM(n) AS BIGINT) AS d, CAST(SUM(allowed) AS BIGINT) FROM rollup_fleet_hour
		WHERE hour_us >= ? GROUP BY operation ORDER BY d DESC, operation LIMIT ?`, since, time.Hour, limit)
}

// TopAgents counts the decisions since since (on a UTC day) by agent
// (SPIFFE ID), most first, at most limit of them (Allowed: how many were
// allowed), from the window that starts then (rollup.go).
func (s *Store) TopAgents(ctx context.Context, since time.Time, limit int) ([]Count, error) {
	if limit <= 0 || limit > 100000 {
		return nil, fmt.Errorf("%w: limit %d", ErrBadQuery, limit)
	}
	var out []Count
	err := s.windowQuery(ctx, since, `SELECT c.spiffe_id, CAST(SUM(c.n) AS BIGINT) AS d, CAST(SUM(c.allowed) AS BIGINT)
		FROM rollup_window_counts c JOIN rollup_windows w ON w.id = c.window_id WHERE w.start_day_us = ?
		GROUP BY c.spiffe_id ORDER BY d DESC, c.spiffe_id LIMIT ?`, []any{limit}, func(rows *sql.Rows) error {
		var c Count
		if err := rows.Scan(&c.Key, &c.N, &c.Allowed); err != nil {
			return err
		}
		out = append(out, c)
		return nil
	})
	return out, err
}

// counts runs an aggregate over a rollup (q: from ?, LIMIT ?) from since,
// which must be on a multiple of grain.
func (s *Store) counts(ctx context.Context, q string, since time.Time, grain time.Duration, limit int) ([]Count, error) {
	if micros(since)%grain.Microseconds() != 0 {
		return nil, fmt.Errorf("%w: from %v, not on a multiple of %v", ErrBadQuery, since, grain)
	}
	if limit <= 0 || limit > 100000 {
		return nil, fmt.Errorf("%w: limit %d", ErrBadQuery, limit)
	}
	rows, err := s.db.QueryContext(ctx, q, micros(since), limit)
	if err != nil {
		return nil, s.wrap(err)
	}
	defer rows.Close()
	var out []Count
	for rows.Next() {
		var c Count
		if err := rows.Scan(&c.Key, &c.N, &c.Allowed); err != nil {
			return nil, s.wrap(err)
		}
		out = append(out, c)
	}
	return out, s.wrap(rows.Err())
}

// AgentOperation is one cell of the agents × operations matrix.
type AgentOperation struct {
	SPIFFEID, Tenant, Agent, Operation string
	Decisions, Allowed                 int64
}

// MaxMatrixAgents bounds the agents of one AgentOperations call.
const MaxMatrixAgents = 500

// AgentOperations counts the decisions since since (on a UTC day) of each
// of agents (SPIFFE IDs) per operation, from the window that starts then.
func (s *Store) AgentOperations(ctx context.Context, since time.Time, agents []string) ([]AgentOperation, error) {
	if len(agents) > MaxMatrixAgents {
		return nil, fmt.Errorf("%w: %d agents (at most %d)", ErrBadQuery, len(agents), MaxMatrixAgents)
	}
	if len(agents) == 0 {
		return nil, nil
	}
	args := make([]any, len(agents))
	for i, a := range agents {
		args[i] = a
	}
	var out []AgentOperation
	//nolint:gosec // built from fixed fragments and ? placeholders; the values are arguments
	err := s.windowQuery(ctx, since, `SELECT c.spiffe_id, c.tenant, c.agent_id, c.operation, c.n, c.allowed
		FROM rollup_window_counts c JOIN rollup_windows w ON w.id = c.window_id WHERE w.start_day_us = ?
		AND c.spiffe_id IN (?`+strings.Repeat(", ?", len(agents)-1)+`) ORDER BY c.spiffe_id, c.operation, c.tenant, c.agent_id`, args,
		func(rows *sql.Rows) error {
			var c AgentOperation
			if err := rows.Scan(&c.SPIFFEID, &c.Tenant, &c.Agent, &c.Operation, &c.Decisions, &c.Allowed); err != nil {
				return err
			}
			out = append(out, c)
			return nil
		})
	return out, err
}

// AfterRevocation is what the decisions of one agent say about its
// revocation at a time: on each log, its first decision denied for one of
// reasons at or after then, and how many of its decisions were allowed
// after grace past then.
//
// It reads records_by_spiffe_outcome per log (in one statement): the
// agent's denials on that log from at on, in time order, up to the first
// for one of reasons, and a count of the index range of its allowed
// decisions after grace. A revoked agent that keeps calling, and is denied,
// costs two seeks per log, not a read of every call. (Only decisions are
// allowed, and only decisions carry a reason, so no kind is checked.)
func (s *Store) AfterRevocation(ctx context.Context, spiffeID string, at time.Time, grace time.Duration, reasons ...string) (map[string]time.Time, int64, error) {
	if len(reasons) == 0 || len(reasons) > 8 {
		return nil, 0, fmt.Errorf("%w: %d reasons", ErrBadQuery, len(reasons))
	}
	args := []any{spiffeID, micros(at)}
	for _, r := range reasons {
		args = append(args, r)
	}
	args = append(args, spiffeID, micros(at.Add(grace)))
	rows, err := s.db.QueryContext(ctx, afterRevocationSQL(len(reasons)), args...)
	if err != nil {
		return nil, 0, s.wrap(err)
	}
	defer rows.Close()
	first := map[string]time.Time{}
	var allowed int64
	for rows.Next() {
		var log string
		var t sql.NullInt64
		var n int64
		if err := rows.Scan(&log, &t, &n); err != nil {
			return nil, 0, s.wrap(err)
		}
		if t.Valid {
			first[log] = time.UnixMicro(t.Int64).UTC()
		}
		allowed += n
	}
	return first, allowed, s.wrap(rows.Err())
}

// afterRevocationSQL is AfterRevocation's statement for n reasons; its
// arguments: the SPIFFE ID, the revocation's time, the reasons, the SPIFFE
// ID, the end of the grace.
func afterRevocationSQL(n int) string {
	return `SELECT name,
		(SELECT time_us FROM records WHERE spiffe_id = ? AND allowed = 0 AND log = logs.name AND time_us >= ?
			AND reason IN (?` + strings.Repeat(", ?", n-1) + `) ORDER BY time_us LIMIT 1),
		(SELECT COUNT(*) FROM records WHERE spiffe_id = ? AND allowed = 1 AND log = logs.name AND time_us > ?)
		FROM logs`
}
