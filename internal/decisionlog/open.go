package decisionlog

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/mod/sumdb/note"

	"github.com/agentauthz/agentauthz/internal/durable"
)

// Recovery on Open.
//
// The writer appends each batch as its record lines followed by the line of
// the checkpoint that covers them, in one write (per maxWriteBytes) and one
// fdatasync, and acknowledges (sync mode) only after that. So after a crash
// the last segment is: records and checkpoints up to the last checkpoint,
// then possibly complete records that no checkpoint covers yet, then
// possibly the torn rest of the write in flight (a partial line; after a
// power loss, zeros where pages were lost and pieces of lines), then the
// zero padding of the preallocated segment.
//
// Open keeps the complete records after the last checkpoint (they are on
// disk; it writes the checkpoint that covers them, the same one the writer
// would have), cuts the torn rest off — keeping its bytes in a side file —
// and seals the segment. It refuses (ErrCorrupt) damage that a crash cannot
// leave: a checkpoint after the damage (signed records would be cut), more
// torn bytes than one write, or a last checkpoint that does not verify.

// tornFilePrefix starts the name of a side file that keeps the bytes cut
// off a segment: .torn-<segment>-<offset>. Readers and listSegments ignore
// it (it is not a segment name).
const tornFilePrefix = ".torn-"

// openScan is what scanning a segment found.
type openScan struct {
	next     uint64   // the index after the last complete record
	cp       []byte   // the last checkpoint line (without LF), nil if none
	cpEnd    int64    // offset after it
	cpNext   uint64   // the index after the records it covers
	rotKey   string   // new_kid of the last rotation record before cp, after the checkpoint before it
	after    [][]byte // complete records after cp (or from the start if none)
	afterOff []int64  // the offset of each
	afterRot string   // new_kid of the last rotation record among after
	lastData int64    // offset after the last non-NUL byte
	good     int64    // offset after the last complete, well-formed line
	damage   string   // why scanning stopped before the end of the data ("" at a clean end)
	cpAfter  bool     // a checkpoint line appears after the damage
	torn     int64    // bytes from good to the last non-NUL byte
	size     int64
}

// scanSegmentV2 reads a segment, checking only the form of each line: a
// record line's head (index in order) or a checkpoint line's JSON. The last
// checkpoint's signature is checked by the caller.
func scanSegmentV2(path string, first uint64) (*openScan, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read segment: %w", err)
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 64<<10)
	s := &openScan{next: first}
	var off int64
	var pendingRot string
	var buf []byte
	for {
		buf = buf[:0]
		var rerr error
		var n, lastNonNUL int64 = 0, -1 // bytes of the line, offset in it of its last non-NUL byte
		for {
			chunk, err := br.ReadSlice('\n')
			if t := bytes.TrimRight(chunk, "\x00"); len(t) > 0 {
				lastNonNUL = n + int64(len(t)) - 1
			}
			n += int64(len(chunk))
			buf = append(buf, chunk[:min(len(chunk), max(0, MaxRecordBytes+1-len(buf)))]...)
			if !errors.Is(err, bufio.ErrBufferFull) {
				rerr = err
				break
			}
		}
		if rerr != nil && !errors.Is(rerr, io.EOF) {
			return nil, fmt.Errorf("read segment: %w", rerr)
		}
		if n == 0 {
			break
		}
		line := buf
		complete := line[len(line)-1] == '\n' && int64(len(buf)) == n
		if complete {
			line = line[:len(line)-1]
		}
		ok := complete && bytes.IndexByte(line, 0) < 0
		switch {
		case lastNonNUL < 0 && !complete:
			// Zeros to the end of the file: the padding.
		case !ok:
			if s.damage == "" {
				s.damage = "a partial line, or one holding NUL bytes"
			}
		case s.damage != "":
			if bytes.HasPrefix(line, []byte(checkpointPrefix)) {
				s.cpAfter = true
			}
		case bytes.HasPrefix(line, []byte(checkpointPrefix)):
			if _, _, err := decodeCheckpointLine(line); err != nil {
				s.damage = err.Error()
				break
			}
			s.cp, s.cpEnd, s.cpNext = append([]byte(nil), line...), off+n, s.next
			s.rotKey, pendingRot = pendingRot, ""
			s.after, s.afterOff, s.afterRot = nil, nil, ""
			s.good = off + n
		default:
			h, err := parseRecordHead(line)
			if err != nil {
				s.damage = err.Error()
				break
			}
			if h.index != s.next {
				s.damage = fmt.Sprintf("record index %d where %d was due", h.index, s.next)
				break
			}
			if h.kind == KindKeyRotation {
				r, err := decodeRecordLine(line)
				if err != nil {
					s.damage = err.Error()
					break
				}
				pendingRot = r.KeyRotation.NewKeyID
				s.afterRot = pendingRot
			}
			s.after = append(s.after, append([]byte(nil), line...))
			s.afterOff = append(s.afterOff, off)
			s.next++
			s.good = off + n
		}
		if lastNonNUL >= 0 {
			s.lastData = off + lastNonNUL + 1
		}
		if s.damage != "" && lastNonNUL >= 0 {
			s.torn = s.lastData - s.good
		}
		off += n
		if rerr != nil {
			break
		}
	}
	s.size = off
	// Open signs the records after the last checkpoint: each must be a
	// whole, valid record, not only a good head. The first that is not
	// is where the torn tail starts.
	s.afterRot = ""
	for i, rec := range s.after {
		r, err := decodeRecordLine(rec)
		if err != nil {
			s.damage = err.Error()
			s.good, s.after = s.afterOff[i], s.after[:i]
			s.next = first
			if s.cp != nil {
				s.next = s.cpNext
			}
			s.next += uint64(i)
			s.torn = s.lastData - s.good
			break
		}
		if r.Kind == KindKeyRotation {
			s.afterRot = r.KeyRotation.NewKeyID
		}
	}
	return s, nil
}

// recoverOnOpen finds the last checkpoint, keeps the records after it,
// cuts a torn tail off the last segment (and its padding: the segment is
// sealed), and sets next, key, tree and wkey. The first batch after Open
// starts a new segment.
func (l *Log) recoverOnOpen() error {
	var err error
	if l.keys, err = loadSigningKeys(l.opts.KeyDir); err != nil {
		return err
	}
	if err := checkKeyPerms(l.opts.KeyDir); err != nil {
		return err
	}
	segs, err := listSegments(l.opts.Dir)
	if err != nil {
		return fmt.Errorf("list segments: %w", err)
	}
	if len(segs) > 0 {
		if v1, err := isV1Segment(filepath.Join(l.opts.Dir, segs[0])); err != nil {
			return err
		} else if v1 {
			return fmt.Errorf("%w: %s holds a v1 decision log (one JWS per record); this version writes v2 (a Merkle tree with signed checkpoints): keep the v1 log and start a new one with agentauthz audit migrate", ErrV1Log, l.opts.Dir)
		}
	}
	ks := KeySet{}
	for _, k := range l.keys {
		ks.Add(k.public())
	}
	verifiers, err := NoteVerifiers(l.opts.Name, ks)
	if err != nil {
		return err
	}
	var after [][]byte
	var afterRot string
	for i := len(segs) - 1; i >= 0; i-- {
		name := segs[i]
		path := filepath.Join(l.opts.Dir, name)
		first, _ := parseSegmentName(name)
		s, err := scanSegmentV2(path, first)
		if err != nil {
			return err
		}
		last := i == len(segs)-1
		if s.damage != "" {
			switch {
			case !last:
				return fmt.Errorf("%w: %s: %s at byte %d of a sealed segment; run agentauthz audit verify", ErrCorrupt, name, s.damage, s.good)
			case s.cpAfter:
				return fmt.Errorf("%w: %s: %s at byte %d, followed by checkpointed records; run agentauthz audit verify", ErrCorrupt, name, s.damage, s.good)
			case s.torn > int64(l.opts.maxWrite):
				return fmt.Errorf("%w: %s: %d damaged bytes after byte %d, more than one write (%d bytes) can leave; run agentauthz audit verify", ErrCorrupt, name, s.torn, s.good, l.opts.maxWrite)
			}
		}
		if len(s.after) > MaxBatch {
			// More records than one checkpoint covers cannot be left by
			// the writer; keep what one checkpoint can cover.
			return fmt.Errorf("%w: %s: %d records after the last checkpoint; run agentauthz audit verify", ErrCorrupt, name, len(s.after))
		}
		if last && s.size > s.good {
			if err := l.cutTail(path, name, s); err != nil {
				return err
			}
		}
		if s.cp == nil {
			if len(s.after) > 0 && !last {
				return fmt.Errorf("%w: sealed segment %s has no checkpoint", ErrCorrupt, name)
			}
			if len(s.after) == 0 {
				if err := os.Remove(path); err != nil {
					return fmt.Errorf("remove empty segment: %w", err)
				}
				if err := durable.SyncDir(l.opts.Dir); err != nil {
					return fmt.Errorf("sync log dir: %w", err)
				}
				l.logger.Warn("removed segment without a complete record", "segment", name)
				continue
			}
			// Records but no checkpoint in the last segment: the
			// checkpoint before them ends the previous segment.
			after, afterRot = s.after, s.afterRot
			continue
		}
		if !last && len(s.after) > 0 {
			return fmt.Errorf("%w: sealed segment %s ends in records no checkpoint covers", ErrCorrupt, name)
		}
		if last {
			after, afterRot = s.after, s.afterRot
		}
		return l.resume(path, s, after, afterRot, verifiers)
	}
	if len(after) > 0 {
		return fmt.Errorf("%w: records but no checkpoint in %s", ErrCorrupt, l.opts.Dir)
	}
	// Empty log: use the current key, the only key, or a new one.
	if b, err := durable.ReadFile(filepath.Join(l.opts.KeyDir, currentKeyFile), 1<<10); err == nil { // a kid is 43 bytes
		l.key = l.keys[strings.TrimSpace(string(b))]
	}
	if l.key == nil && len(l.keys) == 1 {
		for _, k := range l.keys {
			l.key = k
		}
	}
	if l.key == nil {
		k, err := generateSigningKey(l.opts.KeyDir)
		if err != nil {
			return err
		}
		l.keys[k.kid] = k
		l.key = k
		l.logger.Info("generated decision log signing key", "kid", k.kid)
	}
	if err := durable.WriteFile(filepath.Join(l.opts.KeyDir, currentKeyFile), []byte(l.key.kid+"\n"), 0o600); err != nil {
		return fmt.Errorf("write current key id: %w", err)
	}
	l.next, l.wkey, l.tree = 0, l.key, NewTree()
	return nil
}

// ErrV1Log means Open found a v1 log (see audit migrate).
var ErrV1Log = errors.New("decision log is v1")

// isV1Segment reports whether a segment starts with a JWS (a v1 record).
func isV1Segment(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("read segment: %w", err)
	}
	defer f.Close()
	var b [2]byte
	n, _ := io.ReadFull(f, b[:])
	return n == 2 && string(b[:]) == "ey", nil
}

// resume rebuilds the tree from the last checkpoint (found in s, in the
// segment at path), verifies it, and covers the records after it with a
// new checkpoint appended to the last segment.
func (l *Log) resume(path string, s *openScan, after [][]byte, afterRot string, verifiers note.Verifiers) error {
	signed, hashes, err := decodeCheckpointLine(s.cp)
	if err != nil {
		return fmt.Errorf("%w: last checkpoint: %v", ErrCorrupt, err)
	}
	if n, err := note.Open(signed, note.VerifierList()); err != nil {
		var u *note.UnverifiedNoteError
		if errors.As(err, &u) && !strings.HasPrefix(u.Note.Text, l.opts.Name+"\n") {
			origin, _, _ := strings.Cut(u.Note.Text, "\n")
			return fmt.Errorf("the decision log in %s is named %q, not %q: a log keeps its name (it is in every checkpoint); set the name back", l.opts.Dir, origin, l.opts.Name)
		}
		_ = n
	}
	cp, v, err := OpenCheckpoint(signed, verifiers)
	if err != nil {
		return fmt.Errorf("%w: last checkpoint of %s: %v", ErrCorrupt, filepath.Base(path), err)
	}
	if cp.Size != s.cpNext {
		return fmt.Errorf("%w: last checkpoint of %s has size %d after record %d", ErrCorrupt, filepath.Base(path), cp.Size, s.cpNext-1)
	}
	tree, err := NewTreeFromRange(cp.Size, hashes)
	if err != nil || tree.Root() != cp.Root {
		return fmt.Errorf("%w: the stored tree state does not match the last checkpoint of %s", ErrCorrupt, filepath.Base(path))
	}
	var signer *signingKey
	for _, k := range l.keys {
		if noteKeyHash(l.opts.Name, k.public()) == v.KeyHash() {
			signer = k
		}
	}
	if signer == nil {
		return fmt.Errorf("the key that signed the last checkpoint is not in %s", l.opts.KeyDir)
	}
	key := func(kid string) (*signingKey, error) {
		k, ok := l.keys[kid]
		if !ok {
			return nil, fmt.Errorf("signing key %s announced in the log is not in %s", kid, l.opts.KeyDir)
		}
		return k, nil
	}
	l.tree, l.wkey, l.key = tree, signer, signer
	if s.rotKey != "" {
		if l.wkey, err = key(s.rotKey); err != nil {
			return err
		}
		l.key = l.wkey
	}
	l.next = cp.Size
	l.latest.Store(&signed)
	if len(after) > 0 {
		b := &batch{lines: after, first: cp.Size}
		if afterRot != "" {
			k, err := key(afterRot)
			if err != nil {
				return err
			}
			b.rot = []rotation{{idx: len(after) - 1, key: k}} // seal only needs the last one
			l.key = k
		}
		if err := l.seal(b); err != nil {
			return err
		}
		line := b.out[len(b.out)-1]
		if err := appendDurable(l.lastSegment(), line); err != nil {
			return fmt.Errorf("write the checkpoint of the records after the last one: %w", err)
		}
		if signed, _, err := decodeCheckpointLine(line[:len(line)-1]); err == nil {
			l.latest.Store(&signed)
		}
		l.logger.Warn("decision log: covered the records after the last checkpoint with a new one (a crash before their checkpoint was written)",
			"records", len(after), "first_index", cp.Size, "size", l.tree.Size())
		l.next = l.tree.Size()
	}
	return nil
}

func (l *Log) lastSegment() string {
	segs, _ := listSegments(l.opts.Dir)
	return filepath.Join(l.opts.Dir, segs[len(segs)-1])
}

func appendDurable(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// cutTail keeps the torn bytes of the last segment in a side file, then cuts
// the segment back to its last good line (dropping the padding too).
func (l *Log) cutTail(path, name string, s *openScan) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("read segment: %w", err)
	}
	defer f.Close()
	if s.torn > 0 {
		torn := make([]byte, s.torn)
		if _, err := f.ReadAt(torn, s.good); err != nil {
			return fmt.Errorf("read segment: %w", err)
		}
		side, err := keepTornBytes(l.opts.openFile, l.opts.Dir, name, s.good, torn)
		if err != nil {
			return fmt.Errorf("keep the %d torn bytes at the end of %s before cutting them (nothing was cut): %w", s.torn, name, err)
		}
		l.m.recovered.WithLabelValues("torn_record").Inc()
		l.logger.Error("decision log: cut a torn write off the end of the log (a crash during a write); the cut bytes are kept in side_file",
			"note", "no checkpoint covered them, so none of their records was acknowledged in sync mode",
			"segment", name, "offset", s.good, "bytes", s.torn, "reason", s.damage, "side_file", side)
	}
	if pad := s.size - s.good - s.torn; pad > 0 {
		l.logger.Info("decision log: sealed the last segment (removed its unwritten zero padding)", "segment", name, "bytes", pad, "offset", s.good)
	}
	return truncateDurable(path, s.good)
}
