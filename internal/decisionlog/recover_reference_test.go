package decisionlog

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
)

// The implementation of scanSegment before it streamed the file (it read
// the whole segment into memory), kept verbatim but for the names as the
// reference FuzzScanSegment compares the streaming one with: both must
// return the same for every input, and leave the same files.

// scanSegmentReference reads a segment, checks that its complete lines decode and
// chain, and cuts it back to the end of the last good record (sealing it).
// What follows that record may only be a crash artifact: a torn record (a
// partial or undecodable line, possibly with zeros where its pages never
// reached the disk) and then the unwritten zero padding of a preallocated
// segment; or, in the last segment (isLast) only, a torn batch (see
// notTornBatch). Either lies within maxTorn bytes of the last good record,
// and its bytes are kept in a side file (created through open) before the
// cut; the padding is not kept. It returns the last good record and the
// good length; when it cut something the error is a *segmentTail saying
// what. Any other damage is not a crash artifact: it returns ErrCorrupt and
// leaves the file as it is; so does a failure to keep the bytes.
func scanSegmentReference(path, name string, isLast bool, maxTorn int, open openFunc) (last *scannedLine, good int64, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, fmt.Errorf("read segment: %w", err)
	}
	want, _ := parseSegmentName(name)
	prev := ""
	off := 0
	for off < len(data) {
		nl := bytes.IndexByte(data[off:], '\n')
		if nl < 0 {
			break
		}
		text := string(data[off : off+nl])
		rec, derr := DecodeRecord(text) // a line with a NUL byte never decodes
		if derr != nil || rec.Seq != want || (prev != "" && rec.Prev != prev) {
			break
		}
		last = &scannedLine{jws: text}
		prev = ChainHash(text)
		want++
		off += nl + 1
	}
	if off == len(data) {
		return last, int64(off), nil
	}
	rest := data[off:]
	torn := bytes.TrimRight(rest, "\x00") // the zero padding is not torn
	tail := &segmentTail{name: name, torn: len(torn), padding: len(rest) - len(torn)}
	if len(torn) > 0 {
		ts := scanTailReference(torn)
		switch {
		case len(ts.records) > 0:
			// A complete, decodable record after the damage: not a torn
			// record. Only a torn batch may be cut.
			if why := ts.notTornBatch(want, isLast, len(torn), maxTorn); why != "" {
				return nil, 0, fmt.Errorf("%w: %s: damaged record at byte %d followed by valid records (%s); run agentauthz audit verify", ErrCorrupt, name, off, why)
			}
			tail.batch = &tornBatchCut{
				records:  len(ts.records),
				firstSeq: ts.records[0].seq,
				lastSeq:  ts.records[len(ts.records)-1].seq,
			}
		case len(torn) > maxTorn:
			// A crash tears at most the one write in flight, so this is
			// not a torn record; and the side file stays bounded.
			return nil, 0, fmt.Errorf("%w: %s: %d bytes after the last good record at byte %d, more than one write (%d bytes) can leave; run agentauthz audit verify", ErrCorrupt, name, len(torn), off, maxTorn)
		}
		side, err := keepTornBytes(open, filepath.Dir(path), name, int64(off), torn)
		if err != nil {
			return nil, 0, fmt.Errorf("keep the %d torn bytes at the end of %s before cutting them (nothing was cut): %w", len(torn), name, err)
		}
		tail.sideFile = side
	}
	if err := truncateDurable(path, int64(off)); err != nil {
		return nil, 0, err
	}
	return last, int64(off), tail
}

// refTailRecord is a complete, decodable record found after the damage.
type refTailRecord struct {
	seq      uint64
	prev     string
	hash     string
	adjacent bool // directly after the previous tail record (the line before it)
}

// refTailScan is what scanTailReference finds in the bytes after the last good record.
type refTailScan struct {
	records []refTailRecord
	// firstHasNUL: the line that broke the chain (the first bad spot)
	// holds a NUL byte, i.e. a page of it never reached the disk.
	firstHasNUL bool
	// garbage: a complete line without NUL bytes, after the first, that
	// does not decode. A torn write cannot make one: where a page is
	// lost the preallocated zeros show, so every complete line free of
	// NULs is a whole record as written.
	garbage int // 1-based line number within the tail, 0 if none
	// foreign: a byte that is neither NUL, LF nor in the alphabet of a
	// JWS (base64url and '.'): not a piece of a record.
	foreign int // offset within the tail, -1 if none
}

// scanTailReference splits the bytes after the last good record (the padding cut
// off) into lines. In a line holding NULs only what follows its last NUL
// can be a complete record; a line without NULs is one as a whole, except
// the first (it broke the chain). The part after the last LF is a partial
// line.
func scanTailReference(torn []byte) refTailScan {
	ts := refTailScan{foreign: -1}
	for i, c := range torn {
		if c != 0 && c != '\n' && !isJWSByte(c) {
			ts.foreign = i
			break
		}
	}
	lines := bytes.Split(torn, []byte("\n"))
	prevRecord := -1 // line index of the last tail record
	for i, ln := range lines[:len(lines)-1] {
		z := bytes.LastIndexByte(ln, 0)
		if i == 0 {
			ts.firstHasNUL = z >= 0
		}
		switch {
		case z >= 0:
			ln = ln[z+1:]
		case i == 0:
			continue // the line that broke the chain
		}
		rec, err := DecodeRecord(string(ln))
		if err != nil {
			if z < 0 && ts.garbage == 0 {
				ts.garbage = i + 1
			}
			continue
		}
		ts.records = append(ts.records, refTailRecord{
			seq:      rec.Seq,
			prev:     rec.Prev,
			hash:     ChainHash(string(ln)),
			adjacent: z < 0 && prevRecord == i-1,
		})
		prevRecord = i
	}
	return ts
}

// notTornBatch says why the tail is not a torn batch, or "" when it is:
// the segment is the last one; the first bad spot is a run of NULs (the
// line that broke the chain holds NUL bytes); what follows is only NUL
// runs, pieces of records and complete records that continue the log
// (seqs after want, the seq the damaged line was to hold, increasing, and
// chained where one directly follows another); and it all lies within
// maxTorn bytes of the last good record (one write of the writer). want is
// the seq expected at the damage.
func (ts refTailScan) notTornBatch(want uint64, isLast bool, tornBytes, maxTorn int) string {
	switch {
	case !isLast:
		return "not the last segment: a sealed segment is never torn"
	case !ts.firstHasNUL:
		return "the damaged line holds no zero bytes: not a lost page"
	case ts.garbage > 0:
		return fmt.Sprintf("line %d after the damage is complete but not a record", ts.garbage)
	case ts.foreign >= 0:
		return fmt.Sprintf("byte %d after the damage is not part of a record", ts.foreign)
	case tornBytes > maxTorn:
		return fmt.Sprintf("%d bytes from the damage to the last record byte, more than one write (%d bytes) can leave", tornBytes, maxTorn)
	}
	after := want // a record in the tail comes after the damaged one
	var prev *refTailRecord
	for i := range ts.records {
		r := &ts.records[i]
		if r.seq <= after {
			return fmt.Sprintf("a record after the damage has seq %d, not after %d", r.seq, after)
		}
		if r.adjacent && prev != nil && (r.seq != prev.seq+1 || r.prev != prev.hash) {
			return fmt.Sprintf("records %d and %d after the damage do not chain", prev.seq, r.seq)
		}
		after, prev = r.seq, r
	}
	return ""
}
