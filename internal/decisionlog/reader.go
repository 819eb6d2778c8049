package decisionlog

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
	"unsafe"
)

// segmentSuffix and segmentNameLen define segment file names: the first seq
// of the segment as 20 decimal digits, then ".log".
const (
	segmentSuffix  = ".log"
	segmentNameLen = 20
)

func segmentName(firstSeq uint64) string {
	return fmt.Sprintf("%020d%s", firstSeq, segmentSuffix)
}

// parseSegmentName returns the first seq a segment file name claims.
func parseSegmentName(name string) (uint64, bool) {
	if len(name) != segmentNameLen+len(segmentSuffix) || !strings.HasSuffix(name, segmentSuffix) {
		return 0, false
	}
	n, err := strconv.ParseUint(name[:segmentNameLen], 10, 64)
	return n, err == nil
}

// listSegments returns the segment file names in dir in log order.
func listSegments(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if _, ok := parseSegmentName(e.Name()); ok && e.Type().IsRegular() {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out) // fixed width, so lexical order is numeric order
	return out, nil
}

// Entry is one record read from a log, with where it was found.
type Entry struct {
	Record  *Record
	Raw     string // the line as written, without its LF: JSON (v2) or a JWS (v1)
	Segment string // segment file name
	Line    int    // 1-based line number within the segment
}

// line is one raw line of a segment.
type line struct {
	seg      string
	segIdx   int
	num      int
	off      int64 // byte offset of the line in its segment
	text     string
	complete bool // ended by '\n'
	tooLong  bool
	hasNUL   bool         // a NUL byte where only padding may have one: damage
	nulAt    int64        // offset of that NUL in the segment
	sealed   bool         // the segment was known to be sealed (not the last)
	pre      *preVerified // Verify's background signature check, if started
}

// How the Reader tells the end of the data from damage. A segment is
// sealed once a later segment exists: the writer cuts a segment's zero
// padding off before it starts the next one, so a sealed segment is final
// and a NUL byte in it is damage. In the last segment, the writer may be
// writing: the data ends, for now, at the first NUL byte (the start of the
// preallocated zeros it has not yet overwritten), and a following Next
// reads again from the start of that line, so new records are found by
// their content, not by the file's size (which does not grow).
//
// Verify (final) needs more: the end of the last segment must be a run of
// NULs to the end of the file, after complete lines, for the log to be
// intact. A partial line before it is a torn or truncated tail; NULs
// followed by data are damage. Because a record being written can be seen
// half copied, such an end is read again a few times, settleWait apart,
// before it is reported.
const (
	settleRetries = 3
	settleWait    = 10 * time.Millisecond
)

// Reader reads a log directory as a stream of records in log order, across
// segments. At the current end of the log Next returns io.EOF; calling Next
// again later continues with whatever was appended since (tail -f), so a
// consumer can follow a live log. The last segment's data ends at its zero
// padding. Reader does not check signatures or the chain: use Verify for
// that.
type Reader struct {
	dir     string
	segs    []string
	idx     int
	name    string // the open segment
	f       *os.File
	br      *bufio.Reader
	pos     int64 // offset of the next byte br returns
	start   int64 // offset of the line being read (of partial)
	partial []byte
	lineNo  int
	skip    bool  // discarding the rest of an over-long line
	sealed  bool  // a later segment existed before this one was (re)read from start
	nulAt   int64 // >= 0: the line being read holds damage, a NUL byte here

	blockLines bool   // lineText carves lines out of block (Verify)
	block      []byte // the unused rest of the current block

	settleSeg  string // the end being read again (final mode)
	settleAt   int64
	settleLeft int
}

// NewReader returns a Reader positioned at the start of the log in dir.
func NewReader(dir string) *Reader { return &Reader{dir: dir, idx: -1, nulAt: -1} }

// Close releases the open segment.
func (r *Reader) Close() error {
	if r.f != nil {
		err := r.f.Close()
		r.f = nil
		return err
	}
	return nil
}

// Next returns the next record (checkpoint lines are skipped). A line that
// does not decode, or that holds a NUL byte outside the last segment's
// padding, yields an error wrapping ErrMalformed; the Reader has moved past
// it, so Next may be called again. It reads v2 logs (JSON lines) and v1
// logs (one JWS per line).
func (r *Reader) Next() (Entry, error) {
	e, err := r.NextRaw()
	if err != nil {
		return e, err
	}
	if e.Record, err = DecodeLine(e.Raw); err != nil {
		return e, fmt.Errorf("%s line %d: %w", e.Segment, e.Line, err)
	}
	return e, nil
}

// NextRaw is Next without decoding: the entry has Raw and no Record, for a
// caller that decodes lines on several cores (DecodeLine; audit report).
// Damage found while reading is reported as by Next.
func (r *Reader) NextRaw() (Entry, error) {
	for {
		l, err := r.nextLine(false)
		if err != nil {
			return Entry{}, err
		}
		if l.hasNUL {
			return Entry{Segment: l.seg, Line: l.num}, fmt.Errorf("%s line %d: %w: %s", l.seg, l.num, ErrMalformed, nulDetail(l))
		}
		if l.tooLong {
			return Entry{Segment: l.seg, Line: l.num}, fmt.Errorf("%s line %d: %w: longer than %d bytes", l.seg, l.num, ErrMalformed, MaxRecordBytes)
		}
		if strings.HasPrefix(l.text, checkpointPrefix) {
			continue
		}
		return Entry{Raw: l.text, Segment: l.seg, Line: l.num}, nil
	}
}

// NextOrCheckpoint is Next that also returns checkpoint lines, in place:
// exactly one of the entry's Record and the returned signed note is set. A
// log shipper uses it to send each group-commit batch with the checkpoint
// that signs it (VerifyBatch on the receiving side).
func (r *Reader) NextOrCheckpoint() (Entry, []byte, error) {
	l, err := r.nextLine(false)
	if err != nil {
		return Entry{}, nil, err
	}
	if l.hasNUL {
		return Entry{Segment: l.seg, Line: l.num}, nil, fmt.Errorf("%s line %d: %w: %s", l.seg, l.num, ErrMalformed, nulDetail(l))
	}
	if l.tooLong {
		return Entry{Segment: l.seg, Line: l.num}, nil, fmt.Errorf("%s line %d: %w: longer than %d bytes", l.seg, l.num, ErrMalformed, MaxRecordBytes)
	}
	if strings.HasPrefix(l.text, checkpointPrefix) {
		signed, _, err := decodeCheckpointLine([]byte(l.text))
		if err != nil {
			return Entry{Segment: l.seg, Line: l.num, Raw: l.text}, nil, fmt.Errorf("%s line %d: %w", l.seg, l.num, err)
		}
		return Entry{Segment: l.seg, Line: l.num, Raw: l.text}, signed, nil
	}
	rec, err := DecodeLine(l.text)
	if err != nil {
		return Entry{Segment: l.seg, Line: l.num, Raw: l.text}, nil, fmt.Errorf("%s line %d: %w", l.seg, l.num, err)
	}
	return Entry{Record: rec, Raw: l.text, Segment: l.seg, Line: l.num}, nil, nil
}

// DecodeLine decodes a record line of either format without verifying it,
// as Next does.
func DecodeLine(text string) (*Record, error) {
	if strings.HasPrefix(text, "{") {
		return decodeRecordLine([]byte(text))
	}
	return DecodeRecord(text)
}

func nulDetail(l line) string {
	where := "the last segment, followed by data"
	if l.sealed {
		where = "sealed segment " + l.seg
	}
	return fmt.Sprintf("NUL byte at offset %d of %s (only the unwritten end of the last segment may be NUL padding)", l.nulAt, where)
}

// nextLine returns the next complete line. With final set, the end of the
// last segment is judged as it stands (after settling): a partial last line
// is returned too (complete=false), and NULs followed by data are returned
// as damage, instead of waiting for the writer.
func (r *Reader) nextLine(final bool) (line, error) {
	for {
		if r.f == nil {
			if err := r.openNext(); err != nil {
				return line{}, err
			}
		}
		chunk, err := r.br.ReadSlice('\n')
		if r.nulAt < 0 && !(r.skip && r.sealed) {
			if i := bytes.IndexByte(chunk, 0); i >= 0 {
				act, l, nerr := r.atNUL(final, r.pos+int64(i), chunk[:i])
				switch act {
				case nulReturn:
					return l, nerr
				case nulReread:
					if nerr != nil {
						return line{}, nerr
					}
					continue
				}
				// nulDamage: the chunk is part of a damaged line.
			}
		}
		r.pos += int64(len(chunk))
		if len(chunk) > 0 {
			if r.skip {
				if err == nil {
					r.skip = false
				}
				r.start = r.pos
				continue
			}
			r.partial = append(r.partial, chunk...)
			if len(r.partial) > MaxRecordBytes+1 {
				r.lineNo++
				l := r.take(false)
				l.tooLong, l.complete = true, err == nil
				r.skip = err != nil
				return l, nil
			}
		}
		switch {
		case err == nil:
			r.lineNo++
			r.partial = r.partial[:len(r.partial)-1]
			return r.take(true), nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF):
			// End of this segment for now. Move on only if a later
			// segment exists; otherwise the writer may still be
			// appending here.
			more, lerr := r.refresh()
			if lerr != nil {
				return line{}, lerr
			}
			if more && !r.sealed {
				// Sealed since it was read: read its final bytes.
				r.sealed = true
				if err := r.rewind(); err != nil {
					return line{}, err
				}
				continue
			}
			if !more && !final {
				return line{}, r.rewindEOF()
			}
			if len(r.partial) > 0 || r.nulAt >= 0 {
				if !more && r.nulAt < 0 && r.settle() {
					if err := r.rewind(); err != nil {
						return line{}, err
					}
					continue
				}
				r.lineNo++
				l := r.take(false)
				r.closeCur()
				return l, nil
			}
			if !more {
				return line{}, r.rewindEOF()
			}
			r.closeCur()
		default:
			return line{}, fmt.Errorf("read %s: %w", r.name, err)
		}
	}
}

// take returns the line in r.partial (which starts at r.start) and starts
// the next one at r.pos.
func (r *Reader) take(complete bool) line {
	l := line{seg: r.name, segIdx: r.idx, num: r.lineNo, off: r.start, text: r.lineText(), complete: complete, sealed: r.sealed}
	if r.nulAt >= 0 {
		l.hasNUL, l.nulAt = true, r.nulAt
		r.nulAt = -1
	}
	r.partial = r.partial[:0]
	r.start = r.pos
	return l
}

// lineText copies the line out of the read buffer. Verify, whose lines
// live only until their chunk is checked, has them carved out of shared
// blocks (blockLines): one allocation per 256 KiB instead of one per line.
func (r *Reader) lineText() string {
	if !r.blockLines || len(r.partial) > len(r.block) && len(r.partial) > 64<<10 {
		return string(r.partial)
	}
	if len(r.block) < len(r.partial) {
		r.block = make([]byte, 256<<10)
	}
	n := copy(r.block, r.partial)
	s := unsafe.String(unsafe.SliceData(r.block), n) //nolint:gosec // the block's first n bytes are never written again
	r.block = r.block[n:]
	return s
}

// What atNUL decided.
const (
	nulReturn = iota // return its line and error
	nulReread        // read on (from the position it set)
	nulDamage        // the chunk belongs to a damaged line: consume it
)

// atNUL handles a NUL byte at offset nulAt of the chunk just read, after
// the chunk's bytes before (which are not yet consumed).
func (r *Reader) atNUL(final bool, nulAt int64, before []byte) (int, line, error) {
	if !r.sealed {
		more, err := r.refresh()
		if err != nil {
			return nulReturn, line{}, err
		}
		if more {
			// The writer has sealed this segment since we read it
			// (sealing cuts the padding off before the next segment
			// exists): read its final bytes again.
			r.sealed = true
			return nulReread, line{}, r.rewind()
		}
	}
	if r.sealed {
		r.nulAt = nulAt // damage: read on to the end of the line
		return nulDamage, line{}, nil
	}
	// The last segment, possibly being written: the data ends here.
	if !final {
		return nulReturn, line{}, r.rewindEOF()
	}
	clean, _, err := zerosFrom(r.f, nulAt)
	if err != nil {
		return nulReturn, line{}, fmt.Errorf("read %s: %w", r.name, err)
	}
	partial := len(r.partial)+len(before) > 0 || r.skip
	if clean && !partial {
		return nulReturn, line{}, r.rewindEOF()
	}
	if r.settle() {
		return nulReread, line{}, r.rewind()
	}
	if !clean {
		r.nulAt = nulAt // NULs followed by data: damage
		return nulDamage, line{}, nil
	}
	// Complete lines, then a partial one, then the padding: a torn tail.
	r.partial = append(r.partial, before...)
	r.lineNo++
	l := r.take(false)
	r.closeCur()
	return nulReturn, l, nil
}

// settle reports whether the end of the last segment at r.start should be
// read again (after a pause) before it is judged: a record being written
// can be seen half copied.
func (r *Reader) settle() bool {
	if r.settleSeg != r.name || r.settleAt != r.start {
		r.settleSeg, r.settleAt, r.settleLeft = r.name, r.start, settleRetries
	}
	if r.settleLeft == 0 {
		return false
	}
	r.settleLeft--
	time.Sleep(settleWait)
	return true
}

// rewind positions the reader at the start of the line being read, to read
// it again.
func (r *Reader) rewind() error {
	r.partial = r.partial[:0]
	r.nulAt = -1
	if _, err := r.f.Seek(r.start, io.SeekStart); err != nil {
		return fmt.Errorf("read %s: %w", r.name, err)
	}
	r.br.Reset(r.f)
	r.pos = r.start
	return nil
}

// rewindEOF is the current end of the log: the next call reads again from
// the start of the line that is not complete yet.
func (r *Reader) rewindEOF() error {
	if err := r.rewind(); err != nil {
		return err
	}
	return io.EOF
}

func (r *Reader) closeCur() {
	if r.f != nil {
		r.f.Close()
		r.f = nil
	}
	r.skip = false
	r.nulAt = -1
}

// refresh re-lists segments and reports whether one follows the current one.
func (r *Reader) refresh() (bool, error) {
	segs, err := listSegments(r.dir)
	if err != nil {
		return false, fmt.Errorf("list segments: %w", err)
	}
	// Keep the position by name: new segments only ever sort last.
	cur := ""
	if r.idx >= 0 && r.idx < len(r.segs) {
		cur = r.segs[r.idx]
	}
	r.segs = segs
	if cur == "" {
		return len(segs) > 0 && r.idx < 0, nil
	}
	i := sort.SearchStrings(segs, cur)
	if i < len(segs) && segs[i] == cur {
		r.idx = i
		return i+1 < len(segs), nil
	}
	r.idx = i - 1 // current segment vanished; continue after its place
	return i < len(segs), nil
}

func (r *Reader) openNext() error {
	if r.idx+1 >= len(r.segs) {
		more, err := r.refresh()
		if err != nil {
			return err
		}
		if !more {
			return io.EOF
		}
	}
	cur := ""
	if r.idx >= 0 && r.idx < len(r.segs) {
		cur = r.segs[r.idx]
	}
	// Advance to the first segment after cur (the list may have been
	// refreshed with segments inserted before the end).
	next := sort.SearchStrings(r.segs, cur)
	if cur != "" && next < len(r.segs) && r.segs[next] == cur {
		next++
	}
	if next >= len(r.segs) {
		return io.EOF
	}
	f, err := os.Open(filepath.Join(r.dir, r.segs[next]))
	if err != nil {
		return fmt.Errorf("open segment: %w", err)
	}
	r.idx = next
	r.name = r.segs[next]
	r.f = f
	r.sealed = next+1 < len(r.segs) // listed before it was opened
	r.pos, r.start = 0, 0
	if r.br == nil {
		r.br = bufio.NewReaderSize(f, 64<<10)
	} else {
		r.br.Reset(f)
	}
	r.lineNo = 0
	r.partial = r.partial[:0]
	return nil
}

// zerosFrom reports whether every byte of r from off to its end is NUL, and
// otherwise the offset of the first byte that is not.
func zerosFrom(r io.ReaderAt, off int64) (bool, int64, error) {
	buf := make([]byte, 64<<10)
	zeros := make([]byte, len(buf))
	for {
		n, err := r.ReadAt(buf, off)
		if n > 0 && !bytes.Equal(buf[:n], zeros[:n]) {
			for i, c := range buf[:n] {
				if c != 0 {
					return false, off + int64(i), nil
				}
			}
		}
		off += int64(n)
		if errors.Is(err, io.EOF) {
			return true, 0, nil
		}
		if err != nil {
			return false, 0, err
		}
	}
}

// Checkpoints returns the signed notes of every checkpoint line in the log
// in dir, in order, without verifying them (Verify does). It reads up to
// the current end of a live log.
func Checkpoints(dir string) ([][]byte, error) {
	r := NewReader(dir)
	defer r.Close()
	var out [][]byte
	for {
		l, err := r.nextLine(false)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if !strings.HasPrefix(l.text, checkpointPrefix) || l.hasNUL || l.tooLong {
			continue
		}
		signed, _, err := decodeCheckpointLine([]byte(l.text))
		if err != nil {
			return nil, fmt.Errorf("%s line %d: %w", l.seg, l.num, err)
		}
		out = append(out, signed)
	}
}
