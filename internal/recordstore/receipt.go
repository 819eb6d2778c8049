package recordstore

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
)

// ErrNotStored means no stored record has the log and index asked for.
var ErrNotStored = errors.New("no such stored record")

// Proven is a stored record verified again from the store's own rows: the
// signed checkpoint that ends its batch (checked with the log's keys), the
// batch's records (their root is the checkpoint's batch root) and the
// record's inclusion proof in that batch, as the compact receipt
// (x-agent-receipt) that `agentauthz receipt verify` checks.
type Proven struct {
	Log        string
	Index      uint64
	RecordHash decisionlog.Hash
	Checkpoint decisionlog.Checkpoint
	// Signed is the checkpoint's signed note.
	Signed string
	// Receipt is the compact receipt, verified with Keys before it is
	// returned.
	Receipt string
	// Keys are the log's public keys (the pinned ones and rotations
	// recorded in the log), as note verifier keys, one per line.
	Keys string
}

// Prove verifies the stored record index of log on the spot and returns its
// receipt. A record whose batch or checkpoint does not verify is an error
// naming what failed; the store only holds verified batches, so that means
// its rows were changed after they were stored.
func (s *Store) Prove(ctx context.Context, log string, index uint64) (*Proven, error) {
	var keysJSON string
	err := s.db.QueryRowContext(ctx, `SELECT keys FROM logs WHERE name = ?`, log).Scan(&keysJSON)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: log %q", ErrNotStored, log)
	}
	if err != nil {
		return nil, s.wrap(err)
	}
	keys, err := decisionlog.ParseKeySet([]byte(keysJSON))
	if err != nil {
		return nil, fmt.Errorf("log %q: stored keys: %w", log, err)
	}
	var size int64
	var signed string
	err = s.db.QueryRowContext(ctx, `SELECT size, signed FROM checkpoints WHERE log = ? AND size > ? ORDER BY size LIMIT 1`,
		log, int64(index)).Scan(&size, &signed)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: record %d of log %q", ErrNotStored, index, log)
	}
	if err != nil {
		return nil, s.wrap(err)
	}
	vs, err := decisionlog.NoteVerifiers(log, keys)
	if err != nil {
		return nil, err
	}
	cp, _, err := decisionlog.OpenCheckpoint([]byte(signed), vs)
	if err != nil {
		return nil, fmt.Errorf("the checkpoint of tree size %d: %w", size, err)
	}
	if cp.Origin != log || cp.Size != uint64(size) || cp.BatchStart > index {
		return nil, fmt.Errorf("the checkpoint of tree size %d (batch from %d) does not cover record %d of log %q", cp.Size, cp.BatchStart, index, log)
	}
	rows, err := s.db.QueryContext(ctx, `SELECT idx, line FROM records WHERE log = ? AND idx >= ? AND idx < ? ORDER BY idx`,
		log, int64(cp.BatchStart), int64(cp.Size))
	if err != nil {
		return nil, s.wrap(err)
	}
	defer rows.Close()
	var lines [][]byte
	for rows.Next() {
		var idx int64
		var line string
		if err := rows.Scan(&idx, &line); err != nil {
			return nil, s.wrap(err)
		}
		lines = append(lines, []byte(line))
	}
	if err := rows.Err(); err != nil {
		return nil, s.wrap(err)
	}
	// The batch's records against the signed batch root: VerifyBatch checks
	// the indices, the log and the root.
	if _, err := decisionlog.VerifyBatch(lines, []byte(signed), vs); err != nil {
		return nil, fmt.Errorf("the stored batch %d..%d: %w", cp.BatchStart, cp.Size-1, err)
	}
	leaves := make([]decisionlog.Hash, len(lines))
	for i, l := range lines {
		leaves[i] = decisionlog.LeafHash(l)
	}
	pos := index - cp.BatchStart
	path, err := decisionlog.InclusionProof(leaves, pos, uint64(len(leaves)))
	if err != nil {
		return nil, err
	}
	keyHash, sig, err := noteSignature(signed)
	if err != nil {
		return nil, err
	}
	r := &decisionlog.CompactReceipt{Checkpoint: cp, Index: index, RecordHash: leaves[pos], Proof: path, KeyHash: keyHash, Signature: sig}
	enc := r.Encode()
	// The receipt as a user's verifier will see it: parsed from its
	// encoding and checked with the log's keys.
	if _, err := decisionlog.VerifyReceipt(enc, keys); err != nil {
		return nil, err
	}
	var vks []string
	for _, kid := range keys.KIDs() {
		vk, err := decisionlog.NoteVerifierKey(log, keys[kid])
		if err != nil {
			return nil, err
		}
		vks = append(vks, vk)
	}
	return &Proven{Log: log, Index: index, RecordHash: leaves[pos], Checkpoint: cp, Signed: signed, Receipt: enc,
		Keys: strings.Join(vks, "\n")}, nil
}

// noteSignature returns the key hash and Ed25519 signature of a signed
// note's one signature line ("— <name> <base64(key hash ‖ signature)>").
func noteSignature(signed string) (uint32, []byte, error) {
	body := strings.TrimSuffix(signed, "\n")
	line := body[strings.LastIndexByte(body, '\n')+1:]
	b, err := base64.StdEncoding.DecodeString(line[strings.LastIndexByte(line, ' ')+1:])
	if err != nil || len(b) != 4+64 {
		return 0, nil, fmt.Errorf("%w: signature line %.80q", decisionlog.ErrCheckpoint, line)
	}
	return binary.BigEndian.Uint32(b[:4]), b[4:], nil
}
