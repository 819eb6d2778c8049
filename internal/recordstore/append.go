package recordstore

import (
	"context"
	"crypto/ed25519"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
)

// Refusal reasons for shipped records, the "reason" label of
// agentauthz_control_records_refused_total.
const (
	RefusedMalformed  = "malformed"
	RefusedSignature  = "bad_signature"
	RefusedCheckpoint = "bad_checkpoint"
	RefusedGap        = "gap"
	RefusedNotGrowth  = "not_append_only"
	RefusedWrongLog   = "wrong_log"
	RefusedConflict   = "conflict"
	RefusedNoKeys     = "no_keys"
)

// Refusal is a shipped batch the store would not take.
type Refusal struct {
	// Index is the first record index of the refused batch.
	Index  uint64 `json:"index"`
	Reason string `json:"reason"`
	Detail string `json:"detail"`
}

func (r *Refusal) Error() string {
	return fmt.Sprintf("batch at index %d refused (%s): %s", r.Index, r.Reason, r.Detail)
}

// Cursor is how far a log is stored: Size records (indices 0..Size-1) whose
// Merkle root is Root (base64, as in checkpoints).
type Cursor struct {
	Log  string `json:"log"`
	Size uint64 `json:"size"`
	Root string `json:"root"`
}

// Group is one group-commit batch as the log wrote it: its record lines
// (without LF) and the signed checkpoint that follows them.
type Group struct {
	Records    []string `json:"records"`
	Checkpoint string   `json:"checkpoint"`
}

// Shipment is consecutive batches of one log, as its replica ships them.
type Shipment struct {
	Log string
	// Keys are the log's public keys as the replica reports them. They are
	// pinned on the log's first shipment (the caller has authenticated the
	// replica); later, only key rotations recorded in the log itself add
	// to them.
	Keys decisionlog.KeySet
	// Head is the replica's newest record index + 1, for the lag metric.
	Head   uint64
	Groups []Group
}

// Result is what Append stored.
type Result struct {
	Cursor
	Stored     int      `json:"stored"`     // new records
	Duplicates int      `json:"duplicates"` // already stored, identical
	Refused    *Refusal `json:"refused,omitempty"`
}

// logState is a log's verification state: its Merkle tree so far and the
// keys its checkpoints may be signed with.
type logState struct {
	Cursor
	tree *decisionlog.Tree
	keys decisionlog.KeySet
}

// verifyGroup checks one shipped batch against st and advances it: the
// checkpoint's signature, that the records are the batch it signs (indices,
// log, batch root: decisionlog.VerifyBatch), that it starts where the
// stored log ends, and that the whole tree's root after it is the
// checkpoint's (the log only grew). It follows key-rotation records. This
// is the one place that knows the record format's rules.
func verifyGroup(st *logState, g Group) (leaves []decisionlog.Hash, recs []*decisionlog.Record, ref *Refusal) {
	if origin, _, _ := strings.Cut(g.Checkpoint, "\n"); origin != st.Log {
		return nil, nil, &Refusal{st.Size, RefusedWrongLog, fmt.Sprintf("checkpoint of log %.64q shipped as log %q", origin, st.Log)}
	}
	vs, err := decisionlog.NoteVerifiers(st.Log, st.keys)
	if err != nil {
		return nil, nil, &Refusal{st.Size, RefusedNoKeys, err.Error()}
	}
	lines := make([][]byte, len(g.Records))
	for i, r := range g.Records {
		lines[i] = []byte(r)
	}
	c, err := decisionlog.VerifyBatch(lines, []byte(g.Checkpoint), vs)
	switch {
	case errors.Is(err, decisionlog.ErrCheckpoint):
		return nil, nil, &Refusal{st.Size, RefusedCheckpoint, err.Error()}
	case errors.Is(err, decisionlog.ErrBadSignature):
		return nil, nil, &Refusal{st.Size, RefusedSignature, err.Error()}
	case err != nil:
		return nil, nil, &Refusal{st.Size, RefusedMalformed, err.Error()}
	case c.Origin != st.Log:
		return nil, nil, &Refusal{st.Size, RefusedWrongLog, fmt.Sprintf("checkpoint of log %q shipped as log %q", c.Origin, st.Log)}
	case c.BatchStart != st.Size:
		return nil, nil, &Refusal{st.Size, RefusedGap, fmt.Sprintf("batch starts at index %d, the stored log ends at %d", c.BatchStart, st.Size)}
	}
	next := st.tree.Clone()
	for i, line := range lines {
		rec, err := decisionlog.DecodeRecordLine(line)
		if err != nil {
			return nil, nil, &Refusal{st.Size, RefusedMalformed, fmt.Sprintf("record %d: %v", c.BatchStart+uint64(i), err)}
		}
		h := decisionlog.LeafHash(line)
		next.Append(h)
		leaves, recs = append(leaves, h), append(recs, rec)
	}
	if next.Root() != c.Root {
		return nil, nil, &Refusal{st.Size, RefusedNotGrowth, "the checkpoint's root is not the stored log grown by this batch"}
	}
	for _, rec := range recs {
		if rec.Kind == decisionlog.KindKeyRotation && rec.KeyRotation != nil {
			if k, err := decodeKey(rec.KeyRotation.NewKey); err == nil {
				st.keys.Add(k)
			}
		}
	}
	st.tree, st.Size, st.Root = next, c.Size, base64.StdEncoding.EncodeToString(c.Root[:])
	return leaves, recs, nil
}

func decodeKey(x string) (ed25519.PublicKey, error) {
	b, err := base64.RawURLEncoding.DecodeString(x)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, errors.New("not an Ed25519 public key")
	}
	return ed25519.PublicKey(b), nil
}

// Append verifies the shipment's batches in order and stores every one up to
// the first that fails, in one transaction that holds the log's lock. A
// batch already stored is skipped if its records are identical (shipping is
// at least once) and refused as a conflict otherwise. Nothing stored is ever
// changed. The rollups (rollup.go) count the stored records in the same
// transaction. A refusal is recorded in the refusals table and returned in
// Result.Refused, with the batches before it stored.
func (s *Store) Append(ctx context.Context, sh Shipment) (*Result, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, s.wrap(err)
	}
	defer tx.Rollback()
	st, ref, err := s.lockLog(ctx, tx, sh)
	if err != nil {
		return nil, err
	}
	res := &Result{Refused: ref}
	now := time.Now()
	insert, err := tx.PrepareContext(ctx, `INSERT INTO records (log, idx, time_us, kind, decision_id, request_id, tenant, agent_id, spiffe_id,
		operation, allowed, reason, leaf_hash, line) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return nil, s.wrap(err)
	}
	defer insert.Close()
	add := newCounts()
	for _, g := range sh.Groups {
		if res.Refused != nil {
			break
		}
		if dup, ref, err := s.duplicate(ctx, tx, st, g); err != nil {
			return nil, err
		} else if ref != nil {
			res.Refused = ref
			break
		} else if dup {
			res.Duplicates += len(g.Records)
			continue
		}
		leaves, recs, ref := verifyGroup(st, g)
		if ref != nil {
			res.Refused = ref
			break
		}
		for i, rec := range recs {
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
			at := micros(rec.Time)
			if _, err := insert.ExecContext(ctx, sh.Log, int64(rec.Index), at, kind, rec.DecisionID, rec.Request.ID,
				rec.Agent.Tenant, rec.Agent.ID, rec.Agent.SPIFFEID, rec.Request.Operation, allowed, reason,
				hex.EncodeToString(leaves[i][:]), g.Records[i]); err != nil {
				return nil, s.wrap(fmt.Errorf("store record %d of %s: %w", rec.Index, sh.Log, err))
			}
			if kind == decisionlog.KindDecision {
				add.add(at, rec.Agent.SPIFFEID, rec.Agent.Tenant, rec.Agent.ID, rec.Request.Operation, reason, allowed)
			}
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO checkpoints (log, size, signed) VALUES (?, ?, ?)`, sh.Log, int64(st.Size), g.Checkpoint); err != nil {
			return nil, s.wrap(err)
		}
		res.Stored += len(recs)
	}
	if err := s.writeCounts(ctx, tx, add); err != nil {
		return nil, err
	}
	if err := s.addToWindows(ctx, tx, add[agentDay]); err != nil {
		return nil, err
	}
	keys, _ := json.Marshal(st.keys.JWKS())
	tree, _ := json.Marshal(st.tree.Hashes())
	if _, err := tx.ExecContext(ctx, `UPDATE logs SET size = ?, root = ?, tree = ?, keys = ?, head = ?, updated_us = ? WHERE name = ?`,
		int64(st.Size), st.Root, string(tree), string(keys), int64(max(sh.Head, st.Size)), micros(now), sh.Log); err != nil {
		return nil, s.wrap(err)
	}
	if r := res.Refused; r != nil {
		if _, err := tx.ExecContext(ctx, `INSERT INTO refusals (at_us, log, idx, reason, detail) VALUES (?, ?, ?, ?, ?)`,
			micros(now), sh.Log, int64(r.Index), r.Reason, r.Detail); err != nil {
			return nil, s.wrap(err)
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, s.wrap(fmt.Errorf("commit: %w", err))
	}
	res.Cursor = st.Cursor
	return res, nil
}

// duplicate reports whether g is a batch already stored (identical), or a
// refusal when it overlaps stored records with other content.
func (s *Store) duplicate(ctx context.Context, tx *sql.Tx, st *logState, g Group) (bool, *Refusal, error) {
	if len(g.Records) == 0 {
		return false, nil, nil
	}
	first, err := decisionlog.DecodeRecordLine([]byte(g.Records[0]))
	if err != nil || first.Index >= st.Size {
		return false, nil, nil // verifyGroup says what is wrong, if anything
	}
	for i, line := range g.Records {
		var h string
		err := tx.QueryRowContext(ctx, `SELECT leaf_hash FROM records WHERE log = ? AND idx = ?`, st.Log, int64(first.Index)+int64(i)).Scan(&h)
		if errors.Is(err, sql.ErrNoRows) {
			return false, &Refusal{first.Index, RefusedGap, "a batch that overlaps the end of the stored log"}, nil
		}
		if err != nil {
			return false, nil, s.wrap(err)
		}
		leaf := decisionlog.LeafHash([]byte(line))
		if h != hex.EncodeToString(leaf[:]) {
			return false, &Refusal{first.Index, RefusedConflict, fmt.Sprintf("record %d differs from the stored one", first.Index+uint64(i))}, nil
		}
	}
	return true, nil, nil
}

// lockLog returns the log's state, locked for this transaction (SQLite:
// the write transaction; PostgreSQL: the row), creating it on first contact
// with the shipment's keys pinned.
func (s *Store) lockLog(ctx context.Context, tx *sql.Tx, sh Shipment) (*logState, *Refusal, error) {
	forUpdate := ""
	if s.postgres {
		forUpdate = " FOR UPDATE"
	}
	read := func() (*logState, error) {
		st := &logState{Cursor: Cursor{Log: sh.Log}}
		var size int64
		var tree, keys string
		err := tx.QueryRowContext(ctx, `SELECT size, root, tree, keys FROM logs WHERE name = ?`+forUpdate, sh.Log).Scan(&size, &st.Root, &tree, &keys)
		if err != nil {
			return nil, err
		}
		st.Size = uint64(size)
		var hashes [][]byte
		if err := json.Unmarshal([]byte(tree), &hashes); err != nil {
			return nil, fmt.Errorf("stored tree of log %s: %w", sh.Log, err)
		}
		if st.tree, err = decisionlog.NewTreeFromRange(st.Size, hashes); err != nil {
			return nil, fmt.Errorf("stored tree of log %s: %w", sh.Log, err)
		}
		if st.keys, err = decisionlog.ParseKeySet([]byte(keys)); err != nil {
			return nil, fmt.Errorf("stored keys of log %s: %w", sh.Log, err)
		}
		return st, nil
	}
	st, err := read()
	if errors.Is(err, sql.ErrNoRows) {
		if len(sh.Keys) == 0 {
			return nil, nil, &Refusal{0, RefusedNoKeys, "the first shipment of a log must carry its public keys"}
		}
		keys, _ := json.Marshal(sh.Keys.JWKS())
		if _, err := tx.ExecContext(ctx, `INSERT INTO logs (name, size, root, tree, keys, first_keys, head, updated_us) VALUES (?, 0, '', '[]', ?, ?, 0, ?)
			ON CONFLICT (name) DO NOTHING`, sh.Log, string(keys), string(keys), micros(time.Now())); err != nil {
			return nil, nil, s.wrap(err)
		}
		st, err = read()
	}
	if err != nil {
		return nil, nil, s.wrap(err)
	}
	return st, nil, nil
}

// LogCursor returns how far log is stored (zero Cursor when unknown).
func (s *Store) LogCursor(ctx context.Context, log string) (Cursor, error) {
	c := Cursor{Log: log}
	var size int64
	err := s.db.QueryRowContext(ctx, `SELECT size, root FROM logs WHERE name = ?`, log).Scan(&size, &c.Root)
	if errors.Is(err, sql.ErrNoRows) {
		return c, nil
	}
	if err != nil {
		return c, s.wrap(err)
	}
	c.Size = uint64(size)
	return c, nil
}

// LogStatus is one log's shipping state.
type LogStatus struct {
	Log     string    `json:"log"`
	Stored  uint64    `json:"stored"` // records stored (indices 0..stored-1)
	Head    uint64    `json:"head"`   // records its replica reported
	Updated time.Time `json:"updated"`
}

// Logs lists every log's shipping state.
func (s *Store) Logs(ctx context.Context) ([]LogStatus, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name, size, head, updated_us FROM logs ORDER BY name`)
	if err != nil {
		return nil, s.wrap(err)
	}
	defer rows.Close()
	var out []LogStatus
	for rows.Next() {
		var l LogStatus
		var size, head, up int64
		if err := rows.Scan(&l.Log, &size, &head, &up); err != nil {
			return nil, s.wrap(err)
		}
		l.Stored, l.Head, l.Updated = uint64(size), uint64(head), time.UnixMicro(up).UTC()
		out = append(out, l)
	}
	return out, s.wrap(rows.Err())
}
