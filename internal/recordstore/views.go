package recordstore

import (
	"context"
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
// for n buckets of width step, of one agent (an id or a SPIFFE ID) or the
// whole fleet (""), from the time indexes. Every bucket is returned, empty
// ones too.
func (s *Store) Histogram(ctx context.Context, agent string, since time.Time, step time.Duration, n int) ([]Bucket, error) {
	if n <= 0 || n > MaxBuckets || step < time.Second {
		return nil, fmt.Errorf("%w: %d buckets of %v (want 1..%d of at least 1s)", ErrBadQuery, n, step, MaxBuckets)
	}
	from, width := micros(since), step.Microseconds()
	where := []string{"time_us >= ?", "time_us < ?", "kind = ?"}
	args := []any{from, width, from, from + width*int64(n), decisionlog.KindDecision}
	if agent != "" {
		col := "agent_id"
		if strings.HasPrefix(agent, "spiffe://") {
			col = "spiffe_id"
		}
		where = append(where, col+" = ?")
		args = append(args, agent)
	}
	//nolint:gosec // built from fixed fragments and ? placeholders; the values are arguments
	rows, err := s.db.QueryContext(ctx, `SELECT (time_us - ?) / ? AS b, COUNT(*), CAST(SUM(1 - allowed) AS BIGINT) FROM records WHERE `+
		strings.Join(where, " AND ")+` GROUP BY b`, args...)
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

// DenialsByReason counts the denied decisions since since by their primary
// reason, most first.
func (s *Store) DenialsByReason(ctx context.Context, since time.Time) ([]Count, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT reason, COUNT(*) AS n FROM records WHERE time_us >= ? AND kind = ? AND allowed = 0
		GROUP BY reason ORDER BY n DESC, reason LIMIT 100`, micros(since), decisionlog.KindDecision)
	if err != nil {
		return nil, s.wrap(err)
	}
	defer rows.Close()
	var out []Count
	for rows.Next() {
		var c Count
		if err := rows.Scan(&c.Key, &c.N); err != nil {
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

// AgentOperations counts the decisions since since per agent and
// operation, at most limit cells (the busiest agents' first); the bool
// says whether there were more.
func (s *Store) AgentOperations(ctx context.Context, since time.Time, limit int) ([]AgentOperation, bool, error) {
	if limit <= 0 || limit > 100000 {
		return nil, false, fmt.Errorf("%w: limit %d", ErrBadQuery, limit)
	}
	rows, err := s.db.QueryContext(ctx, `SELECT spiffe_id, tenant, agent_id, operation, COUNT(*) AS n, CAST(SUM(allowed) AS BIGINT)
		FROM records WHERE time_us >= ? AND kind = ? GROUP BY spiffe_id, tenant, agent_id, operation
		ORDER BY n DESC, spiffe_id, operation LIMIT ?`, micros(since), decisionlog.KindDecision, limit+1)
	if err != nil {
		return nil, false, s.wrap(err)
	}
	defer rows.Close()
	var out []AgentOperation
	for rows.Next() {
		var c AgentOperation
		if err := rows.Scan(&c.SPIFFEID, &c.Tenant, &c.Agent, &c.Operation, &c.Decisions, &c.Allowed); err != nil {
			return nil, false, s.wrap(err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, false, s.wrap(err)
	}
	if len(out) > limit {
		return out[:limit], true, nil
	}
	return out, false, nil
}

// AfterRevocation is what the decisions of one agent say about its
// revocation at a time: on each log, its first decision denied for one of
// reasons at or after then, and how many of its decisions were allowed
// after grace past then.
func (s *Store) AfterRevocation(ctx context.Context, spiffeID string, at time.Time, grace time.Duration, reasons ...string) (map[string]time.Time, int64, error) {
	if len(reasons) == 0 || len(reasons) > 8 {
		return nil, 0, fmt.Errorf("%w: %d reasons", ErrBadQuery, len(reasons))
	}
	args := []any{spiffeID, micros(at), decisionlog.KindDecision}
	for _, r := range reasons {
		args = append(args, r)
	}
	//nolint:gosec // built from fixed fragments and ? placeholders; the values are arguments
	rows, err := s.db.QueryContext(ctx, `SELECT log, MIN(time_us) FROM records WHERE spiffe_id = ? AND time_us >= ? AND kind = ? AND allowed = 0
		AND reason IN (?`+strings.Repeat(", ?", len(reasons)-1)+`) GROUP BY log`, args...)
	if err != nil {
		return nil, 0, s.wrap(err)
	}
	defer rows.Close()
	first := map[string]time.Time{}
	for rows.Next() {
		var log string
		var t int64
		if err := rows.Scan(&log, &t); err != nil {
			return nil, 0, s.wrap(err)
		}
		first[log] = time.UnixMicro(t).UTC()
	}
	if err := rows.Err(); err != nil {
		return nil, 0, s.wrap(err)
	}
	var allowed int64
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM records WHERE spiffe_id = ? AND time_us > ? AND kind = ? AND allowed = 1`,
		spiffeID, micros(at.Add(grace)), decisionlog.KindDecision).Scan(&allowed); err != nil {
		return nil, 0, s.wrap(err)
	}
	return first, allowed, nil
}
