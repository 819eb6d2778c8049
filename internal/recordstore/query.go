package recordstore

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
)

// Query selects stored records; empty fields match everything. Results come
// oldest first (newest first with Newest), Limit at a time; Next in the
// answer continues after the last.
type Query struct {
	DecisionID string
	RequestID  string
	// Agent is an agent id or a SPIFFE ID.
	Agent     string
	Tenant    string
	Operation string
	// Outcome is "allowed", "denied" or "".
	Outcome string
	// Reason is a reason code; it matches the record's first (primary)
	// reason.
	Reason       string
	Log          string
	Since, Until time.Time
	// Limit is at most MaxLimit; 0 means DefaultLimit.
	Limit int
	// After is the Next of a previous page (of a query with the same
	// order).
	After string
	// Newest orders the newest record first. The same indexes serve both
	// orders: SQLite and PostgreSQL read a B-tree backwards.
	Newest bool
}

// Page sizes.
const (
	DefaultLimit = 100
	MaxLimit     = 1000
)

// Stored is one stored record.
type Stored struct {
	Log   string `json:"log"`
	Index uint64 `json:"index"`
	// Line is the record exactly as the replica wrote it (its Merkle leaf).
	Line   string              `json:"line"`
	Record *decisionlog.Record `json:"record"`
}

// Page is one page of results.
type Page struct {
	Records []Stored `json:"records"`
	// Next continues the query after this page; "" when there is no more.
	Next string `json:"next,omitempty"`
}

// ErrBadQuery marks a query that cannot run (bad cursor, limit, outcome).
var ErrBadQuery = errors.New("bad query")

// Find runs q. Every filter is an indexed column; the order (time, log, seq)
// makes pages stable while records arrive.
func (s *Store) Find(ctx context.Context, q Query) (*Page, error) {
	if q.Limit < 0 || q.Limit > MaxLimit {
		return nil, fmt.Errorf("%w: limit %d outside 0..%d", ErrBadQuery, q.Limit, MaxLimit)
	}
	if q.Limit == 0 {
		q.Limit = DefaultLimit
	}
	var where []string
	var args []any
	eq := func(col, v string) {
		if v != "" {
			where = append(where, col+" = ?")
			args = append(args, v)
		}
	}
	eq("decision_id", q.DecisionID)
	eq("request_id", q.RequestID)
	eq("tenant", q.Tenant)
	eq("operation", q.Operation)
	eq("reason", q.Reason)
	eq("log", q.Log)
	if q.Agent != "" {
		if strings.HasPrefix(q.Agent, "spiffe://") {
			eq("spiffe_id", q.Agent)
		} else {
			eq("agent_id", q.Agent)
		}
	}
	switch q.Outcome {
	case "":
	case "allowed", "denied":
		where = append(where, "allowed = ?", "kind = ?")
		args = append(args, map[string]int64{"allowed": 1, "denied": 0}[q.Outcome], decisionlog.KindDecision)
	default:
		return nil, fmt.Errorf("%w: outcome %q is not allowed or denied", ErrBadQuery, q.Outcome)
	}
	if !q.Since.IsZero() {
		where = append(where, "time_us >= ?")
		args = append(args, micros(q.Since))
	}
	if !q.Until.IsZero() {
		where = append(where, "time_us <= ?")
		args = append(args, micros(q.Until))
	}
	if q.After != "" {
		t, log, seq, err := parseCursor(q.After)
		if err != nil {
			return nil, err
		}
		cmp := ">"
		if q.Newest {
			cmp = "<"
		}
		where = append(where, "(time_us "+cmp+" ? OR (time_us = ? AND (log "+cmp+" ? OR (log = ? AND idx "+cmp+" ?))))")
		args = append(args, t, t, log, log, seq)
	}
	sqlText := `SELECT log, idx, time_us, line FROM records`
	if len(where) > 0 {
		sqlText += " WHERE " + strings.Join(where, " AND ") //nolint:gosec // fixed fragments and ? placeholders; the values are arguments
	}
	if q.Newest {
		sqlText += " ORDER BY time_us DESC, log DESC, idx DESC LIMIT ?"
	} else {
		sqlText += " ORDER BY time_us, log, idx LIMIT ?"
	}
	args = append(args, q.Limit+1)
	rows, err := s.db.QueryContext(ctx, sqlText, args...)
	if err != nil {
		return nil, s.wrap(err)
	}
	defer rows.Close()
	p := &Page{Records: []Stored{}}
	var lastT int64
	for rows.Next() {
		var st Stored
		var idx, t int64
		if err := rows.Scan(&st.Log, &idx, &t, &st.Line); err != nil {
			return nil, s.wrap(err)
		}
		if len(p.Records) == q.Limit {
			last := p.Records[len(p.Records)-1]
			p.Next = fmt.Sprintf("%d.%d.%s", lastT, last.Index, encodeLog(last.Log))
			break
		}
		st.Index = uint64(idx)
		// Stored records were verified on the way in.
		if st.Record, err = decisionlog.DecodeRecordLine([]byte(st.Line)); err != nil {
			return nil, s.wrap(fmt.Errorf("stored record %s/%d: %w", st.Log, st.Index, err))
		}
		lastT = t
		p.Records = append(p.Records, st)
	}
	return p, s.wrap(rows.Err())
}

func encodeLog(log string) string { return base64.RawURLEncoding.EncodeToString([]byte(log)) }

func parseCursor(c string) (t int64, log string, seq int64, err error) {
	parts := strings.SplitN(c, ".", 3)
	bad := fmt.Errorf("%w: cursor %q", ErrBadQuery, c)
	if len(parts) != 3 {
		return 0, "", 0, bad
	}
	if t, err = strconv.ParseInt(parts[0], 10, 64); err != nil {
		return 0, "", 0, bad
	}
	if seq, err = strconv.ParseInt(parts[1], 10, 64); err != nil {
		return 0, "", 0, bad
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return 0, "", 0, bad
	}
	return t, string(b), seq, nil
}

// VerifyResult is the outcome of re-verifying a stored log.
type VerifyResult struct {
	Log     string   `json:"log"`
	Records uint64   `json:"records"`
	Root    string   `json:"root"`
	Problem *Refusal `json:"problem,omitempty"`
}

// Verify re-checks every stored batch of log from index 0 with trusted keys
// (nil: the keys pinned when the log first shipped), as audit verify does
// for a log directory: every checkpoint's signature, every batch's records,
// and that each checkpoint's root is the tree grown by its batch.
func (s *Store) Verify(ctx context.Context, log string, trusted decisionlog.KeySet) (*VerifyResult, error) {
	if trusted == nil {
		var keys string
		if err := s.db.QueryRowContext(ctx, `SELECT first_keys FROM logs WHERE name = ?`, log).Scan(&keys); err != nil {
			return nil, s.wrap(fmt.Errorf("log %q: %w", log, err))
		}
		var err error
		if trusted, err = decisionlog.ParseKeySet([]byte(keys)); err != nil {
			return nil, s.wrap(err)
		}
	}
	cps, err := s.db.QueryContext(ctx, `SELECT size, signed FROM checkpoints WHERE log = ? ORDER BY size`, log)
	if err != nil {
		return nil, s.wrap(err)
	}
	type cp struct {
		size   uint64
		signed string
	}
	var all []cp
	for cps.Next() {
		var c cp
		var size int64
		if err := cps.Scan(&size, &c.signed); err != nil {
			cps.Close()
			return nil, s.wrap(err)
		}
		c.size = uint64(size)
		all = append(all, c)
	}
	cps.Close()
	rows, err := s.db.QueryContext(ctx, `SELECT idx, line FROM records WHERE log = ? ORDER BY idx`, log)
	if err != nil {
		return nil, s.wrap(err)
	}
	defer rows.Close()
	st := &logState{Cursor: Cursor{Log: log}, tree: decisionlog.NewTree(), keys: decisionlog.KeySet{}}
	for kid, k := range trusted {
		st.keys[kid] = k
	}
	res := &VerifyResult{Log: log}
	var g Group
	next := 0
	for rows.Next() {
		var idx int64
		var line string
		if err := rows.Scan(&idx, &line); err != nil {
			return nil, s.wrap(err)
		}
		if uint64(idx) != st.Size+uint64(len(g.Records)) {
			res.Problem = &Refusal{st.Size + uint64(len(g.Records)), RefusedGap, fmt.Sprintf("stored record %d follows %d", idx, st.Size+uint64(len(g.Records))-1)}
			return res, nil
		}
		g.Records = append(g.Records, line)
		if next < len(all) && uint64(idx)+1 == all[next].size {
			g.Checkpoint = all[next].signed
			if _, _, ref := verifyGroup(st, g); ref != nil {
				res.Problem = ref
				return res, nil
			}
			res.Records += uint64(len(g.Records))
			g, next = Group{}, next+1
		}
	}
	if err := rows.Err(); err != nil {
		return nil, s.wrap(err)
	}
	if len(g.Records) > 0 || next != len(all) {
		res.Problem = &Refusal{st.Size, RefusedCheckpoint, "stored records and checkpoints do not line up"}
		return res, nil
	}
	res.Root = st.Root
	return res, nil
}
