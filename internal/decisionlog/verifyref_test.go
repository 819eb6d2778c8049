package decisionlog

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha512"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/big"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/oasisprotocol/curve25519-voi/curve"
	"github.com/oasisprotocol/curve25519-voi/curve/scalar"
	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
	"golang.org/x/mod/sumdb/note"
)

// referenceChecks are the checks audit verify made before it was tuned:
// encoding/json's validator, crypto/ed25519 through sumdb/note's own
// verifier, and one chunk at a time.
func referenceChecks() lineChecks {
	return lineChecks{validJSON: json.Valid, serial: true, verifiers: func(origin string, ks KeySet) (note.Verifiers, error) {
		var vs []note.Verifier
		for _, kid := range ks.KIDs() {
			vk, err := NoteVerifierKey(origin, ks[kid])
			if err != nil {
				return nil, err
			}
			v, err := note.NewVerifier(vk)
			if err != nil {
				return nil, err
			}
			vs = append(vs, v)
		}
		return note.VerifierList(vs...), nil
	}}
}

// TestVerifyMatchesReference: Verify (lines prepared on every CPU, the
// fast JSON validator, curve25519-voi) gives the reference's result —
// the same first bad index, kind, place, and the same last good
// checkpoint — on an intact log and on hundreds of random damages of
// every kind: a changed byte in a record or a checkpoint, a removed,
// repeated, swapped or foreign line, a NUL, a cut, across segments, chunk
// boundaries and a key rotation.
func TestVerifyMatchesReference(t *testing.T) {
	o := testOptions(t)
	o.SegmentMaxBytes = 256 << 10
	l := mustOpen(t, o)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() { appendN(t, l, w*1000, 150) })
	}
	wg.Wait()
	if _, err := l.Rotate(); err != nil {
		t.Fatal(err)
	}
	for w := range 8 {
		wg.Go(func() { appendN(t, l, 10000+w*1000, 150) })
	}
	wg.Wait()
	ks := l.PublicKeys()
	first := KeySet{}
	for kid, pub := range ks {
		if kid != l.KeyID() {
			first[kid] = pub // only the key that signed first is trusted
		}
	}
	l.Close()
	segs, _ := listSegments(o.Dir)
	if len(segs) < 3 {
		t.Fatalf("%d segments, want several", len(segs))
	}
	orig := map[string][]byte{}
	for _, s := range segs {
		orig[s], _ = os.ReadFile(filepath.Join(o.Dir, s))
	}
	kinds := map[string]int{}
	compare := func(t *testing.T, what string) *Result {
		t.Helper()
		got, err := Verify(o.Dir, first)
		if err != nil {
			t.Fatal(err)
		}
		want, err := verifyV2(o.Dir, segs, first, referenceChecks())
		if err != nil {
			t.Fatal(err)
		}
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(want)
		if !bytes.Equal(g, w) {
			t.Fatalf("%s:\nVerify    %s\nreference %s", what, g, w)
		}
		if got.Problem != nil {
			kinds[got.Problem.Kind]++
		}
		return got
	}
	compare(t, "intact")
	if r, _ := Verify(o.Dir, first); r.Problem != nil || len(r.KeyIDs) != 2 {
		t.Fatalf("intact log: %+v", r)
	}

	rng := rand.New(rand.NewPCG(7, 24))
	lines := func(b []byte) [][]byte { return bytes.SplitAfter(bytes.TrimRight(b, "\x00"), []byte("\n")) }
	damages := []struct {
		name string
		f    func(ls [][]byte) [][]byte
	}{
		{"byte changed", func(ls [][]byte) [][]byte {
			i := rng.IntN(len(ls) - 1)
			b := append([]byte(nil), ls[i]...)
			b[rng.IntN(len(b)-1)] ^= byte(1 + rng.IntN(255))
			ls[i] = b
			return ls
		}},
		{"line removed", func(ls [][]byte) [][]byte { i := rng.IntN(len(ls) - 1); return append(ls[:i:i], ls[i+1:]...) }},
		{"line repeated", func(ls [][]byte) [][]byte {
			i := rng.IntN(len(ls) - 1)
			return append(append(ls[:i+1:i+1], ls[i]), ls[i+1:]...)
		}},
		{"lines swapped", func(ls [][]byte) [][]byte {
			i := rng.IntN(len(ls) - 2)
			ls[i], ls[i+1] = ls[i+1], ls[i]
			return ls
		}},
		{"foreign line", func(ls [][]byte) [][]byte {
			i := rng.IntN(len(ls) - 1)
			return append(append(ls[:i:i], []byte(`{"index":1,"log":"test-1","kind":"decision","x":[}`+"\n")), ls[i:]...)
		}},
		{"not JSON after a good head", func(ls [][]byte) [][]byte {
			for range 50 {
				i := rng.IntN(len(ls) - 1)
				if bytes.HasPrefix(ls[i], []byte(recordPrefix)) {
					ls[i] = bytes.Replace(ls[i], []byte(`"agent":{`), []byte(`"agent":{,`), 1)
					break
				}
			}
			return ls
		}},
		{"NUL", func(ls [][]byte) [][]byte {
			i := rng.IntN(len(ls) - 1)
			b := append([]byte(nil), ls[i]...)
			b[rng.IntN(len(b)-1)] = 0
			ls[i] = b
			return ls
		}},
		// A signature that still parses but does not verify: the batch
		// check fails and each signature of the chunk is checked alone.
		{"checkpoint signature changed", func(ls [][]byte) [][]byte { return badSignatures(rng, ls, 1) }},
		{"two checkpoint signatures changed", func(ls [][]byte) [][]byte { return badSignatures(rng, ls, 2) }},
		{"cut", func(ls [][]byte) [][]byte {
			i := rng.IntN(len(ls) - 1)
			ls[i] = ls[i][:rng.IntN(len(ls[i]))]
			return ls[:i+1]
		}},
	}
	for round := range 12 {
		for _, d := range damages {
			seg := segs[rng.IntN(len(segs))]
			path := filepath.Join(o.Dir, seg)
			ls := d.f(lines(orig[seg]))
			if err := os.WriteFile(path, bytes.Join(ls, nil), 0o640); err != nil {
				t.Fatal(err)
			}
			got := compare(t, fmt.Sprintf("round %d: %s in %s", round, d.name, seg))
			if strings.Contains(d.name, "signature") && (got.Problem == nil || got.Problem.Kind != KindBadCheckpoint || !strings.Contains(got.Problem.Detail, "signature")) {
				t.Fatalf("round %d: %s in %s: %+v", round, d.name, seg, got.Problem)
			}
			if err := os.WriteFile(path, orig[seg], 0o640); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The end covered by no checkpoint, and a segment under another name.
	last := filepath.Join(o.Dir, segs[len(segs)-1])
	ls := lines(orig[segs[len(segs)-1]])
	if err := os.WriteFile(last, bytes.Join(ls[:len(ls)-2], nil), 0o640); err != nil {
		t.Fatal(err)
	}
	compare(t, "last checkpoint removed")
	if err := os.WriteFile(last, orig[segs[len(segs)-1]], 0o640); err != nil {
		t.Fatal(err)
	}
	n, _ := parseSegmentName(segs[1])
	renamed := filepath.Join(o.Dir, segmentName(n+1))
	if err := os.Rename(filepath.Join(o.Dir, segs[1]), renamed); err != nil {
		t.Fatal(err)
	}
	segs[1] = segmentName(n + 1)
	compare(t, "segment renamed")
	if len(kinds) < 8 {
		t.Errorf("the damages found only %v", kinds)
	}
	t.Logf("damage found: %v", kinds)
}

// badSignatures changes one base64 character of the Ed25519 signature of
// n random checkpoint lines (the line still parses).
func badSignatures(rng *rand.Rand, ls [][]byte, n int) [][]byte {
	var cps []int
	for i, l := range ls {
		if bytes.HasPrefix(l, []byte(checkpointPrefix)) {
			cps = append(cps, i)
		}
	}
	for range n {
		i := cps[rng.IntN(len(cps))]
		b := append([]byte(nil), ls[i]...)
		at := bytes.Index(b, []byte("\u2014 ")) + len("\u2014 ")
		at += bytes.IndexByte(b[at:], ' ') + 1 + 8 + rng.IntN(70) // past the name and the key hash
		if b[at] == 'A' {
			b[at] = 'B'
		} else {
			b[at] = 'A'
		}
		ls[i] = b
	}
	return ls
}

// TestVerifyCofactored pins the one way audit verify's verdict differs
// from crypto/ed25519's: it checks checkpoint signatures with RFC 8032's
// cofactored equation (in batches), so it accepts a signature whose R has
// a small-order component, which crypto/ed25519 (cofactorless) refuses.
// Only the key's holder can make one: it proves the holder signed the
// checkpoint as much as any other signature does.
func TestVerifyCofactored(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "log")
	ks, priv := writeBatchedLog(t, dir, "test-1", 3, 3)
	path := filepath.Join(dir, segmentName(0))
	seg, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ls := bytes.SplitAfter(seg, []byte("\n"))
	cpLine := ls[3]
	signed, err := checkpointNote(bytes.TrimSuffix(cpLine, []byte("\n")))
	if err != nil {
		t.Fatal(err)
	}
	text, _, _ := bytes.Cut(signed, []byte("\n\n"))
	text = append(text, '\n')

	// sig = (R', S) with R' = rB + T (T of order 2) and S = r + H(R' ‖ A ‖ M)·a.
	h := sha512.Sum512(priv.Seed())
	h[0] &= 248
	h[31] &= 127
	h[31] |= 64
	var a, r, k, s scalar.Scalar
	if _, err := a.SetBytesModOrder(h[:32]); err != nil {
		t.Fatal(err)
	}
	if _, err := r.SetRandom(nil); err != nil {
		t.Fatal(err)
	}
	var R, T curve.EdwardsPoint
	R.MulBasepoint(curve.ED25519_BASEPOINT_TABLE, &r)
	var tc curve.CompressedEdwardsY
	minusOne := littleEndian(new(big.Int).Sub(p25519(), big.NewInt(1))) // (0, -1)
	if _, err := tc.SetBytes(minusOne); err != nil {
		t.Fatal(err)
	}
	if _, err := T.SetCompressedY(&tc); err != nil {
		t.Fatal(err)
	}
	R.Add(&R, &T)
	var rc curve.CompressedEdwardsY
	rc.SetEdwardsPoint(&R)
	pub := priv.Public().(ed25519.PublicKey)
	kh := sha512.New()
	kh.Write(rc[:])
	kh.Write(pub)
	kh.Write(text)
	if _, err := k.SetBytesModOrderWide(kh.Sum(nil)); err != nil {
		t.Fatal(err)
	}
	s.Mul(&k, &a)
	s.Add(&s, &r)
	sig := append([]byte(nil), rc[:]...)
	sig = append(sig, make([]byte, 32)...)
	if err := s.ToBytes(sig[32:]); err != nil {
		t.Fatal(err)
	}
	if ed25519.Verify(pub, text, sig) || !voi.VerifyWithOptions(voi.PublicKey(pub), text, sig, cofactored) {
		t.Fatal("the crafted signature is not the case this test is about")
	}
	var kb [4]byte
	binary.BigEndian.PutUint32(kb[:], noteKeyHash("test-1", pub))
	old := base64.StdEncoding.EncodeToString(append(kb[:], ed25519.Sign(priv, text)...))
	crafted := base64.StdEncoding.EncodeToString(append(kb[:], sig...))
	if !bytes.Contains(cpLine, []byte(old)) {
		t.Fatal("signature not found in the checkpoint line")
	}
	ls[3] = bytes.Replace(cpLine, []byte(old), []byte(crafted), 1)
	if err := os.WriteFile(path, bytes.Join(ls, nil), 0o640); err != nil {
		t.Fatal(err)
	}
	got, err := Verify(dir, ks)
	if err != nil || got.Problem != nil {
		t.Fatalf("Verify: %v %+v", err, got.Problem)
	}
	segs, _ := listSegments(dir)
	want, err := verifyV2(dir, segs, ks, referenceChecks())
	if err != nil || want.Problem == nil || want.Problem.Kind != KindBadCheckpoint {
		t.Fatalf("reference (crypto/ed25519): %v %+v", err, want.Problem)
	}
}
