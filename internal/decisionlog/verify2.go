package decisionlog

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Damage kinds of v2 logs (besides modified, missing, inserted, truncated,
// segment_name and nul_bytes, shared with v1).
const (
	// KindBadCheckpoint: a checkpoint line that does not parse, is not
	// signed by the key in force, or does not end its batch (size, batch
	// start, origin).
	KindBadCheckpoint = "bad_checkpoint"
	// KindInconsistent: a batch matches its checkpoint's batch root but
	// the tree does not match its root: records before the batch are not
	// the ones the log had signed (the tree was rewritten).
	KindInconsistent = "inconsistent"
	// KindUncovered: the log ends in records that no checkpoint covers (a
	// crash before the next Open, or records appended by someone else).
	KindUncovered = "uncovered"
)

// verifyV2 rebuilds the Merkle tree from the records and checks every
// checkpoint against it: its signature (the first by a trusted key, each
// later one by the key in force: the previous checkpoint's, or the key a
// key_rotation record covered by it announced), that it ends its batch
// (size, batch start), that the batch's records have its batch root, and
// that the tree has its root. Since every root is checked against the tree
// rebuilt from the same leaves, each checkpoint is consistent with the
// next (the log only grew). The first bad index is named.
func verifyV2(dir string, segs []string, trusted KeySet) (*Result, error) {
	res := &Result{Format: 2, Segments: len(segs)}
	src := NewReader(dir)
	defer src.Close()
	known := KeySet{}
	for k, p := range trusted {
		known[k] = p
	}
	var (
		tree     = NewTree()
		batch    []Hash
		pending  string // new_kid of the last rotation in the batch
		cur      ed25519.PublicKey
		origin   string
		lastSeg  string
		problemL line
	)
	problem := func(kind string, index uint64, format string, args ...any) (*Result, error) {
		res.Problem = &Problem{Kind: kind, Index: index, Segment: problemL.seg, Line: problemL.num, Offset: problemL.off, Detail: fmt.Sprintf(format, args...)}
		return res, nil
	}
	for {
		l, err := src.nextLine(true)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		problemL = l
		next := tree.Size() + uint64(len(batch))
		// Damage to the bytes is named at the first index no verified
		// checkpoint covers yet.
		switch {
		case l.hasNUL:
			res.Problem = &Problem{Kind: KindNULBytes, Index: tree.Size(), Segment: l.seg, Line: l.num, Offset: l.nulAt, Detail: nulDetail(l)}
			return res, nil
		case l.tooLong:
			return problem(KindModified, tree.Size(), "line longer than %d bytes", MaxRecordBytes)
		case !l.complete:
			where := "the last segment ends inside a line (torn or truncated tail)"
			if l.segIdx < len(segs)-1 {
				where = "segment ends inside a line (truncated)"
			}
			return problem(KindTruncated, tree.Size(), "%s", where)
		}
		newSeg := l.seg != lastSeg
		lastSeg = l.seg
		if strings.HasPrefix(l.text, checkpointPrefix) {
			start := tree.Size()
			if len(batch) == 0 {
				return problem(KindBadCheckpoint, start, "a checkpoint that covers no new record")
			}
			signed, _, err := decodeCheckpointLine([]byte(l.text))
			if err != nil {
				return problem(KindBadCheckpoint, start, "%v", err)
			}
			ks := trusted
			if cur != nil {
				ks = KeySet{KeyID(cur): cur}
			}
			vs, err := NoteVerifiers(origin, ks)
			if err != nil {
				return nil, err
			}
			cp, v, err := OpenCheckpoint(signed, vs)
			if err != nil {
				if cur != nil {
					err = fmt.Errorf("%w (the key in force is %s)", err, KeyID(cur))
				}
				return problem(KindBadCheckpoint, start, "%v", err)
			}
			if cp.BatchStart != start || cp.Size != next {
				return problem(KindBadCheckpoint, start, "checkpoint of records %d..%d after records %d..%d", cp.BatchStart, cp.Size-1, start, next-1)
			}
			if subtreeRoot(batch) != cp.BatchRoot {
				return problem(KindModified, start, "records %d..%d do not match their checkpoint (one of them was changed, added or removed)", start, next-1)
			}
			for _, h := range batch {
				tree.Append(h)
			}
			if tree.Root() != cp.Root {
				return problem(KindInconsistent, start, "the tree of records 0..%d does not match the checkpoint's root: records before %d differ from those the log signed", next-1, start)
			}
			if cur == nil {
				for kid, pub := range trusted {
					if noteKeyHash(origin, pub) == v.KeyHash() {
						cur = pub
						res.KeyIDs = append(res.KeyIDs, kid)
					}
				}
			}
			if pending != "" {
				cur = known[pending]
				res.KeyIDs = append(res.KeyIDs, pending)
			}
			batch, pending = batch[:0], ""
			res.Checkpoints++
			res.Records = cp.Size
			res.Root = base64.StdEncoding.EncodeToString(cp.Root[:])
			res.Checkpoint = string(signed)
			continue
		}
		h, err := parseRecordHead([]byte(l.text))
		if err != nil {
			return problem(KindModified, next, "%v", err)
		}
		switch {
		case h.index > next:
			return problem(KindMissing, next, "records %d..%d absent (the next line holds record %d)", next, h.index-1, h.index)
		case h.index < next:
			return problem(KindInserted, next, "record %d appears again after record %d", h.index, next-1)
		}
		if newSeg {
			if n, _ := parseSegmentName(l.seg); n != h.index {
				return problem(KindSegmentName, h.index, "segment named %d starts with record %d", n, h.index)
			}
		}
		if origin == "" {
			origin = h.log
		}
		if h.log != origin {
			return problem(KindModified, next, "record of log %q in log %q", h.log, origin)
		}
		if h.kind == KindKeyRotation {
			r, err := decodeRecordLine([]byte(l.text))
			if err != nil {
				return problem(KindModified, next, "%v", err)
			}
			pub, _ := rotationKey(r)
			known[r.KeyRotation.NewKeyID] = pub
			pending = r.KeyRotation.NewKeyID
		} else if !json.Valid([]byte(l.text)) {
			return problem(KindModified, next, "%v: not JSON", ErrMalformed)
		}
		batch = append(batch, LeafHash([]byte(l.text)))
	}
	if len(batch) > 0 {
		return problem(KindUncovered, tree.Size(), "records %d..%d at the end are covered by no checkpoint (a crash before the log was opened again, or records added by hand)", tree.Size(), tree.Size()+uint64(len(batch))-1)
	}
	return res, nil
}
