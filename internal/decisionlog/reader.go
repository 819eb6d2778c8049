package decisionlog

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
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
	JWS     string
	Segment string // segment file name
	Line    int    // 1-based line number within the segment
}

// line is one raw line of a segment.
type line struct {
	seg      string
	segIdx   int
	num      int
	text     string
	complete bool // ended by '\n'
	tooLong  bool
	pre      *preVerified // Verify's background signature check, if started
}

// Reader reads a log directory as a stream of records in log order, across
// segments. At the current end of the log Next returns io.EOF; calling Next
// again later continues with whatever was appended since (tail -f), so a
// consumer can follow a live log. Reader does not check signatures or the
// chain: use Verify for that.
type Reader struct {
	dir     string
	segs    []string
	idx     int
	name    string // the open segment
	f       *os.File
	br      *bufio.Reader
	partial []byte
	lineNo  int
	skip    bool // discarding the rest of an over-long line
}

// NewReader returns a Reader positioned at the start of the log in dir.
func NewReader(dir string) *Reader { return &Reader{dir: dir, idx: -1} }

// Close releases the open segment.
func (r *Reader) Close() error {
	if r.f != nil {
		err := r.f.Close()
		r.f = nil
		return err
	}
	return nil
}

// Next returns the next record. A line that does not decode yields an error
// wrapping ErrMalformed; the Reader has moved past it, so Next may be called
// again.
func (r *Reader) Next() (Entry, error) {
	l, err := r.nextLine(false)
	if err != nil {
		return Entry{}, err
	}
	if l.tooLong {
		return Entry{Segment: l.seg, Line: l.num}, fmt.Errorf("%s line %d: %w: longer than %d bytes", l.seg, l.num, ErrMalformed, MaxRecordBytes)
	}
	rec, err := DecodeRecord(l.text)
	if err != nil {
		return Entry{Segment: l.seg, Line: l.num, JWS: l.text}, fmt.Errorf("%s line %d: %w", l.seg, l.num, err)
	}
	return Entry{Record: rec, JWS: l.text, Segment: l.seg, Line: l.num}, nil
}

// nextLine returns the next complete line. With final set, a partial last
// line of a segment is returned too (complete=false) instead of waiting for
// its end.
func (r *Reader) nextLine(final bool) (line, error) {
	for {
		if r.f == nil {
			if err := r.openNext(); err != nil {
				return line{}, err
			}
		}
		chunk, err := r.br.ReadSlice('\n')
		if len(chunk) > 0 {
			if r.skip {
				if err == nil {
					r.skip = false
				}
				continue
			}
			r.partial = append(r.partial, chunk...)
			if len(r.partial) > MaxRecordBytes+1 {
				r.lineNo++
				r.partial = r.partial[:0]
				r.skip = err != nil
				return line{seg: r.name, segIdx: r.idx, num: r.lineNo, tooLong: true, complete: err == nil}, nil
			}
		}
		switch {
		case err == nil:
			r.lineNo++
			text := string(r.partial[:len(r.partial)-1])
			r.partial = r.partial[:0]
			return line{seg: r.name, segIdx: r.idx, num: r.lineNo, text: text, complete: true}, nil
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
			if !more && !final {
				return line{}, io.EOF
			}
			if len(r.partial) > 0 {
				r.lineNo++
				text := string(r.partial)
				r.partial = r.partial[:0]
				l := line{seg: r.name, segIdx: r.idx, num: r.lineNo, text: text}
				r.closeCur()
				return l, nil
			}
			if !more {
				return line{}, io.EOF
			}
			r.closeCur()
		default:
			return line{}, fmt.Errorf("read %s: %w", r.name, err)
		}
	}
}

func (r *Reader) closeCur() {
	if r.f != nil {
		r.f.Close()
		r.f = nil
	}
	r.skip = false
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
	if r.br == nil {
		r.br = bufio.NewReaderSize(f, 64<<10)
	} else {
		r.br.Reset(f)
	}
	r.lineNo = 0
	r.partial = r.partial[:0]
	return nil
}
