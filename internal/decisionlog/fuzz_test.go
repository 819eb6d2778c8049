package decisionlog

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
	"golang.org/x/mod/sumdb/note"
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

// fuzzReceipt is a valid receipt and the key set it verifies under.
func fuzzReceipt(f *testing.F) (string, KeySet) {
	k := fuzzKey()
	leaves := []Hash{LeafHash([]byte("a")), LeafHash([]byte("b")), LeafHash([]byte("c"))}
	lv := buildLevels(leaves)
	cp := Checkpoint{Origin: "fuzz", Size: 1003, Root: LeafHash([]byte("root")), BatchStart: 1000, BatchRoot: lv.root()}
	_, sig, err := signCheckpoint(cp, newNoteSigner("fuzz", k))
	if err != nil {
		f.Fatal(err)
	}
	r := CompactReceipt{Checkpoint: cp, Index: 1001, RecordHash: leaves[1], Proof: lv.proof(1),
		KeyHash: binary.BigEndian.Uint32(sig), Signature: sig[4:]}
	return r.Encode(), KeySet{k.kid: k.public()}
}

// FuzzParseReceipt: a receipt that parses is canonical (it encodes back to
// the same string), never panics in verification, and only the one valid
// receipt verifies.
func FuzzParseReceipt(f *testing.F) {
	valid, ks := fuzzReceipt(f)
	f.Add(valid)
	f.Add(valid[:len(valid)-4])
	f.Add("Ag")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseReceipt(s)
		if err != nil {
			return
		}
		if got := r.Encode(); got != s {
			t.Fatalf("not canonical: %q encodes as %q", s, got)
		}
		if r.Verify(mustVerifiersF(t, r.Checkpoint.Origin, ks)) == nil && s != valid {
			t.Fatalf("a receipt other than the signed one verifies: %q", s)
		}
	})
}

func mustVerifiersF(t *testing.T, origin string, ks KeySet) note.Verifiers {
	vs, err := NoteVerifiers(origin, ks)
	if err != nil {
		t.Fatal(err)
	}
	return vs
}

// FuzzCheckpointLine: a checkpoint line's note and a note text parse only
// in their canonical form (Text gives the same bytes back), the fast note
// reader agrees with the full line decoder, audit verify's reader of the
// canonical signed note (checked in batches) agrees with note.Open, and
// nothing panics.
func FuzzCheckpointLine(f *testing.F) {
	k := fuzzKey()
	ck := newCPKeys("fuzz", KeySet{k.kid: k.public()}, fastChecks())
	cp := Checkpoint{Origin: "fuzz", Size: 3, Root: LeafHash([]byte("r")), BatchStart: 1, BatchRoot: LeafHash([]byte("b"))}
	signed, _, err := signCheckpoint(cp, newNoteSigner("fuzz", k))
	if err != nil {
		f.Fatal(err)
	}
	tree := NewTree()
	for i := 0; i < 3; i++ {
		tree.Append(LeafHash([]byte{byte(i)}))
	}
	f.Add(encodeCheckpointLine(signed, tree.hashes))
	f.Add([]byte(`{"checkpoint":"x\n1\n","range":[]}`))
	f.Add([]byte(`{"checkpoint":"","range":["AAAA"],"x":1}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		if i := bytes.Index(line, []byte(`,"range":[`)); i > len(checkpointPrefix) && bytes.HasPrefix(line, []byte(checkpointPrefix)) {
			s := line[len(checkpointPrefix):i]
			var want string
			if fast, ok := unescapeNote(s); ok && (json.Unmarshal(s, &want) != nil || want != string(fast)) {
				t.Fatalf("unescapeNote(%q) = %q, json.Unmarshal: %q", s, fast, want)
			}
		}
		note, err1 := checkpointNote(line)
		full, _, err2 := decodeCheckpointLine(line)
		if err2 == nil && (err1 != nil || !bytes.Equal(note, full)) {
			t.Fatalf("the fast reader disagrees: %v, %q vs %q", err1, note, full)
		}
		if cp, bk, text, sig, ok := ck.canonical(note); ok {
			want, _, err := OpenCheckpoint(note, ck.vs)
			valid := voi.VerifyExpandedWithOptions(bk.x, text, sig, cofactored)
			if (err == nil) != valid || err == nil && want != cp {
				t.Fatalf("canonical note %q: %+v, signature %v; note.Open: %+v, %v", note, cp, valid, want, err)
			}
		}
		text, _, _ := strings.Cut(string(note), "\n\n")
		c, err := ParseCheckpoint(text + "\n")
		if err == nil && c.Text() != text+"\n" {
			t.Fatalf("not canonical: %q gives %q", text+"\n", c.Text())
		}
	})
}

// FuzzRecordLine: a line that decodes as a record has the head it claims,
// and the record writes back to a line with the same head.
func FuzzRecordLine(f *testing.F) {
	r := sampleRecord(1)
	p, _ := prepareRecord(r)
	f.Add(p.appendLine(nil, 7, "fuzz"))
	f.Add([]byte(`{"index":0,"log":"l","kind":"decision","time":"2026-01-02T15:04:05.000000Z"}`))
	f.Add([]byte(`{"index":01,"log":"l","kind":"decision"}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		h, herr := parseRecordHead(line)
		rec, err := decodeRecordLine(line)
		if err != nil {
			return
		}
		if herr != nil || rec.Index != h.index || rec.Log != h.log || rec.Kind != h.kind {
			t.Fatalf("decoded %+v, head %+v (%v)", rec, h, herr)
		}
		p, err := prepareRecord(rec)
		if err != nil {
			return
		}
		h2, err := parseRecordHead(p.appendLine(nil, rec.Index, rec.Log))
		if err != nil || h2 != h {
			t.Fatalf("rewritten head %+v (%v), want %+v", h2, err, h)
		}
	})
}

// FuzzOpenTail: whatever follows the last checkpoint of the last segment,
// Open either refuses and leaves the segment as it was, or recovers a log
// that verifies, where nothing but padding was dropped without a side
// file holding it.
func FuzzOpenTail(f *testing.F) {
	r := sampleRecord(9)
	p, _ := prepareRecord(r)
	rec := string(p.appendLine(nil, 3, "fuzz")) + "\n"
	f.Add([]byte(""))
	f.Add([]byte(rec))
	f.Add([]byte(rec[:50]))
	f.Add([]byte(rec + rec[:30] + "\x00\x00\x00"))
	f.Add([]byte("\x00\x00\x00\x00" + rec))
	f.Add([]byte("garbage\n"))
	f.Fuzz(func(t *testing.T, tail []byte) {
		if len(tail) > 1<<16 {
			return
		}
		o := testOptions(t)
		o.Name = "fuzz"
		l := mustOpen(t, o)
		appendN(t, l, 0, 3)
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		segs, _ := listSegments(o.Dir)
		path := filepath.Join(o.Dir, segs[len(segs)-1])
		before, _ := os.ReadFile(path)
		image := append(append([]byte{}, before...), tail...)
		if err := os.WriteFile(path, image, 0o640); err != nil {
			t.Fatal(err)
		}
		l, err := Open(o)
		if err != nil {
			if after, _ := os.ReadFile(path); !bytes.Equal(after, image) {
				t.Fatalf("Open refused (%v) but changed the segment", err)
			}
			return
		}
		l.Close()
		ks, _ := LoadKeySet(o.KeyDir)
		res, err := Verify(o.Dir, ks)
		if err != nil || res.Problem != nil || res.Records < 3 {
			t.Fatalf("recovered log: %+v %v", res, err)
		}
		// The segment as found = what the sealed segment kept (then at most
		// one checkpoint line Open added) + the side file's bytes + zeros.
		after, _ := os.ReadFile(path)
		g := 0
		for g < len(after) && g < len(image) && after[g] == image[g] {
			g++
		}
		g = bytes.LastIndexByte(after[:g], '\n') + 1
		if g < len(before) {
			t.Fatalf("the records before the tail changed (common prefix %d of %d)", g, len(before))
		}
		if rest := after[g:]; len(rest) > 0 && (!bytes.HasPrefix(rest, []byte(checkpointPrefix)) || bytes.IndexByte(rest, '\n') != len(rest)-1) {
			t.Fatalf("the sealed segment ends in %q, not in what was found or one checkpoint", rest)
		}
		var side []byte
		for _, f := range tornFiles(t, o.Dir) {
			b, _ := os.ReadFile(f)
			side = append(side, b...)
		}
		if !bytes.HasPrefix(image[g:], side) || len(bytes.Trim(image[g+len(side):], "\x00")) != 0 {
			t.Fatalf("bytes lost: %q after the kept lines, %q kept aside", image[g:], side)
		}
	})
}
