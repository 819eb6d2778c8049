package decisionlog

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/mod/sumdb/note"

	"github.com/agentauthz/agentauthz/internal/jsonvalid"
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
func verifyV2(dir string, segs []string, trusted KeySet, checks lineChecks) (*Result, error) {
	res := &Result{Format: 2, Segments: len(segs)}
	src := NewReader(dir)
	src.blockLines = true
	defer src.Close()
	chunks, stop := prepareLines(src, trusted, checks)
	defer stop()
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
	for c := range chunks {
		<-c.done
		for i := range c.lines {
			pl := &c.lines[i]
			l := pl.line
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
			if pl.isCP {
				start := tree.Size()
				if len(batch) == 0 {
					return problem(KindBadCheckpoint, start, "a checkpoint that covers no new record")
				}
				if pl.err != nil {
					return problem(KindBadCheckpoint, start, "%v", pl.err)
				}
				// The signature was checked ahead under every key known
				// there; here it must be the key in force.
				var cp Checkpoint
				var signer ed25519.PublicKey
				if pl.signer != nil && pl.cp.Origin == origin && (cur == nil && trusted[KeyID(pl.signer)] != nil || cur != nil && cur.Equal(pl.signer)) {
					cp, signer = pl.cp, pl.signer
				} else {
					ks := trusted
					if cur != nil {
						ks = KeySet{KeyID(cur): cur}
					}
					vs, err := checks.verifiers(origin, ks)
					if err != nil {
						return nil, err
					}
					c, v, err := OpenCheckpoint(pl.signed, vs)
					if err != nil {
						if cur != nil {
							err = fmt.Errorf("%w (the key in force is %s)", err, KeyID(cur))
						}
						return problem(KindBadCheckpoint, start, "%v", err)
					}
					cp = c
					for _, pub := range ks {
						if noteKeyHash(origin, pub) == v.KeyHash() {
							signer = pub
						}
					}
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
					cur = signer
					res.KeyIDs = append(res.KeyIDs, KeyID(signer))
				}
				if pending != "" {
					cur = known[pending]
					res.KeyIDs = append(res.KeyIDs, pending)
				}
				batch, pending = batch[:0], ""
				res.Checkpoints++
				res.Records = cp.Size
				res.Root = base64.StdEncoding.EncodeToString(cp.Root[:])
				res.Checkpoint = string(pl.signed)
				continue
			}
			h := pl.head
			if pl.err != nil {
				return problem(KindModified, next, "%v", pl.err)
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
			if pl.rotation != nil {
				known[pl.rotation.NewKeyID] = pl.rotationKey
				pending = pl.rotation.NewKeyID
			}
			batch = append(batch, pl.leaf)
		}
		if c.err != nil {
			return nil, c.err
		}
	}
	if len(batch) > 0 {
		return problem(KindUncovered, tree.Size(), "records %d..%d at the end are covered by no checkpoint (a crash before the log was opened again, or records added by hand)", tree.Size(), tree.Size()+uint64(len(batch))-1)
	}
	return res, nil
}

// lineChecks are the checks that prepare lines ahead of the walk.
// fastChecks run on every CPU with the validator and verifier built for
// speed; TestVerifyMatchesReference runs the walk with a reference
// (encoding/json, crypto/ed25519, one chunk at a time) and requires the
// same result on every kind of damage.
type lineChecks struct {
	validJSON func([]byte) bool
	verifiers func(origin string, ks KeySet) (note.Verifiers, error)
	serial    bool // each chunk prepared by the reading goroutine, in order
}

func fastChecks() lineChecks {
	return lineChecks{validJSON: func(b []byte) bool { return jsonvalid.Valid(b, jsonvalid.StdMaxDepth) }, verifiers: NoteVerifiers}
}

// preparedLine is a line with what can be checked out of order: a record's
// head, JSON and record hash; a checkpoint's parse and signature under
// every key known at that point (the walk then requires the key in force).
type preparedLine struct {
	line
	isCP        bool
	err         error // the record or checkpoint line does not parse
	head        recordHead
	leaf        Hash
	rotation    *KeyRotation
	rotationKey ed25519.PublicKey
	signed      []byte
	cp          Checkpoint
	signer      ed25519.PublicKey // the key the signature verified under, nil if none
}

type lineChunk struct {
	lines []preparedLine
	err   error // reading stopped with an error after these lines
	done  chan struct{}
}

// chunkLines is how many lines one worker prepares at a time.
const chunkLines = 256

// prepareLines reads the log and prepares its lines in chunks on every CPU,
// handing the chunks out in order. Reading itself is sequential: it also
// collects the keys rotation records announce, so that each chunk's
// checkpoints are checked under every key known up to its end. stop ends
// the reading early.
func prepareLines(src *Reader, trusted KeySet, checks lineChecks) (<-chan *lineChunk, func()) {
	out := make(chan *lineChunk, 2*runtime.GOMAXPROCS(0))
	quit := make(chan struct{})
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	go func() {
		defer close(out)
		cand := KeySet{}
		for k, p := range trusted {
			cand[k] = p
		}
		origin := ""
		var (
			keys     KeySet
			vs       note.Verifiers
			vsOrigin string
		)
		for {
			c := &lineChunk{lines: make([]preparedLine, 0, chunkLines), done: make(chan struct{})}
			for len(c.lines) < chunkLines {
				l, err := src.nextLine(true)
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					c.err = err
					break
				}
				pl := preparedLine{line: l}
				if l.complete && !l.tooLong && !l.hasNUL && !strings.HasPrefix(l.text, checkpointPrefix) {
					if h, err := parseRecordHead(unsafe.Slice(unsafe.StringData(l.text), len(l.text))); err == nil { //nolint:gosec // read-only view of an immutable string, no copy per record
						if origin == "" {
							origin = h.log
						}
						if h.kind == KindKeyRotation {
							r, err := decodeRecordLine([]byte(l.text))
							if err == nil {
								pl.rotation = r.KeyRotation
								pl.rotationKey, _ = rotationKey(r)
								cand[r.KeyRotation.NewKeyID] = pl.rotationKey
							}
						}
					}
				}
				c.lines = append(c.lines, pl)
			}
			if len(c.lines) == 0 && c.err == nil {
				return
			}
			if len(cand) != len(keys) || origin != vsOrigin {
				// Verifiers (with their precomputed tables) are built
				// again only when a rotation announced a key.
				keys = make(KeySet, len(cand))
				for k, p := range cand {
					keys[k] = p
				}
				vs, _ = checks.verifiers(origin, keys)
				vsOrigin = origin
			}
			prep := func(c *lineChunk, origin string, keys KeySet, vs note.Verifiers) {
				var scratch []byte // 0x00 ‖ line for the record hash, reused
				for i := range c.lines {
					prepareLine(&c.lines[i], origin, keys, vs, checks.validJSON, &scratch)
				}
				close(c.done)
			}
			if checks.serial {
				prep(c, origin, keys, vs)
			} else {
				sem <- struct{}{}
				wg.Add(1)
				go func(c *lineChunk, origin string, keys KeySet, vs note.Verifiers) {
					defer func() { <-sem; wg.Done() }()
					prep(c, origin, keys, vs)
				}(c, origin, keys, vs)
			}
			select {
			case out <- c:
			case <-quit:
				return
			}
			if c.err != nil || len(c.lines) < chunkLines {
				return
			}
		}
	}()
	return out, func() {
		close(quit)
		for c := range out {
			<-c.done
		}
		wg.Wait()
	}
}

func prepareLine(pl *preparedLine, origin string, keys KeySet, vs note.Verifiers, validJSON func([]byte) bool, scratch *[]byte) {
	l := pl.line
	if !l.complete || l.tooLong || l.hasNUL {
		return
	}
	text := unsafe.Slice(unsafe.StringData(l.text), len(l.text)) //nolint:gosec // read-only view of an immutable string, no copy per record
	if strings.HasPrefix(l.text, checkpointPrefix) {
		pl.isCP = true
		pl.signed, pl.err = checkpointNote(text)
		if pl.err != nil || vs == nil {
			return
		}
		cp, v, err := OpenCheckpoint(pl.signed, vs)
		if err != nil {
			return // the walk checks it again under the key in force, for the message
		}
		pl.cp = cp
		for _, pub := range keys {
			if noteKeyHash(origin, pub) == v.KeyHash() {
				pl.signer = pub
			}
		}
		return
	}
	if pl.head, pl.err = parseRecordHead(text); pl.err != nil {
		return
	}
	if pl.head.kind == KindKeyRotation {
		if pl.rotation == nil {
			_, pl.err = decodeRecordLine(text)
			if pl.err == nil {
				pl.err = fmt.Errorf("%w: key_rotation record", ErrMalformed)
			}
		}
	} else if !validJSON(text) {
		pl.err = fmt.Errorf("%w: not JSON", ErrMalformed)
		return
	}
	pl.leaf = leafHash(scratch, text)
}
