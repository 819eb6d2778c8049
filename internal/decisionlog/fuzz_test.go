package decisionlog

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
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
func fuzzLines(n int) []string {
	k := fuzzKey()
	var out []string
	prev := ""
	for i := 1; i <= n; i++ {
		r := sampleRecord(i)
		r.Seq, r.KeyID, r.Log, r.Prev = uint64(i), k.kid, "fuzz", prev
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
