package decisionlog

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

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
	compare := func(t *testing.T, what string) {
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
			compare(t, fmt.Sprintf("round %d: %s in %s", round, d.name, seg))
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
