package recordstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
)

// Refusal reasons for shipped records, the "reason" label of
// agentauthz_control_records_refused_total.
const (
	RefusedMalformed    = "malformed"
	RefusedSignature    = "bad_signature"
	RefusedUnknownKey   = "unknown_key"
	RefusedGap          = "gap"
	RefusedChain        = "chain"
	RefusedWrongLog     = "wrong_log"
	RefusedConflict     = "conflict"
	RefusedKeysMismatch = "keys_mismatch"
)

// Refusal is a shipped record the store would not take.
type Refusal struct {
	Seq    uint64 `json:"seq"`
	Reason string `json:"reason"`
	Detail string `json:"detail"`
}

func (r *Refusal) Error() string {
	return fmt.Sprintf("record %d refused (%s): %s", r.Seq, r.Reason, r.Detail)
}

// Cursor is how far a log is stored.
type Cursor struct {
	Log  string `json:"log"`
	Seq  uint64 `json:"seq"`  // last stored seq; 0: nothing yet
	Hash string `json:"hash"` // its chain hash (decisionlog.ChainHash)
}

// Batch is a run of consecutive records of one log, as its replica ships
// them.
type Batch struct {
	Log string
	// Keys are the log's public keys as the replica reports them. They are
	// pinned on the log's first batch (the caller has authenticated the
	// replica); later, only key rotations recorded in the log itself
	// change them.
	Keys decisionlog.KeySet
	// Head is the replica's newest seq, for the lag metric.
	Head uint64
	// Records are compact JWS lines in log order.
	Records []string
}

// Result is what Append stored.
type Result struct {
	Cursor
	Stored     int      `json:"stored"`     // new records
	Duplicates int      `json:"duplicates"` // already stored, identical
	Refused    *Refusal `json:"refused,omitempty"`
}

// logState is a log's verification state: the next record must have seq
// LastSeq+1, prev LastHash, and be signed by a key in Keys.
type logState struct {
	Cursor
	Keys decisionlog.KeySet
}

// verifyNext checks one shipped record against st and advances it. This is
// the only place that knows the record format's chain rules; it follows
// key-rotation records, which the old key signs.
func verifyNext(st *logState, jws string) (*decisionlog.Record, *Refusal) {
	rec, err := decisionlog.VerifyRecord(jws, st.Keys)
	seq := st.Seq + 1
	if rec != nil {
		seq = rec.Seq
	}
	switch {
	case errors.Is(err, decisionlog.ErrUnknownKey):
		return nil, &Refusal{seq, RefusedUnknownKey, err.Error()}
	case errors.Is(err, decisionlog.ErrBadSignature):
		return nil, &Refusal{seq, RefusedSignature, err.Error()}
	case err != nil:
		return nil, &Refusal{seq, RefusedMalformed, err.Error()}
	}
	switch {
	case rec.Log != st.Log:
		return nil, &Refusal{seq, RefusedWrongLog, fmt.Sprintf("record of log %q shipped as log %q", rec.Log, st.Log)}
	case rec.Seq != st.Seq+1:
		return nil, &Refusal{seq, RefusedGap, fmt.Sprintf("seq %d after %d", rec.Seq, st.Seq)}
	case rec.Prev != st.Hash:
		return nil, &Refusal{seq, RefusedChain, "prev does not match the stored record before it"}
	}
	if rec.Kind == decisionlog.KindKeyRotation && rec.KeyRotation != nil {
		if k, err := decodeKey(rec.KeyRotation.NewKey); err == nil {
			st.Keys = decisionlog.KeySet{}
			st.Keys.Add(k)
		}
	}
	st.Seq, st.Hash = rec.Seq, decisionlog.ChainHash(jws)
	return rec, nil
}

// Append verifies b's records in order and stores every one up to the first
// that fails, in one transaction that holds the log's lock. A record already
// stored is skipped if identical (at-least-once shipping) and refused as a
// conflict otherwise. Nothing stored is ever changed. A refusal is recorded
// in the refusals table and returned in Result.Refused, with the records
// before it stored.
func (s *Store) Append(ctx context.Context, b Batch) (*Result, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, s.wrap(err)
	}
	defer tx.Rollback()
	st, err := s.lockLog(ctx, tx, b)
	if err != nil {
		return nil, err
	}
	res := &Result{}
	now := time.Now()
	insert, err := tx.PrepareContext(ctx, s.q(`INSERT INTO records (log, seq, time_us, kind, decision_id, request_id, tenant, agent_id, spiffe_id,
		operation, allowed, reason, chain_hash, jws) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`))
	if err != nil {
		return nil, s.wrap(err)
	}
	defer insert.Close()
	for _, jws := range b.Records {
		if d, err := decisionlog.DecodeRecord(jws); err == nil && d.Seq <= st.Seq {
			// At-least-once: the replica may ship again what was stored.
			var h string
			err := tx.QueryRowContext(ctx, s.q(`SELECT chain_hash FROM records WHERE log = ? AND seq = ?`), b.Log, d.Seq).Scan(&h)
			if err == nil && h == decisionlog.ChainHash(jws) {
				res.Duplicates++
				continue
			}
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				return nil, s.wrap(err)
			}
			res.Refused = &Refusal{d.Seq, RefusedConflict, "another record with this seq is stored for this log"}
			break
		}
		rec, ref := verifyNext(st, jws)
		if ref != nil {
			res.Refused = ref
			break
		}
		allowed, reason := int64(0), ""
		if rec.Decision.Allowed {
			allowed = 1
		}
		if len(rec.Decision.Reasons) > 0 {
			reason = rec.Decision.Reasons[0]
		}
		kind := rec.Kind
		if kind == "" {
			kind = decisionlog.KindDecision
		}
		if _, err := insert.ExecContext(ctx, b.Log, int64(rec.Seq), micros(rec.Time), kind, rec.DecisionID, rec.Request.ID, rec.Agent.Tenant,
			rec.Agent.ID, rec.Agent.SPIFFEID, rec.Request.Operation, allowed, reason, st.Hash, jws); err != nil {
			return nil, s.wrap(fmt.Errorf("store record %d of %s: %w", rec.Seq, b.Log, err))
		}
		res.Stored++
	}
	keys, _ := json.Marshal(st.Keys.JWKS())
	head := max(b.Head, st.Seq)
	if _, err := tx.ExecContext(ctx, s.q(`UPDATE logs SET last_seq = ?, last_hash = ?, keys = ?, head_seq = ?, updated_us = ? WHERE name = ?`),
		int64(st.Seq), st.Hash, string(keys), int64(head), micros(now), b.Log); err != nil {
		return nil, s.wrap(err)
	}
	if r := res.Refused; r != nil {
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO refusals (at_us, log, seq, reason, detail) VALUES (?, ?, ?, ?, ?)`),
			micros(now), b.Log, int64(r.Seq), r.Reason, r.Detail); err != nil {
			return nil, s.wrap(err)
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, s.wrap(fmt.Errorf("commit: %w", err))
	}
	res.Cursor = st.Cursor
	return res, nil
}

// lockLog returns the log's state, locked for this transaction (SQLite:
// the write transaction; PostgreSQL: the row), creating it on first contact
// with the batch's keys pinned.
func (s *Store) lockLog(ctx context.Context, tx *sql.Tx, b Batch) (*logState, error) {
	forUpdate := ""
	if s.postgres {
		forUpdate = " FOR UPDATE"
	}
	read := func() (*logState, error) {
		st := &logState{Cursor: Cursor{Log: b.Log}}
		var seq int64
		var keys string
		err := tx.QueryRowContext(ctx, s.q(`SELECT last_seq, last_hash, keys FROM logs WHERE name = ?`+forUpdate), b.Log).Scan(&seq, &st.Hash, &keys)
		if err != nil {
			return nil, err
		}
		st.Seq = uint64(seq)
		if st.Keys, err = decisionlog.ParseKeySet([]byte(keys)); err != nil {
			return nil, fmt.Errorf("stored keys of log %s: %w", b.Log, err)
		}
		return st, nil
	}
	st, err := read()
	if errors.Is(err, sql.ErrNoRows) {
		if len(b.Keys) == 0 {
			return nil, &Refusal{1, RefusedUnknownKey, "the first batch of a log must carry its public keys"}
		}
		keys, _ := json.Marshal(b.Keys.JWKS())
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO logs (name, last_seq, last_hash, keys, first_keys, head_seq, updated_us) VALUES (?, 0, '', ?, ?, 0, ?)
			ON CONFLICT (name) DO NOTHING`), b.Log, string(keys), string(keys), micros(time.Now())); err != nil {
			return nil, s.wrap(err)
		}
		st, err = read()
	}
	if err != nil {
		return nil, s.wrap(err)
	}
	return st, nil
}

// LogCursor returns how far log is stored (zero Cursor when unknown).
func (s *Store) LogCursor(ctx context.Context, log string) (Cursor, error) {
	c := Cursor{Log: log}
	var seq int64
	err := s.db.QueryRowContext(ctx, s.q(`SELECT last_seq, last_hash FROM logs WHERE name = ?`), log).Scan(&seq, &c.Hash)
	if errors.Is(err, sql.ErrNoRows) {
		return c, nil
	}
	if err != nil {
		return c, s.wrap(err)
	}
	c.Seq = uint64(seq)
	return c, nil
}

// LogStatus is one log's shipping state.
type LogStatus struct {
	Log     string    `json:"log"`
	Stored  uint64    `json:"stored_seq"`
	Head    uint64    `json:"head_seq"` // the newest seq its replica reported
	Updated time.Time `json:"updated"`
}

// Logs lists every log's shipping state.
func (s *Store) Logs(ctx context.Context) ([]LogStatus, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name, last_seq, head_seq, updated_us FROM logs ORDER BY name`)
	if err != nil {
		return nil, s.wrap(err)
	}
	defer rows.Close()
	var out []LogStatus
	for rows.Next() {
		var l LogStatus
		var seq, head, up int64
		if err := rows.Scan(&l.Log, &seq, &head, &up); err != nil {
			return nil, s.wrap(err)
		}
		l.Stored, l.Head, l.Updated = uint64(seq), uint64(head), time.UnixMicro(up).UTC()
		out = append(out, l)
	}
	return out, s.wrap(rows.Err())
}
