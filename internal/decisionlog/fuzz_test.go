package decisionlog

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// fuzzKey is derived from a fixed seed in code so the committed seed corpus
// holds validly signed records; it signs nothing outside this test.
func fuzzKey() *signingKey {
	return newSigningKey(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize)))
}

func fuzzSeedJWS() string {
	k := fuzzKey()
	r := sampleRecord(1)
	r.Seq, r.KeyID, r.Log = 1, k.kid, "fuzz"
	p, _ := r.MarshalJSON()
	_, jws := k.finish(k.signingInput(p))
	return jws
}

func FuzzDecodeRecord(f *testing.F) {
	f.Add(fuzzSeedJWS())
	f.Add("e30.e30.AAAA")
	f.Add("..")
	f.Add("eyJhbGciOiJFZERTQSJ9.eyJzZXEiOjF9.")
	k := fuzzKey()
	ks := KeySet{k.kid: k.public()}
	f.Fuzz(func(t *testing.T, s string) {
		rec, err := DecodeRecord(s)
		vrec, verr := VerifyRecord(s, ks)
		if verr == nil && err != nil {
			t.Fatalf("VerifyRecord accepted what DecodeRecord rejects: %v", err)
		}
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("decode error not ErrMalformed: %v", err)
			}
			return
		}
		if verr == nil && vrec.Seq != rec.Seq {
			t.Fatal("verify and decode disagree")
		}
		// Round trip: what decoded re-encodes to a record that decodes
		// to the same JSON.
		b1, err := rec.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		var again Record
		if err := again.UnmarshalJSON(b1); err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		b2, _ := again.MarshalJSON()
		if !bytes.Equal(b1, b2) {
			t.Fatalf("round trip differs:\n%s\n%s", b1, b2)
		}
	})
}

// fuzzLines returns n records (seq 1..n) signed by fuzzKey and chained,
// each with its LF.
func fuzzLines(n int) []string { return signedLines(fuzzKey(), "fuzz", n) }

// signedLines returns n records (seq 1..n) of log name signed by k and
// chained, each with its LF.
func signedLines(k *signingKey, name string, n int) []string {
	var out []string
	prev := ""
	for i := 1; i <= n; i++ {
		r := sampleRecord(i)
		r.Seq, r.KeyID, r.Log, r.Prev = uint64(i), k.kid, name, prev
		p, _ := r.MarshalJSON()
		_, jws := k.finish(k.signingInput(p))
		prev = ChainHash(jws)
		out = append(out, jws+"\n")
	}
	return out
}

// Whatever follows the records of the last segment, recovery either
// refuses and leaves everything as it was, or cuts the segment back to a
// prefix and keeps every non-padding byte it cut in a side file: the
// sealed segment, the side file and the zeros after it are the segment as
// found. Nothing is lost, and a side file stays within the bound.
func FuzzRecoverTail(f *testing.F) {
	lines := fuzzLines(4)
	good := strings.Join(lines[:3], "")
	f.Add([]byte(""))
	f.Add([]byte(lines[3][:100]))
	f.Add([]byte(lines[3]))
	f.Add([]byte(lines[3][:100] + "\x00\x00\x00" + lines[3][200:]))
	f.Add([]byte("\x00\x00\x00\x00" + lines[3]))
	f.Add([]byte("not a record\n\x00\x00"))
	f.Add([]byte(strings.Repeat("x", 600)))
	const maxTorn = 512
	f.Fuzz(func(t *testing.T, tail []byte) {
		dir := t.TempDir()
		name := segmentName(1)
		path := filepath.Join(dir, name)
		data := append([]byte(good), tail...)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		_, n, err := scanSegment(path, name, true, maxTorn, osOpenFile)
		after, rerr := os.ReadFile(path)
		if rerr != nil {
			t.Fatal(rerr)
		}
		sides, _ := filepath.Glob(filepath.Join(dir, "*"+tornFilePrefix+"*"))
		var cut *segmentTail
		switch {
		case err == nil:
			if !bytes.Equal(after, data) || len(sides) != 0 {
				t.Fatalf("nothing to cut, but the segment changed or side files %v appeared", sides)
			}
			return
		case !errors.As(err, &cut):
			if !errors.Is(err, ErrCorrupt) || !bytes.Equal(after, data) || len(sides) != 0 {
				t.Fatalf("refused (%v), but the segment changed or side files %v appeared", err, sides)
			}
			return
		}
		if n < int64(len(good)) || !bytes.Equal(after, data[:n]) {
			t.Fatalf("cut to %d bytes (good records end at %d), segment holds %d", n, len(good), len(after))
		}
		kept := []byte{}
		if cut.torn > 0 {
			if len(sides) != 1 || sides[0] != cut.sideFile || cut.torn > maxTorn {
				t.Fatalf("torn %d bytes: side files %v, reported %q", cut.torn, sides, cut.sideFile)
			}
			if kept, err = os.ReadFile(cut.sideFile); err != nil {
				t.Fatal(err)
			}
		} else if len(sides) != 0 {
			t.Fatalf("padding only, but side files %v", sides)
		}
		end := n + int64(len(kept))
		if end > int64(len(data)) || !bytes.Equal(data[n:end], kept) {
			t.Fatalf("the side file (%d bytes) does not hold the bytes cut at %d", len(kept), n)
		}
		if rest := data[end:]; len(bytes.Trim(rest, "\x00")) != 0 {
			t.Fatalf("the %d bytes cut after the side file's are not all padding", len(rest))
		}
	})
}

// FuzzScanSegment compares scanSegment, which streams the segment, with
// scanSegmentReference, the implementation it replaced (it read the whole
// file): on the same bytes, whether the segment is the last one and the
// same bound on torn bytes, both must return the same last record, good
// length, tail and error, and leave the same files behind.
func FuzzScanSegment(f *testing.F) {
	lines := fuzzLines(5)
	clean := strings.Join(lines, "")
	good := strings.Join(lines[:2], "")
	pad := strings.Repeat("\x00", 3000)
	long := strings.Repeat("A", MaxRecordBytes+1) // one byte too long for a record
	other := signedLines(fuzzKey(), "other", 5)   // a chain of other records
	longest := longestLine(3, ChainHash(strings.TrimSuffix(lines[1], "\n")))
	batch := pad[:64] + lines[3] + lines[4] // a torn batch: a lost page, then records
	for _, s := range []struct {
		data    string
		isLast  bool
		maxTorn uint16
	}{
		{"", true, 4096}, // empty file
		{clean, true, 4096},
		{clean + pad, true, 4096},                                        // zero padding
		{good + lines[2][:300] + pad, true, 4096},                        // torn record
		{good + lines[2][:300] + pad, true, 100},                         // ... beyond the bound
		{good + lines[2][:300] + pad, true, 300},                         // ... at the bound
		{good + lines[2][:300] + pad, true, 299},                         // ... one byte over
		{good + lines[2][:100] + pad[:200] + lines[2][300:], true, 4096}, // torn record, a lost page
		{good + batch + pad, true, 4096},                                 // torn batch
		{good + batch + pad, false, 4096},                                // ... in a sealed segment
		{good + batch + pad, true, 1000},                                 // ... beyond the bound
		{good + batch + pad, true, uint16(len(batch))},                   // ... at the bound
		{good + batch + pad, true, uint16(len(batch) - 1)},               // ... one byte over
		{good + pad[:64] + lines[4] + lines[3] + pad, true, 4096},        // ... out of order
		{good + pad[:64] + lines[1] + pad, true, 4096},                   // ... an earlier record
		// ... a torn record, then pieces of records and records.
		{good + lines[2][:50] + pad[:64] + lines[3][:40] + pad[:10] + lines[3][40:] + lines[4], true, 4096},
		{lines[0] + pad[:100] + strings.Join(lines[2:], ""), true, 4096},         // NUL damage in the middle
		{good + pad[:64] + "not a record\n" + lines[3] + pad, true, 4096},        // garbage after the damage
		{good + pad[:64] + "\x01" + lines[3] + pad, true, 4096},                  // a foreign byte
		{good + pad[:64] + lines[2][:50] + "\ngarbage\n" + lines[3], true, 4096}, // a garbage line
		{good + pad[:64] + lines[3] + other[4], true, 4096},                      // records that do not chain
		{clean + pad + "garbage after padding\n" + pad, true, 4096},              // garbage after padding
		{clean + pad + lines[3] + pad, true, 4096},                               // a record after padding
		{good + long + "\n" + lines[2], true, 4096},                              // a line longer than MaxRecordBytes
		{good + long[1:] + "\n" + lines[2], true, 4096},                          // ... exactly MaxRecordBytes
		{good + pad[:10] + long + "\x00" + lines[2], true, 4096},                 // ... in the tail, after a NUL
		{good + pad[:10] + long + lines[2], true, 65535},                         // ... running into a record
		{good + long, true, 4096},                                                // ... without its LF
		{good + longest + pad, true, 4096},                                       // a record of MaxRecordBytes
		{good + pad[:10] + longest[:len(longest)-1] + "A\n", true, 4096},         // ... and one byte more, after a NUL
		// With a 16-byte buffer, a NUL run that starts a piece.
		{good + lines[2][:16] + pad[:32] + lines[3] + lines[4], true, 4096},
	} {
		f.Add([]byte(s.data), s.isLast, s.maxTorn, uint8(0))
		f.Add([]byte(s.data), s.isLast, s.maxTorn, uint8(47))
	}
	f.Fuzz(func(t *testing.T, data []byte, isLast bool, maxTorn uint16, buf uint8) {
		want := scanOnce(t, scanSegmentReference, data, isLast, int(maxTorn))
		// The buffer's size as used, and a small one (bufio's least is
		// 16 bytes): the pieces of lines and of NUL runs fall anywhere.
		for _, size := range []int{scanBufBytes, 16 + int(buf)} {
			got := scanOnce(t, func(path, name string, isLast bool, maxTorn int, open openFunc) (*scannedLine, int64, error) {
				return scanSegmentBuf(path, name, isLast, maxTorn, open, size)
			}, data, isLast, int(maxTorn))
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("streaming scan (%d-byte buffer) differs from the reference:\n got %+v\nwant %+v", size, got, want)
			}
		}
	})
}

// longestLine returns the record seq (chained to prev) signed by fuzzKey
// whose JWS is exactly MaxRecordBytes long, the longest a line can be, with
// its LF.
func longestLine(seq uint64, prev string) string {
	k := fuzzKey()
	sign := func(idLen int) string {
		r := sampleRecord(int(seq))
		r.Seq, r.KeyID, r.Log, r.Prev = seq, k.kid, "fuzz", prev
		r.DecisionID = strings.Repeat("x", idLen)
		p, _ := r.MarshalJSON()
		_, jws := k.finish(k.signingInput(p))
		return jws
	}
	// Each byte of the id adds 4/3 of a byte of base64.
	n := len(sign(0))
	n = (MaxRecordBytes - n) * 3 / 4
	for i := n - 3; i <= n+3; i++ {
		if jws := sign(i); len(jws) == MaxRecordBytes {
			return jws + "\n"
		}
	}
	panic("no record of MaxRecordBytes")
}

// scanOutcome is what a scan returned and left in its directory, with the
// directory's path taken out.
type scanOutcome struct {
	Last    *string
	Good    int64
	Tail    *segmentTail
	Batch   *tornBatchCut
	Err     string
	Corrupt bool
	Files   map[string]string // every file left in the directory: name → contents
}

func scanOnce(t *testing.T, scan func(path, name string, isLast bool, maxTorn int, open openFunc) (*scannedLine, int64, error), data []byte, isLast bool, maxTorn int) scanOutcome {
	t.Helper()
	dir := t.TempDir()
	name := segmentName(1)
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	last, good, err := scan(path, name, isLast, maxTorn, osOpenFile)
	var out scanOutcome
	out.Good = good
	if last != nil {
		out.Last = &last.jws
	}
	var tail *segmentTail
	if errors.As(err, &tail) {
		c := *tail
		c.sideFile = strings.TrimPrefix(c.sideFile, dir)
		out.Tail, out.Batch, c.batch = &c, c.batch, nil
	}
	if err != nil {
		out.Err = strings.ReplaceAll(err.Error(), dir, "DIR")
		out.Corrupt = errors.Is(err, ErrCorrupt)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out.Files = map[string]string{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out.Files[e.Name()] = string(b)
	}
	return out
}
