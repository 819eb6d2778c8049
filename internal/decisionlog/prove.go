package decisionlog

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// InclusionProofResult is what `audit prove` prints: a record, its leaf
// hash and its RFC 9162 inclusion proof in the tree of the log's latest
// checkpoint, with that signed checkpoint. Any RFC 9162 verifier checks it
// (see docs/decision-log.md).
type InclusionProofResult struct {
	Log        string          `json:"log"`
	Index      uint64          `json:"index"`
	Record     json.RawMessage `json:"record"`      // the record line
	RecordHash string          `json:"record_hash"` // hex SHA-256(0x00 ‖ record line)
	TreeSize   uint64          `json:"tree_size"`
	Root       string          `json:"root"`            // base64, as in the checkpoint
	Proof      []string        `json:"inclusion_proof"` // base64 hashes, leaf to root
	Checkpoint string          `json:"checkpoint"`      // the signed note
}

// ConsistencyProofResult is what `audit consistency` prints.
type ConsistencyProofResult struct {
	Log     string   `json:"log"`
	OldSize uint64   `json:"old_size"`
	NewSize uint64   `json:"new_size"`
	OldRoot string   `json:"old_root"` // base64
	NewRoot string   `json:"new_root"`
	Proof   []string `json:"consistency_proof"` // base64
	// The signed checkpoints of these sizes, where the log has them.
	OldCheckpoint string `json:"old_checkpoint,omitempty"`
	NewCheckpoint string `json:"new_checkpoint,omitempty"`
}

// ErrNotFound means no record has the decision id asked for.
var ErrNotFound = errors.New("no such record")

// verifiedLeaves verifies the log in dir (it must be intact and v2) and
// returns its leaf hashes, its record lines' decision ids, and its checkpoints by size.
func verifiedLeaves(dir string, trusted KeySet) (*Result, []Hash, map[uint64]string, error) {
	res, err := Verify(dir, trusted)
	if err != nil {
		return nil, nil, nil, err
	}
	if res.Problem != nil {
		return nil, nil, nil, fmt.Errorf("the log does not verify: %v", res.Problem)
	}
	if res.Format != 2 {
		return nil, nil, nil, fmt.Errorf("a v1 log has no Merkle tree: run audit verify (or audit migrate)")
	}
	var leaves []Hash
	r := NewReader(dir)
	defer r.Close()
	for uint64(len(leaves)) < res.Records {
		e, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, nil, err
		}
		leaves = append(leaves, LeafHash([]byte(e.Raw)))
	}
	cps, err := Checkpoints(dir)
	if err != nil {
		return nil, nil, nil, err
	}
	bySize := map[uint64]string{}
	for _, signed := range cps {
		if _, size, ok := strings.Cut(string(signed), "\n"); ok {
			if s, _, ok := strings.Cut(size, "\n"); ok {
				var n uint64
				if _, err := fmt.Sscan(s, &n); err == nil {
					bySize[n] = string(signed)
				}
			}
		}
	}
	return res, leaves[:res.Records], bySize, nil
}

// Prove returns the inclusion proof of the record with decisionID in the
// tree of the latest checkpoint of the verified log in dir. It holds 32
// bytes per record in memory.
func Prove(dir string, trusted KeySet, decisionID string) (*InclusionProofResult, error) {
	res, leaves, _, err := verifiedLeaves(dir, trusted)
	if err != nil {
		return nil, err
	}
	r := NewReader(dir)
	defer r.Close()
	for {
		e, err := r.Next()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: decision id %q", ErrNotFound, decisionID)
		}
		if err != nil {
			return nil, err
		}
		if e.Record.DecisionID != decisionID || e.Record.Index >= res.Records {
			continue
		}
		p, err := InclusionProof(leaves, e.Record.Index, res.Records)
		if err != nil {
			return nil, err
		}
		h := leaves[e.Record.Index]
		return &InclusionProofResult{Log: e.Record.Log, Index: e.Record.Index, Record: json.RawMessage(e.Raw),
			RecordHash: hex.EncodeToString(h[:]), TreeSize: res.Records, Root: res.Root, Proof: b64Hashes(p),
			Checkpoint: res.Checkpoint}, nil
	}
}

// Consistency returns the consistency proof between the trees of size old
// and new (0 < old ≤ new ≤ the latest checkpoint's size) of the verified
// log in dir.
func Consistency(dir string, trusted KeySet, old, new uint64) (*ConsistencyProofResult, error) {
	res, leaves, bySize, err := verifiedLeaves(dir, trusted)
	if err != nil {
		return nil, err
	}
	if old == 0 || old > new || new > res.Records {
		return nil, fmt.Errorf("sizes %d and %d: want 0 < OLD <= NEW <= %d (the latest checkpoint's size)", old, new, res.Records)
	}
	p, err := ConsistencyProof(leaves, old, new)
	if err != nil {
		return nil, err
	}
	or, nr := subtreeRoot(leaves[:old]), subtreeRoot(leaves[:new])
	origin := ""
	if cp := res.Checkpoint; cp != "" {
		origin, _, _ = strings.Cut(cp, "\n")
	}
	return &ConsistencyProofResult{Log: origin, OldSize: old, NewSize: new,
		OldRoot: base64.StdEncoding.EncodeToString(or[:]), NewRoot: base64.StdEncoding.EncodeToString(nr[:]),
		Proof: b64Hashes(p), OldCheckpoint: bySize[old], NewCheckpoint: bySize[new]}, nil
}

func b64Hashes(hs []Hash) []string {
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = base64.StdEncoding.EncodeToString(h[:])
	}
	return out
}
