package decisionlog

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeV1Log writes a v1 log (one JWS per line, hash-chained) as the v1
// writer did: n records, a new segment every segSize records, a key
// rotation record signed by the old key after rotateAfter records (0:
// none). The keys are in o.KeyDir. Only v1 logs are read now; these tests
// keep their verification honest.
func writeV1Log(t *testing.T, o Options, n, segSize, rotateAfter int) KeySet {
	t.Helper()
	if err := os.MkdirAll(o.Dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(o.KeyDir, 0o700); err != nil {
		t.Fatal(err)
	}
	k, err := generateSigningKey(o.KeyDir)
	if err != nil {
		t.Fatal(err)
	}
	ks := KeySet{k.kid: k.public()}
	prev := ""
	var seg []byte
	segFirst := uint64(1)
	flush := func(next uint64) {
		if len(seg) > 0 {
			if err := os.WriteFile(filepath.Join(o.Dir, segmentName(segFirst)), seg, 0o640); err != nil {
				t.Fatal(err)
			}
		}
		seg, segFirst = nil, next
	}
	for seq := uint64(1); seq <= uint64(n); seq++ {
		if segSize > 0 && seq > 1 && (seq-1)%uint64(segSize) == 0 {
			flush(seq)
		}
		r := sampleRecord(int(seq - 1))
		var next *signingKey
		if rotateAfter > 0 && seq == uint64(rotateAfter)+1 {
			if next, err = generateSigningKey(o.KeyDir); err != nil {
				t.Fatal(err)
			}
			ks.Add(next.public())
			r = &Record{Kind: KindKeyRotation, Time: r.Time, Decision: Decision{Reasons: []string{}},
				KeyRotation: &KeyRotation{NewKeyID: next.kid, NewKey: b64.EncodeToString(next.public())}}
		}
		r.Seq, r.KeyID, r.Prev, r.Log = seq, k.kid, prev, "test-1"
		p, err := r.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		line, jws := k.finish(k.signingInput(p))
		prev = ChainHash(jws)
		seg = append(seg, line...)
		if next != nil {
			k = next
		}
	}
	flush(0)
	return ks
}

// tamperLog builds a 15-record v1 log in three segments of five records:
// seqs 1-5, 6-10, 11-15.
func tamperLog(t *testing.T) (Options, KeySet) {
	t.Helper()
	o := testOptions(t)
	ks := writeV1Log(t, o, 15, 5, 0)
	segs, _ := listSegments(o.Dir)
	if len(segs) != 3 || segs[1] != segmentName(6) || segs[2] != segmentName(11) {
		t.Fatalf("segments %v", segs)
	}
	return o, ks
}

type segLines struct {
	path  string
	lines []string // each with its '\n'
}

func readSeg(t *testing.T, o Options, firstSeq uint64) *segLines {
	t.Helper()
	p := filepath.Join(o.Dir, segmentName(firstSeq))
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(b), "\n")
	return &segLines{path: p, lines: lines[:len(lines)-1]} // drop the "" after the last newline
}

func (s *segLines) write(t *testing.T) {
	t.Helper()
	if err := os.WriteFile(s.path, []byte(strings.Join(s.lines, "")), 0o640); err != nil {
		t.Fatal(err)
	}
}

func foreignLine(t *testing.T, seq uint64, prev string) string {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	k := newSigningKey(priv)
	r := sampleRecord(99)
	r.Seq, r.KeyID, r.Prev, r.Log = seq, k.kid, prev, "test-1"
	b, err := r.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	line, _ := k.finish(k.signingInput(b))
	return string(line)
}

func TestVerifyDetectsTampering(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(t *testing.T, o Options)
		kind   string
		seq    uint64
	}{
		{"flip a payload byte", func(t *testing.T, o Options) {
			s := readSeg(t, o, 6)
			b := []byte(s.lines[1]) // seq 7
			i := strings.IndexByte(s.lines[1], '.') + 40
			b[i] ^= 0x01
			s.lines[1] = string(b)
			s.write(t)
		}, KindModified, 7},
		{"flip a signature byte", func(t *testing.T, o Options) {
			s := readSeg(t, o, 6)
			b := []byte(s.lines[1])
			b[len(b)-10] = map[bool]byte{true: 'A', false: 'B'}[b[len(b)-10] != 'A']
			s.lines[1] = string(b)
			s.write(t)
		}, KindModified, 7},
		{"flip a header byte", func(t *testing.T, o Options) {
			s := readSeg(t, o, 6)
			b := []byte(s.lines[1])
			b[5] ^= 0x01
			s.lines[1] = string(b)
			s.write(t)
		}, KindModified, 7},
		{"delete a line", func(t *testing.T, o Options) {
			s := readSeg(t, o, 6)
			s.lines = append(s.lines[:1], s.lines[2:]...) // seq 7
			s.write(t)
		}, KindMissing, 7},
		{"delete the first line", func(t *testing.T, o Options) {
			s := readSeg(t, o, 1)
			s.lines = s.lines[1:]
			s.write(t)
		}, KindMissing, 1},
		{"swap two lines", func(t *testing.T, o Options) {
			s := readSeg(t, o, 6)
			s.lines[1], s.lines[2] = s.lines[2], s.lines[1] // seqs 7, 8
			s.write(t)
		}, KindReordered, 7},
		{"swap lines across segments", func(t *testing.T, o Options) {
			a, b := readSeg(t, o, 1), readSeg(t, o, 6)
			a.lines[4], b.lines[0] = b.lines[0], a.lines[4] // seqs 5, 6
			a.write(t)
			b.write(t)
		}, KindReordered, 5},
		{"truncate the last segment", func(t *testing.T, o Options) {
			s := readSeg(t, o, 11)
			s.lines = s.lines[:3]
			s.lines[2] = s.lines[2][:len(s.lines[2])/2] // seq 13 torn
			s.write(t)
		}, KindTruncated, 13},
		{"truncate a middle segment mid-record", func(t *testing.T, o Options) {
			s := readSeg(t, o, 6)
			s.lines = s.lines[:2]
			s.lines[1] = s.lines[1][:100] // seq 7 torn
			s.write(t)
		}, KindTruncated, 7},
		{"truncate a middle segment at a record boundary", func(t *testing.T, o Options) {
			s := readSeg(t, o, 6)
			s.lines = s.lines[:3] // seqs 9, 10 gone
			s.write(t)
		}, KindMissing, 9},
		{"drop a whole segment", func(t *testing.T, o Options) {
			os.Remove(filepath.Join(o.Dir, segmentName(6)))
		}, KindMissing, 6},
		{"insert a foreign-signed line", func(t *testing.T, o Options) {
			s := readSeg(t, o, 6)
			// After seq 7, claiming to be seq 8 and chaining onto 7.
			fl := foreignLine(t, 8, ChainHash(strings.TrimSuffix(s.lines[1], "\n")))
			s.lines = append(s.lines[:2], append([]string{fl}, s.lines[2:]...)...)
			s.write(t)
		}, KindInserted, 8},
		{"append a foreign-signed line", func(t *testing.T, o Options) {
			s := readSeg(t, o, 11)
			s.lines = append(s.lines, foreignLine(t, 3, "00"))
			s.write(t)
		}, KindInserted, 16},
		{"replace a record with a foreign-signed one", func(t *testing.T, o Options) {
			s := readSeg(t, o, 6)
			s.lines[1] = foreignLine(t, 7, ChainHash(strings.TrimSuffix(s.lines[0], "\n")))
			s.write(t)
		}, KindModified, 7},
		{"duplicate a line", func(t *testing.T, o Options) {
			s := readSeg(t, o, 6)
			s.lines = append(s.lines[:3], append([]string{s.lines[2]}, s.lines[3:]...)...) // seq 8 twice
			s.write(t)
		}, KindInserted, 9},
		{"rename a segment", func(t *testing.T, o Options) {
			os.Rename(filepath.Join(o.Dir, segmentName(11)), filepath.Join(o.Dir, segmentName(12)))
		}, KindSegmentName, 11},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o, ks := tamperLog(t)
			tc.mutate(t, o)
			res, err := Verify(o.Dir, ks)
			if err != nil {
				t.Fatal(err)
			}
			if res.Problem == nil {
				t.Fatalf("tampering not detected: %+v", res)
			}
			if res.Problem.Kind != tc.kind || res.Problem.Seq != tc.seq {
				t.Fatalf("got %v, want %s at seq %d", res.Problem, tc.kind, tc.seq)
			}
		})
	}
}

func TestVerifyIntactAndWrongKey(t *testing.T) {
	o, ks := tamperLog(t)
	res, err := Verify(o.Dir, ks)
	if err != nil || res.Problem != nil || res.Records != 15 || res.Segments != 3 {
		t.Fatalf("intact log: %+v %v", res, err)
	}
	other := KeySet{}
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	other.Add(pub)
	res, err = Verify(o.Dir, other)
	if err != nil || res.Problem == nil || res.Problem.Seq != 1 || res.Problem.Kind != KindModified {
		t.Fatalf("wrong key: %+v %v", res.Problem, err)
	}
}

func TestVerifyEmptyLog(t *testing.T) {
	o := testOptions(t)
	l := mustOpen(t, o)
	ks := l.PublicKeys()
	l.Close()
	res, err := Verify(o.Dir, ks)
	if err != nil || res.Problem != nil || res.Records != 0 {
		t.Fatalf("%+v %v", res, err)
	}
}

// TestVerifyRejectsCRLFInsideARecord (#15.6): base64.Strict() skips CR and
// LF, so a CR inside a signature (or the payload) decoded to the same
// bytes and verified; a record line holds neither.
func TestVerifyRejectsCRLFInsideARecord(t *testing.T) {
	for _, tc := range []struct {
		name string
		at   func(line string) int
	}{
		{"signature", func(l string) int { return len(l) - 20 }},
		{"payload", func(l string) int { return strings.IndexByte(l, '.') + 8 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, ks := tamperLog(t)
			s := readSeg(t, o, 6)
			l := strings.TrimSuffix(s.lines[1], "\n") // seq 7
			i := tc.at(l)
			s.lines[1] = l[:i] + "\r" + l[i:] + "\n"
			if _, err := DecodeRecord(l[:i] + "\r" + l[i:]); !errors.Is(err, ErrMalformed) {
				t.Fatalf("DecodeRecord accepted a CR: %v", err)
			}
			s.write(t)
			res, err := Verify(o.Dir, ks)
			if err != nil {
				t.Fatal(err)
			}
			if res.Problem == nil || res.Problem.Kind != KindModified || res.Problem.Seq != 7 {
				t.Fatalf("CR inside record 7: got %+v, want modified at 7", res.Problem)
			}
		})
	}
}

// resign returns line's record with change applied, signed by k: a record
// that is validly signed but not the one the log wrote.
func resign(t *testing.T, line string, k *signingKey, change func(*Record)) string {
	t.Helper()
	r, err := DecodeRecord(strings.TrimSuffix(line, "\n"))
	if err != nil {
		t.Fatal(err)
	}
	change(r)
	r.KeyID = k.kid
	b, err := r.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	out, _ := k.finish(k.signingInput(b))
	return string(out)
}

// logKey returns the log's signing key with the given kid.
func logKey(t *testing.T, o Options, kid string) *signingKey {
	t.Helper()
	keys, err := loadSigningKeys(o.KeyDir)
	if err != nil {
		t.Fatal(err)
	}
	k, ok := keys[kid]
	if !ok {
		t.Fatalf("no key %s", kid)
	}
	return k
}

// TestVerifyChainCatchesWrongPredecessor (#29.1) is the case only the
// hash chain catches: record 8 is correctly signed with the log's own key
// and holds the right seq, but commits to record 6 instead of record 7.
// Kills the mutation that drops the prev comparison from Verify.
func TestVerifyChainCatchesWrongPredecessor(t *testing.T) {
	o, ks := tamperLog(t)
	s := readSeg(t, o, 6)
	first, err := DecodeRecord(strings.TrimSuffix(s.lines[0], "\n"))
	if err != nil {
		t.Fatal(err)
	}
	k := logKey(t, o, first.KeyID)
	s.lines[2] = resign(t, s.lines[2], k, func(r *Record) { // seq 8
		r.Prev = ChainHash(strings.TrimSuffix(s.lines[0], "\n")) // record 6's hash, not 7's
	})
	if _, err := VerifyRecord(strings.TrimSuffix(s.lines[2], "\n"), ks); err != nil {
		t.Fatalf("the forged record must verify on its own: %v", err)
	}
	s.write(t)
	res, err := Verify(o.Dir, ks)
	if err != nil {
		t.Fatal(err)
	}
	if res.Problem == nil || res.Problem.Kind != KindModified || res.Problem.Seq != 7 {
		t.Fatalf("got %+v, want modified at 7 (record 8 commits to another predecessor)", res.Problem)
	}
}

// TestVerifyRefusesRetiredKeyAfterRotation (#29.2): the records after a
// key rotation re-signed with the retired key, chained correctly (so only
// the key check can catch them), fail even when the verifier is given
// both keys. Kills the mutation that accepts any known key after the
// first record.
func TestVerifyRefusesRetiredKeyAfterRotation(t *testing.T) {
	o := testOptions(t)
	both := writeV1Log(t, o, 7, 0, 3) // seq 4 hands over to a new key
	first, err := DecodeRecord(strings.TrimSuffix(readSeg(t, o, 1).lines[0], "\n"))
	if err != nil {
		t.Fatal(err)
	}
	oldKID := first.KeyID
	if len(both) != 2 {
		t.Fatalf("keys %v", both.KIDs())
	}
	if res, err := Verify(o.Dir, both); err != nil || res.Problem != nil {
		t.Fatalf("intact: %+v %v", res, err)
	}
	s := readSeg(t, o, 1)
	old := logKey(t, o, oldKID)
	for i := 5; i < 7; i++ { // seqs 6 and 7
		prev := ChainHash(strings.TrimSuffix(s.lines[i-1], "\n"))
		s.lines[i] = resign(t, s.lines[i], old, func(r *Record) { r.Prev = prev })
	}
	s.write(t)
	res, err := Verify(o.Dir, both)
	if err != nil {
		t.Fatal(err)
	}
	if res.Problem == nil || res.Problem.Kind != KindModified || res.Problem.Seq != 6 {
		t.Fatalf("got %+v, want modified at 6 (signed by the retired key)", res.Problem)
	}
}
