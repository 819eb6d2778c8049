package decisionlog

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sync"
)

// Recovery of the last segment on Open.
//
// The writer commits each batch with one positioned write of at most
// maxWriteBytes at the end of the segment's records, followed by
// fdatasync, and never starts the next write before that fdatasync has
// returned (a larger batch is written in several such cycles before its
// appenders are woken). So after a crash the bytes that were not durable
// are those of at most one write, and they lie within maxWriteBytes of the
// last durable byte:
//
//   - after a process crash (kill -9, out of memory) the page cache
//     survives: the write is there in whole or in part, in order — a torn
//     record, then the zero padding;
//   - after a power loss its pages may have reached the disk in any order:
//     zeros where a page was lost (the segment's preallocated content),
//     followed by pieces of records and complete records of the same
//     batch — a torn batch. None of them was acknowledged in sync mode.
//
// Open cuts the first kind off. It cuts the second off too, but only when
// the damage has exactly that shape (tornBatch) and only in the last
// segment. Anything else followed by a decodable record — a changed byte,
// garbage, zeros in a sealed segment, damage reaching further than one
// write — is refused, and so is a torn record reaching further than one
// write (no crash leaves that much).
//
// Whoever cuts a tail leaves a trace: before either cut, Open keeps the
// bytes it is about to remove in a side file, durably, and refuses to cut
// when it cannot. So a crash during recovery loses nothing, and an auditor
// can look at what was removed (see docs/decision-log.md).

// tornFilePrefix starts the name of a side file that keeps the bytes of a
// torn record or batch cut off a segment: .torn-<segment>-<offset>.
// Readers and listSegments ignore it (it is not a segment name).
const tornFilePrefix = ".torn-"

type scannedLine struct{ jws string }

// segmentTail says what scanSegment cut off the end of a segment.
type segmentTail struct {
	name     string
	torn     int           // bytes of a torn record or batch (up to the last non-NUL byte)
	padding  int           // zero bytes after it (unwritten preallocation)
	sideFile string        // where the torn bytes were kept; "" when torn is 0
	batch    *tornBatchCut // set when the torn bytes were a torn batch
}

// tornBatchCut describes a torn batch that Open cut off.
type tornBatchCut struct {
	records  int // complete, decodable records in the cut bytes
	firstSeq uint64
	lastSeq  uint64
}

func (t *segmentTail) Error() string {
	return fmt.Sprintf("cut %d torn bytes and %d bytes of padding", t.torn, t.padding)
}

// scanBufBytes is the read buffer of scanSegment (as large as Reader's).
const scanBufBytes = 64 << 10

// scanSegment reads a segment, checks that its complete lines decode and
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
//
// It streams the file, because nothing Open validates bounds its size
// (segment_max_bytes may have been lowered since it was written, or the
// file grown by other means) and its padding alone is normally tens of MiB
// of zeros. It holds at most one line, MaxRecordBytes+1 bytes (a longer
// line is damage, not a reason to hold more); the torn bytes and the
// padding are counted, and the torn bytes read again only once they are
// known to be within maxTorn, to be kept.
func scanSegment(path, name string, isLast bool, maxTorn int, open openFunc) (last *scannedLine, good int64, err error) {
	return scanSegmentBuf(path, name, isLast, maxTorn, open, scanBufBytes)
}

// scanSegmentBuf is scanSegment reading bufSize bytes at a time (tests use
// small buffers, to put piece boundaries anywhere in lines and NUL runs).
func scanSegmentBuf(path, name string, isLast bool, maxTorn int, open openFunc, bufSize int) (last *scannedLine, good int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, fmt.Errorf("read segment: %w", err)
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, bufSize)
	first, _ := parseSegmentName(name)
	last, good, want, err := scanRecords(br, first)
	if err != nil {
		return nil, 0, fmt.Errorf("read segment: %w", err)
	}
	// The tail starts with the line scanRecords stopped at: read it again.
	if _, err := f.Seek(good, io.SeekStart); err != nil {
		return nil, 0, fmt.Errorf("read segment: %w", err)
	}
	br.Reset(f)
	ts := tailScan{want: want, foreign: -1, prevLine: -1}
	if err := ts.read(br); err != nil {
		return nil, 0, fmt.Errorf("read segment: %w", err)
	}
	if ts.size == 0 {
		return last, good, nil
	}
	tail := &segmentTail{name: name, torn: ts.torn, padding: ts.size - ts.torn}
	if ts.torn > 0 {
		switch {
		case ts.records > 0:
			// A complete, decodable record after the damage: not a torn
			// record. Only a torn batch may be cut.
			if why := ts.notTornBatch(isLast, maxTorn); why != "" {
				return nil, 0, fmt.Errorf("%w: %s: damaged record at byte %d followed by valid records (%s); run agentauthz audit verify", ErrCorrupt, name, good, why)
			}
			tail.batch = &tornBatchCut{records: ts.records, firstSeq: ts.firstSeq, lastSeq: ts.lastSeq}
		case ts.torn > maxTorn:
			// A crash tears at most the one write in flight, so this is
			// not a torn record; and the side file stays bounded.
			return nil, 0, fmt.Errorf("%w: %s: %d bytes after the last good record at byte %d, more than one write (%d bytes) can leave; run agentauthz audit verify", ErrCorrupt, name, ts.torn, good, maxTorn)
		}
		// Both cases above refuse more than maxTorn torn bytes: read
		// them again (the scan only counted them) to keep them.
		torn := make([]byte, ts.torn)
		if _, err := f.ReadAt(torn, good); err != nil {
			return nil, 0, fmt.Errorf("read segment: %w", err)
		}
		side, err := keepTornBytes(open, filepath.Dir(path), name, good, torn)
		if err != nil {
			return nil, 0, fmt.Errorf("keep the %d torn bytes at the end of %s before cutting them (nothing was cut): %w", ts.torn, name, err)
		}
		tail.sideFile = side
	}
	if err := truncateDurable(path, good); err != nil {
		return nil, 0, err
	}
	return last, good, tail
}

// scanRecords reads the segment's lines from its start while they are
// complete records holding the seqs from want on, each chained to the one
// before. It returns the last of them, the offset after it, and the seq the
// next line was to hold. A line longer than MaxRecordBytes stops it as soon
// as that shows: it never decodes, so it is not read further.
//
// Lines are read scanBatchLines at a time and decoded and hashed on every
// CPU (a record's JSON decoding is most of Open's time); the checks then run
// in order, so the result is the one line-by-line reading would give.
func scanRecords(br *bufio.Reader, want uint64) (last *scannedLine, off int64, next uint64, err error) {
	prev := ""
	lines := make([]scanLine, 0, scanBatchLines)
	for {
		var end bool
		lines, end, err = readLines(br, lines[:0])
		decodeLines(lines)
		for _, ln := range lines {
			if ln.err != nil || ln.rec.Seq != want || (prev != "" && ln.rec.Prev != prev) {
				return last, off, want, nil
			}
			last = &scannedLine{jws: ln.text}
			prev = ln.hash
			want++
			off += int64(len(ln.text)) + 1
		}
		if err != nil {
			return nil, 0, 0, err
		}
		if end {
			return last, off, want, nil
		}
	}
}

// scanRecords reads up to scanBatchLines lines, or until they hold
// scanBatchBytes, before decoding them: ~1.5 MB for records of a usual size,
// at most scanBatchBytes + MaxRecordBytes whatever the lines.
const (
	scanBatchLines = 1024
	scanBatchBytes = 4 << 20
)

// scanLine is one complete line (without its LF) and what decoding it gave.
type scanLine struct {
	text string
	rec  *Record
	hash string // its chain hash, when it decodes
	err  error
}

// readLines appends complete lines from br to lines, up to scanBatchLines
// or scanBatchBytes. end says reading stopped for good: a line too long to
// be a record, the end of the file (after a partial line or none); err is a
// read error.
func readLines(br *bufio.Reader, lines []scanLine) (_ []scanLine, end bool, err error) {
	var buf []byte
	for size := 0; len(lines) < scanBatchLines && size < scanBatchBytes; {
		buf = buf[:0]
		for done := false; !done; {
			chunk, err := br.ReadSlice('\n')
			if len(buf)+len(chunk) > MaxRecordBytes+1 {
				return lines, true, nil // too long to be a record (and its LF)
			}
			buf = append(buf, chunk...)
			switch {
			case err == nil:
				done = true
			case errors.Is(err, io.EOF):
				return lines, true, nil // the end, or a partial line
			case !errors.Is(err, bufio.ErrBufferFull):
				return lines, true, err
			}
		}
		lines = append(lines, scanLine{text: string(buf[:len(buf)-1])})
		size += len(buf)
	}
	return lines, false, nil
}

// decodeLines decodes and hashes lines, spread over the CPUs.
func decodeLines(lines []scanLine) {
	workers := min(runtime.GOMAXPROCS(0), (len(lines)+63)/64)
	if workers <= 1 {
		for i := range lines {
			decodeLine(&lines[i])
		}
		return
	}
	var wg sync.WaitGroup
	per := (len(lines) + workers - 1) / workers
	for start := 0; start < len(lines); start += per {
		part := lines[start:min(start+per, len(lines))]
		wg.Go(func() {
			for i := range part {
				decodeLine(&part[i])
			}
		})
	}
	wg.Wait()
}

func decodeLine(ln *scanLine) {
	ln.rec, ln.err = DecodeRecord(ln.text) // a line with a NUL byte never decodes
	if ln.err == nil {
		ln.hash = ChainHash(ln.text)
	}
}

// tailScan is what read finds in the tail: the bytes from the end of the
// last good record to the end of the file. It splits them into lines. In a
// line holding NULs only what follows its last NUL can be a complete
// record; a line without NULs is one as a whole, except the first (it
// broke the chain). The part after the last LF is a partial line.
type tailScan struct {
	want uint64 // the seq the damaged line was to hold

	size int // bytes in the tail
	torn int // bytes up to its last non-NUL byte; the rest is padding

	records           int // complete, decodable records after the damage
	firstSeq, lastSeq uint64
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
	// disorder: why the records do not continue the log (the first
	// reason), "" while they do: seqs after want, increasing, and chained
	// where one directly follows another.
	disorder string

	// The line being read, and the last record.
	line     int    // its 0-based index in the tail
	lineNUL  bool   // it holds a NUL byte
	afterNUL []byte // its bytes after its last NUL (all, if none), at most MaxRecordBytes+1
	prevLine int    // line of the last record, -1 if none
	prevHash string // chain hash of the last record
}

// read reads the tail from br to the end of the file.
func (ts *tailScan) read(br *bufio.Reader) error {
	zeros := make([]byte, br.Size())
	for {
		chunk, err := br.ReadSlice('\n')
		ts.add(chunk, zeros, err == nil)
		switch {
		case errors.Is(err, io.EOF):
			return nil
		case err != nil && !errors.Is(err, bufio.ErrBufferFull):
			return err
		}
	}
}

// add takes the next piece of the tail: a line up to its LF (eol), or part
// of a line. zeros is at least as long as chunk, all NUL.
func (ts *tailScan) add(chunk, zeros []byte, eol bool) {
	start := ts.size
	ts.size += len(chunk)
	if bytes.Equal(chunk, zeros[:len(chunk)]) {
		// Padding or a lost page: counted, not held.
		if len(chunk) > 0 {
			ts.lineNUL, ts.afterNUL = true, ts.afterNUL[:0]
		}
		return
	}
	if ts.foreign < 0 {
		for i, c := range chunk {
			if c != 0 && c != '\n' && !isJWSByte(c) {
				ts.foreign = start + i
				break
			}
		}
	}
	ts.torn = start + len(bytes.TrimRight(chunk, "\x00"))
	b := chunk
	if eol {
		b = chunk[:len(chunk)-1]
	}
	if z := bytes.LastIndexByte(b, 0); z >= 0 {
		ts.lineNUL, ts.afterNUL = true, ts.afterNUL[:0]
		b = b[z+1:]
	}
	ts.afterNUL = append(ts.afterNUL, b[:min(len(b), MaxRecordBytes+1-len(ts.afterNUL))]...)
	if eol {
		ts.endLine()
	}
}

// endLine judges the complete line just read and starts the next one.
func (ts *tailScan) endLine() {
	i, nul := ts.line, ts.lineNUL
	text := ts.afterNUL
	ts.line, ts.lineNUL, ts.afterNUL = i+1, false, ts.afterNUL[:0]
	if i == 0 {
		ts.firstHasNUL = nul
		if !nul {
			return // the line that broke the chain
		}
	}
	jws := string(text) // more than MaxRecordBytes never decodes
	rec, err := DecodeRecord(jws)
	if err != nil {
		if !nul && ts.garbage == 0 {
			ts.garbage = i + 1
		}
		return
	}
	adjacent := !nul && ts.prevLine == i-1 // directly after the last record
	if ts.disorder == "" {
		after := ts.want // a record in the tail comes after the damaged one
		if ts.records > 0 {
			after = ts.lastSeq
		}
		switch {
		case rec.Seq <= after:
			ts.disorder = fmt.Sprintf("a record after the damage has seq %d, not after %d", rec.Seq, after)
		case adjacent && (rec.Seq != ts.lastSeq+1 || rec.Prev != ts.prevHash):
			ts.disorder = fmt.Sprintf("records %d and %d after the damage do not chain", ts.lastSeq, rec.Seq)
		}
	}
	if ts.records == 0 {
		ts.firstSeq = rec.Seq
	}
	ts.records++
	ts.lastSeq, ts.prevLine, ts.prevHash = rec.Seq, i, ChainHash(jws)
}

func isJWSByte(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'
}

// notTornBatch says why the tail is not a torn batch, or "" when it is:
// the segment is the last one; the first bad spot is a run of NULs (the
// line that broke the chain holds NUL bytes); what follows is only NUL
// runs, pieces of records and complete records that continue the log
// (seqs after want, the seq the damaged line was to hold, increasing, and
// chained where one directly follows another); and it all lies within
// maxTorn bytes of the last good record (one write of the writer).
func (ts *tailScan) notTornBatch(isLast bool, maxTorn int) string {
	switch {
	case !isLast:
		return "not the last segment: a sealed segment is never torn"
	case !ts.firstHasNUL:
		return "the damaged line holds no zero bytes: not a lost page"
	case ts.garbage > 0:
		return fmt.Sprintf("line %d after the damage is complete but not a record", ts.garbage)
	case ts.foreign >= 0:
		return fmt.Sprintf("byte %d after the damage is not part of a record", ts.foreign)
	case ts.torn > maxTorn:
		return fmt.Sprintf("%d bytes from the damage to the last record byte, more than one write (%d bytes) can leave", ts.torn, maxTorn)
	}
	return ts.disorder
}

// keepTornBytes writes b durably (file and directory fsynced) to the side
// file .torn-<segment>-<offset> in dir and returns its path. A file of that
// name left by an earlier attempt with the same bytes (a crash between
// keeping and cutting) is reused; anything else under that name is left
// alone, and a numbered name (.1, .2, …) is used: a side file is never
// overwritten. The caller holds the log's lock, so nobody else creates
// these names meanwhile.
func keepTornBytes(open openFunc, dir, seg string, off int64, b []byte) (string, error) {
	base := fmt.Sprintf("%s%s-%d", tornFilePrefix, seg, off)
	for i := 0; i < 100; i++ {
		name := base
		if i > 0 {
			name = fmt.Sprintf("%s.%d", base, i)
		}
		path := filepath.Join(dir, name)
		fi, err := os.Lstat(path)
		if errors.Is(err, fs.ErrNotExist) {
			if err := writeSideFile(open, path, b); err != nil {
				return "", fmt.Errorf("side file %s: %w", path, err)
			}
			return path, nil
		}
		if err != nil {
			return "", err
		}
		if fi.Mode().IsRegular() && fi.Size() == int64(len(b)) {
			same, err := fileHolds(path, b)
			if err != nil {
				return "", err
			}
			if same {
				// Complete (it got its name after its fsync); the
				// directory entry may not have been synced.
				return path, syncDir(dir)
			}
		}
	}
	return "", fmt.Errorf("too many side files named %s*", base)
}

// writeSideFile writes b to a temporary file (through open, 0600), fsyncs
// it, renames it to path and fsyncs the directory: the file has its name
// only once it is complete and durable.
func writeSideFile(open openFunc, path string, b []byte) (err error) {
	dir := filepath.Dir(path)
	// Not matched by .torn-*: a leftover is not taken for a side file.
	tmp := filepath.Join(dir, "."+filepath.Base(path)+".tmp")
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	f, err := open(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if _, err = f.WriteAt(b, 0); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(dir)
}

// fileHolds reports whether the file at path holds exactly b. It reads at
// most len(b)+1 bytes, however large the file is.
func fileHolds(path string, b []byte) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	got, err := io.ReadAll(io.LimitReader(f, int64(len(b))+1))
	if err != nil {
		return false, err
	}
	return bytes.Equal(got, b), nil
}

func truncateDurable(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("seal last segment: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("seal last segment: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("seal last segment: %w", err)
	}
	return nil
}
