package decisionlog

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"unsafe"

	"github.com/oasisprotocol/curve25519-voi/curve"
	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
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
		bt       Tree
		batch    []Hash
		pending  string // new_kid of the last rotation in the batch
		cur      ed25519.PublicKey
		origin   string
		lastSeg  string
		problemL line
		lastCP   []byte // the last good checkpoint's signed note
		lastRoot Hash
	)
	result := func() *Result {
		if lastCP != nil {
			res.Root = base64.StdEncoding.EncodeToString(lastRoot[:])
			res.Checkpoint = string(lastCP)
		}
		return res
	}
	problem := func(kind string, index uint64, format string, args ...any) (*Result, error) {
		res.Problem = &Problem{Kind: kind, Index: index, Segment: problemL.seg, Line: problemL.num, Offset: problemL.off, Detail: fmt.Sprintf(format, args...)}
		return result(), nil
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
				return result(), nil
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
				bt.size, bt.hashes = 0, bt.hashes[:0] // the batch's own tree, without allocating
				for _, h := range batch {
					bt.Append(h)
				}
				if bt.Root() != cp.BatchRoot {
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
				lastRoot, lastCP = cp.Root, pl.signed
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
		chunkPool.Put(c.lines[:0]) //nolint:staticcheck // a slice header per 256 lines
	}
	if len(batch) > 0 {
		return problem(KindUncovered, tree.Size(), "records %d..%d at the end are covered by no checkpoint (a crash before the log was opened again, or records added by hand)", tree.Size(), tree.Size()+uint64(len(batch))-1)
	}
	return result(), nil
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
	batch     bool // the canonical checkpoints' signatures checked in batches
}

func fastChecks() lineChecks {
	return lineChecks{validJSON: func(b []byte) bool { return jsonvalid.Valid(b, jsonvalid.StdMaxDepth) }, verifiers: NoteVerifiers, batch: true}
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
	batchKey    *batchKey         // the key a batch check is to verify sig (over text) under
	text, sig   []byte
}

type lineChunk struct {
	lines []preparedLine
	err   error // reading stopped with an error after these lines
	done  chan struct{}
}

// chunkLines is how many lines one worker prepares at a time.
const chunkLines = 256

// chunkPool recycles the chunks' lines (~100 KiB each) once walked.
var chunkPool = sync.Pool{New: func() any { return make([]preparedLine, 0, chunkLines) }}

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
			ck       *cpKeys
			vsOrigin string
		)
		for {
			c := &lineChunk{lines: chunkPool.Get().([]preparedLine), done: make(chan struct{})}
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
					if h, err := parseRecordHeadIn(unsafe.Slice(unsafe.StringData(l.text), len(l.text)), origin); err == nil { //nolint:gosec // read-only view of an immutable string, no copy per record
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
				ck = newCPKeys(origin, keys, checks)
				vsOrigin = origin
			}
			prep := func(c *lineChunk, ck *cpKeys) {
				var scratch []byte // 0x00 ‖ line for the record hash, reused
				for i := range c.lines {
					prepareLine(&c.lines[i], ck, checks.validJSON, &scratch)
				}
				ck.verifyBatch(c.lines)
				close(c.done)
			}
			if checks.serial {
				prep(c, ck)
			} else {
				sem <- struct{}{}
				wg.Add(1)
				go func(c *lineChunk, ck *cpKeys) {
					defer func() { <-sem; wg.Done() }()
					prep(c, ck)
				}(c, ck)
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

func prepareLine(pl *preparedLine, ck *cpKeys, validJSON func([]byte) bool, scratch *[]byte) {
	l := pl.line
	if !l.complete || l.tooLong || l.hasNUL {
		return
	}
	text := unsafe.Slice(unsafe.StringData(l.text), len(l.text)) //nolint:gosec // read-only view of an immutable string, no copy per record
	if strings.HasPrefix(l.text, checkpointPrefix) {
		pl.isCP = true
		pl.signed, pl.err = checkpointNote(text)
		if pl.err != nil || ck.vs == nil {
			return
		}
		if ck.batch != nil {
			if cp, k, text, sig, ok := ck.canonical(pl.signed); ok {
				pl.cp, pl.batchKey, pl.text, pl.sig = cp, k, text, sig
				return // verifyBatch checks the signature
			}
		}
		cp, v, err := OpenCheckpoint(pl.signed, ck.vs)
		if err != nil {
			return // the walk checks it again under the key in force, for the message
		}
		pl.cp = cp
		for _, pub := range ck.keys {
			if noteKeyHash(ck.origin, pub) == v.KeyHash() {
				pl.signer = pub
			}
		}
		return
	}
	if pl.head, pl.err = parseRecordHeadIn(text, ck.origin); pl.err != nil {
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

// cpKeys are the keys a chunk's checkpoints are checked under: note
// verifiers for any form of note, and for the one form the writer writes
// (canonical), the keys a batch check may use.
type cpKeys struct {
	origin string
	keys   KeySet
	vs     note.Verifiers
	batch  map[uint32]*batchKey // by note key hash; nil: no batch checks (the reference)
}

// batchKey is a key whose signatures are checked in batches.
type batchKey struct {
	pub ed25519.PublicKey
	x   *voi.ExpandedPublicKey
}

func newCPKeys(origin string, keys KeySet, checks lineChecks) *cpKeys {
	ck := &cpKeys{origin: origin, keys: keys}
	ck.vs, _ = checks.verifiers(origin, keys)
	if !checks.batch {
		return ck
	}
	ck.batch = map[uint32]*batchKey{}
	seen := map[uint32]int{}
	for _, pub := range keys {
		h := noteKeyHash(origin, pub)
		if seen[h]++; seen[h] > 1 {
			delete(ck.batch, h) // ambiguous: note.Open refuses it, one by one
			continue
		}
		if x, ok := batchableKey(pub); ok {
			ck.batch[h] = &batchKey{pub: pub, x: x}
		}
	}
	return ck
}

// batchableKey expands pub if batch verification gives crypto/ed25519's
// verdict on every signature it did not craft with a small-order
// component: pub is a canonical encoding of a point of the prime-order
// subgroup (every key ed25519.GenerateKey makes). Other keys are checked
// one by one.
func batchableKey(pub ed25519.PublicKey) (*voi.ExpandedPublicKey, bool) {
	var c curve.CompressedEdwardsY
	var p curve.EdwardsPoint
	if len(pub) != ed25519.PublicKeySize {
		return nil, false
	}
	if _, err := c.SetBytes(pub); err != nil {
		return nil, false
	}
	if _, err := p.SetCompressedY(&c); err != nil || !p.IsTorsionFree() {
		return nil, false
	}
	var back curve.CompressedEdwardsY
	back.SetEdwardsPoint(&p)
	if back != c {
		return nil, false
	}
	x, err := voi.NewExpandedPublicKey(voi.PublicKey(pub))
	return x, err == nil
}

// canonical parses a signed note written exactly as the writer writes it
// (signCheckpoint): the checkpoint text, an empty line and one signature
// line by the origin, with 4 + 64 signature bytes, by a key of ck.batch.
// On such a note note.Open's verdict is the signature check alone;
// anything else goes through note.Open.
func (ck *cpKeys) canonical(signed []byte) (Checkpoint, *batchKey, []byte, []byte, bool) {
	n := len(signed)
	if n < 2 || signed[n-1] != '\n' {
		return Checkpoint{}, nil, nil, nil, false
	}
	j := bytes.LastIndexByte(signed[:n-1], '\n')
	if j < 1 || signed[j-1] != '\n' {
		return Checkpoint{}, nil, nil, nil, false
	}
	rest, isSig := strings.CutPrefix(string(signed[j+1:n-1]), "\u2014 ")
	name, b64, cut := strings.Cut(rest, " ")
	if !isSig || !cut || name != ck.origin {
		return Checkpoint{}, nil, nil, nil, false
	}
	sig, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(sig) != 4+ed25519.SignatureSize {
		return Checkpoint{}, nil, nil, nil, false
	}
	k := ck.batch[binary.BigEndian.Uint32(sig)]
	if k == nil {
		return Checkpoint{}, nil, nil, nil, false
	}
	cp, err := ParseCheckpoint(string(signed[:j]))
	if err != nil || cp.Origin != ck.origin {
		return Checkpoint{}, nil, nil, nil, false
	}
	return cp, k, signed[:j], sig[4:], true
}

// cofactored is RFC 8032's verification equation ([8][S]B = [8]R +
// [8][k]A, as FIPS 186-5), the one batch verification checks.
var cofactored = &voi.Options{Verify: voi.VerifyOptionsFIPS_186_5}

// verifyBatch checks the signatures canonical left to a batch check, all
// at once; if the batch fails, voi checks each of them alone (with the
// same equation), so every line gets its own verdict.
func (ck *cpKeys) verifyBatch(lines []preparedLine) {
	var at []int
	for i := range lines {
		if lines[i].batchKey != nil {
			at = append(at, i)
		}
	}
	if len(at) == 0 {
		return
	}
	bv := voi.NewBatchVerifierWithCapacity(len(at))
	for _, i := range at {
		bv.AddExpandedWithOptions(lines[i].batchKey.x, lines[i].text, lines[i].sig, cofactored)
	}
	_, valid := bv.Verify(nil)
	for j, i := range at {
		pl := &lines[i]
		if valid[j] {
			pl.signer = pl.batchKey.pub
		} else {
			pl.cp = Checkpoint{}
		}
		pl.batchKey = nil
	}
}
