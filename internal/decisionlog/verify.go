package decisionlog

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"runtime"
)

// Damage kinds reported by Verify. See docs/decision-log.md for the exact
// rules that tell them apart.
const (
	// KindModified: a record at its place in the chain does not verify
	// (bad signature, unknown or wrong key, undecodable), or its successor
	// commits to a different predecessor.
	KindModified = "modified"
	// KindMissing: records are absent: the next record that verifies
	// carries a later seq, and the expected seq appears nowhere ahead.
	KindMissing = "missing"
	// KindInserted: a line that does not belong to the chain sits between
	// two records that chain to each other, or a record re-appears.
	KindInserted = "inserted"
	// KindReordered: the expected seq appears, correctly chained, later in
	// the log than a record with a higher seq.
	KindReordered = "reordered"
	// KindTruncated: a segment ends in the middle of a record (a partial
	// last line). In the last segment this is a torn tail.
	KindTruncated = "truncated"
	// KindSegmentName: a segment's file name is not the seq of its first
	// record.
	KindSegmentName = "segment_name"
	// KindNULBytes: a NUL byte where only the unwritten padding at the end
	// of the last segment may have one: in a sealed segment, or followed by
	// data. Problem.Offset is the byte offset of that NUL.
	KindNULBytes = "nul_bytes"
)

// lookahead bounds how far Verify searches ahead to tell reordering from
// removal.
const lookahead = 4096

// Problem is the first damage Verify found.
type Problem struct {
	Kind    string `json:"kind"`
	Index   uint64 `json:"index"`         // v2: the first bad leaf index
	Seq     uint64 `json:"seq,omitempty"` // v1: the first bad sequence number
	Segment string `json:"segment"`
	Line    int    `json:"line"`
	Offset  int64  `json:"offset"` // byte offset in the segment of the line (of the NUL for nul_bytes)
	Detail  string `json:"detail"`
}

func (p *Problem) Error() string {
	if p.Seq != 0 {
		return fmt.Sprintf("seq %d: %s: %s (%s line %d)", p.Seq, p.Kind, p.Detail, p.Segment, p.Line)
	}
	return fmt.Sprintf("index %d: %s: %s (%s line %d)", p.Index, p.Kind, p.Detail, p.Segment, p.Line)
}

// Result summarises a verification.
type Result struct {
	Format      int      `json:"format"`  // 2 (Merkle tree, checkpoints) or 1 (JWS per record, hash chain)
	Records     uint64   `json:"records"` // records verified (v2: the tree size of the last good checkpoint)
	Checkpoints int      `json:"checkpoints,omitempty"`
	Root        string   `json:"root,omitempty"`       // v2: base64 root hash of the last good checkpoint
	Checkpoint  string   `json:"checkpoint,omitempty"` // v2: the last good signed checkpoint
	FirstSeq    uint64   `json:"first_seq,omitempty"`  // v1
	LastSeq     uint64   `json:"last_seq,omitempty"`   // v1
	LastHash    string   `json:"last_hash,omitempty"`  // v1: chain hash of the last record
	Segments    int      `json:"segments"`
	KeyIDs      []string `json:"kids"`    // keys that signed, in order of use
	Problem     *Problem `json:"problem"` // nil when the log is intact
}

// Verify checks the log in dir and stops at the first problem; the error
// is for I/O failures only. trusted holds the keys that may sign first;
// later keys are accepted only when a key_rotation record announces them
// (see verifyV2 and verifyV1). It reads both formats.
func Verify(dir string, trusted KeySet) (*Result, error) {
	segs, err := listSegments(dir)
	if err != nil {
		return nil, fmt.Errorf("list segments: %w", err)
	}
	if len(segs) > 0 {
		v1, err := isV1Segment(filepath.Join(dir, segs[0]))
		if err != nil {
			return nil, err
		}
		if v1 {
			return verifyV1(dir, segs, trusted)
		}
	}
	return verifyV2(dir, segs, trusted, fastChecks())
}

// verifyV1 checks every record of a v1 log: each signature (with go-jose),
// the hash chain, sequence continuity and segment names.
func verifyV1(dir string, segs []string, trusted KeySet) (*Result, error) {
	res := &Result{Format: 1, Segments: len(segs)}
	v := &verifier{src: NewReader(dir), known: KeySet{}, cand: KeySet{}, sem: make(chan struct{}, runtime.GOMAXPROCS(0))}
	defer v.src.Close()
	defer v.drain()
	for k, p := range trusted {
		v.known[k] = p
		v.cand[k] = p
	}
	var (
		gSeq  uint64
		gHash string
		cur   ed25519.PublicKey // nil until the first record
		curID string
	)
	for {
		l, ok, err := v.peek(0)
		if err != nil {
			return nil, err
		}
		if !ok {
			break
		}
		problem := func(kind string, seq uint64, format string, args ...any) (*Result, error) {
			res.Problem = &Problem{Kind: kind, Seq: seq, Index: seq - 1, Segment: l.seg, Line: l.num, Offset: l.off, Detail: fmt.Sprintf(format, args...)}
			return res, nil
		}
		if l.hasNUL {
			pr, err := problem(KindNULBytes, gSeq+1, "%s", nulDetail(l))
			pr.Problem.Offset = l.nulAt
			return pr, err
		}
		if !l.complete {
			where := "the last segment ends inside a record (torn or truncated tail)"
			if l.segIdx < len(segs)-1 {
				where = "segment ends inside a record (truncated)"
			}
			return problem(KindTruncated, gSeq+1, "%s", where)
		}
		rec, verr := v.check(l, cur, curID, gSeq == 0)
		if verr != nil {
			// Not a valid record here. If the line after it chains
			// straight onto the last good record, this line is extra.
			if nl, ok, err := v.peek(1); err != nil {
				return nil, err
			} else if ok && nl.complete {
				if nr, err := v.verifyAny(nl); err == nil && nr.Seq == gSeq+1 && nr.Prev == gHash {
					return problem(KindInserted, gSeq+1, "line is not part of the chain (%v); the next line continues it", verr)
				}
			} else if !ok && rec != nil && (rec.Seq != gSeq+1 || rec.Prev != gHash) {
				return problem(KindInserted, gSeq+1, "last line is not part of the chain (%v)", verr)
			}
			return problem(KindModified, gSeq+1, "%v", verr)
		}
		switch {
		case rec.Seq == gSeq+1 && rec.Prev == gHash:
			// the good case, handled below
		case rec.Seq == gSeq+1:
			if gSeq == 0 {
				return problem(KindModified, rec.Seq, "first record has prev %q, want empty", rec.Prev)
			}
			return problem(KindModified, gSeq, "record %d commits to a different predecessor than the record %d in the log", rec.Seq, gSeq)
		case rec.Seq > gSeq+1:
			found, err := v.findAhead(gSeq+1, gHash)
			if err != nil {
				return nil, err
			}
			if found {
				return problem(KindReordered, gSeq+1, "record %d appears after record %d", gSeq+1, rec.Seq)
			}
			if l.num == 1 {
				return problem(KindMissing, gSeq+1, "records %d..%d absent (segment %s starts at %d; a segment or its tail is missing)", gSeq+1, rec.Seq-1, l.seg, rec.Seq)
			}
			return problem(KindMissing, gSeq+1, "records %d..%d absent", gSeq+1, rec.Seq-1)
		default: // rec.Seq <= gSeq
			return problem(KindInserted, gSeq+1, "record %d appears again after record %d", rec.Seq, gSeq)
		}
		if l.num == 1 {
			if n, _ := parseSegmentName(l.seg); n != rec.Seq {
				return problem(KindSegmentName, rec.Seq, "segment named %d starts with record %d", n, rec.Seq)
			}
		}
		if cur == nil {
			cur, curID = v.known[rec.KeyID], rec.KeyID
			res.FirstSeq = rec.Seq
			res.KeyIDs = append(res.KeyIDs, curID)
		}
		if pub, ok := rotationKey(rec); ok {
			v.known[rec.KeyRotation.NewKeyID] = pub
			cur, curID = pub, rec.KeyRotation.NewKeyID
			res.KeyIDs = append(res.KeyIDs, curID)
		}
		gSeq, gHash = rec.Seq, ChainHash(l.text)
		res.Records++
		res.LastSeq, res.LastHash = gSeq, gHash
		v.advance()
	}
	return res, nil
}

type verifier struct {
	src   *Reader
	ahead []line
	eof   bool
	known KeySet // trusted keys plus keys announced by verified rotations
	cand  KeySet // known plus keys announced by any rotation read so far: for prefetching only
	sem   chan struct{}
}

// prefetch is how many lines ahead signatures are checked in parallel.
const prefetch = 256

// preVerified is a signature check run ahead of the chain walk. It records
// which key it used, so the walk accepts it only when that is the key the
// chain requires at that point.
type preVerified struct {
	done chan struct{}
	kid  string
	pub  ed25519.PublicKey
	rec  *Record
	err  error
}

// peek returns the k-th line ahead (0 = current).
func (v *verifier) peek(k int) (line, bool, error) {
	for len(v.ahead) <= k+prefetch && !v.eof {
		l, err := v.src.nextLine(true)
		if errors.Is(err, io.EOF) {
			v.eof = true
			break
		}
		if err != nil {
			return line{}, false, err
		}
		v.startCheck(&l)
		v.ahead = append(v.ahead, l)
	}
	if k < len(v.ahead) {
		return v.ahead[k], true, nil
	}
	return line{}, false, nil
}

func (v *verifier) advance() { v.ahead = v.ahead[1:] }

// startCheck verifies l's signature in the background under the key its
// header names, if that key is known or announced.
func (v *verifier) startCheck(l *line) {
	if !l.complete || l.tooLong || l.hasNUL {
		return
	}
	rec, h, err := decode(l.text)
	if err != nil {
		return
	}
	if pub, ok := rotationKey(rec); ok {
		v.cand[rec.KeyRotation.NewKeyID] = pub
	}
	pub, ok := v.cand[h.Kid]
	if !ok {
		return
	}
	pv := &preVerified{done: make(chan struct{}), kid: h.Kid, pub: pub}
	l.pre = pv
	text := l.text
	v.sem <- struct{}{}
	go func() {
		defer func() { <-v.sem; close(pv.done) }()
		pv.rec, pv.err = VerifyRecord(text, KeySet{pv.kid: pv.pub})
	}()
}

// drain waits for background checks still running.
func (v *verifier) drain() {
	for _, l := range v.ahead {
		if l.pre != nil {
			<-l.pre.done
		}
	}
}

// preOK returns the background result if it was made with want (kid, key).
func preOK(l line, kid string, want ed25519.PublicKey) (*Record, bool) {
	if l.pre == nil || want == nil {
		return nil, false
	}
	<-l.pre.done
	if l.pre.err == nil && l.pre.kid == kid && bytes.Equal(l.pre.pub, want) {
		return l.pre.rec, true
	}
	return nil, false
}

// check verifies l as the next record of the chain: it must be signed by the
// current key (or, for the first record, by a trusted key).
func (v *verifier) check(l line, cur ed25519.PublicKey, curID string, first bool) (*Record, error) {
	if l.tooLong {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrMalformed, MaxRecordBytes)
	}
	if first {
		if l.pre != nil {
			if r, ok := preOK(l, l.pre.kid, v.known[l.pre.kid]); ok {
				return r, nil
			}
		}
	} else if r, ok := preOK(l, curID, cur); ok {
		return r, nil
	}
	ks := v.known
	if !first {
		ks = KeySet{curID: cur}
	}
	rec, err := VerifyRecord(l.text, ks)
	if err != nil && errors.Is(err, ErrUnknownKey) && !first {
		return rec, fmt.Errorf("%w (the log's current key is %s)", err, curID)
	}
	return rec, err
}

func (v *verifier) verifyAny(l line) (*Record, error) {
	if l.tooLong || !l.complete || l.hasNUL {
		return nil, ErrMalformed
	}
	if l.pre != nil {
		if r, ok := preOK(l, l.pre.kid, v.known[l.pre.kid]); ok {
			return r, nil
		}
	}
	return VerifyRecord(l.text, v.known)
}

// findAhead reports whether a record with seq chaining onto prev appears
// within the lookahead window.
func (v *verifier) findAhead(seq uint64, prev string) (bool, error) {
	for k := 1; k <= lookahead; k++ {
		l, ok, err := v.peek(k)
		if err != nil || !ok {
			return false, err
		}
		if r, err := v.verifyAny(l); err == nil && r.Seq == seq && r.Prev == prev {
			return true, nil
		}
	}
	return false, nil
}
