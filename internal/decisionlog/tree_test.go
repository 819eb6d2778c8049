package decisionlog

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
)

// readLines returns every line of every segment (without LF), and the
// checkpoint lines' signed notes, in order.
func logLines(t *testing.T, dir string) (records [][]byte, checkpoints [][]byte, batches [][][]byte) {
	t.Helper()
	segs, err := listSegments(dir)
	if err != nil {
		t.Fatal(err)
	}
	var cur [][]byte
	for _, s := range segs {
		b, err := os.ReadFile(filepath.Join(dir, s))
		if err != nil {
			t.Fatal(err)
		}
		b = bytes.TrimRight(b, "\x00")
		for _, ln := range bytes.SplitAfter(b, []byte("\n")) {
			if len(ln) == 0 {
				continue
			}
			ln = bytes.TrimSuffix(ln, []byte("\n"))
			if bytes.HasPrefix(ln, []byte(checkpointPrefix)) {
				signed, _, err := decodeCheckpointLine(ln)
				if err != nil {
					t.Fatal(err)
				}
				checkpoints = append(checkpoints, signed)
				batches = append(batches, cur)
				cur = nil
				continue
			}
			records = append(records, ln)
			cur = append(cur, ln)
		}
	}
	return records, checkpoints, batches
}

// noteVerifier is the log's key as sumdb/note reads it from its text form.
func noteVerifier(t *testing.T, origin string, pub ed25519.PublicKey) note.Verifier {
	t.Helper()
	vk, err := NoteVerifierKey(origin, pub)
	if err != nil {
		t.Fatal(err)
	}
	v, err := note.NewVerifier(vk)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestV2LogIndependentlyVerified appends concurrently, then checks the log
// with independent verifiers: every checkpoint with golang.org/x/mod's
// sumdb/note from the key's text form, every receipt's and every record's
// inclusion and every pair of consecutive checkpoints' consistency with
// transparency-dev/merkle against roots computed here from the leaves.
func TestV2LogIndependentlyVerified(t *testing.T) {
	o := testOptions(t)
	l := mustOpen(t, o)
	pub := l.key.public()
	var mu sync.Mutex
	receipts := map[uint64]Receipt{}
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Go(func() {
			for i := 0; i < 40; i++ {
				rc, err := l.Append(context.Background(), sampleRecord(w*1000+i))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				receipts[rc.Index] = rc
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	last := l.Checkpoint()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	records, cps, batches := logLines(t, o.Dir)
	if len(records) != 640 || len(receipts) != 640 {
		t.Fatalf("%d records, %d receipts", len(records), len(receipts))
	}
	if !bytes.Equal(cps[len(cps)-1], last) {
		t.Error("Checkpoint() is not the last checkpoint in the log")
	}
	v := noteVerifier(t, "test-1", pub)
	h := rfc6962.DefaultHasher
	leaves := make([][]byte, len(records))
	for i, r := range records {
		if !bytes.HasPrefix(r, []byte(fmt.Sprintf(`{"index":%d,"log":"test-1","kind":"decision",`, i))) {
			t.Fatalf("record %d: %s", i, r[:60])
		}
		leaves[i] = h.HashLeaf(r)
	}
	root := func(n uint64) []byte { r := subtreeRoot(toHashes(leaves[:n])); return r[:] }
	var prev uint64
	var prevRoot []byte
	for k, signed := range cps {
		n, err := note.Open(signed, note.VerifierList(v))
		if err != nil {
			t.Fatalf("checkpoint %d: sumdb/note: %v", k, err)
		}
		lines := strings.Split(n.Text, "\n")
		size := uint64(0)
		fmt.Sscan(lines[1], &size)
		if lines[0] != "test-1" || size != prev+uint64(len(batches[k])) || len(batches[k]) > MaxBatch {
			t.Fatalf("checkpoint %d: %q after %d records, batch of %d", k, n.Text, prev, len(batches[k]))
		}
		if lines[2] != base64.StdEncoding.EncodeToString(root(size)) {
			t.Fatalf("checkpoint %d: root differs from the tree of its first %d leaves", k, size)
		}
		if prev > 0 {
			p, err := ConsistencyProof(toHashes(leaves), prev, size)
			if err != nil {
				t.Fatal(err)
			}
			if err := proof.VerifyConsistency(h, prev, size, fromHashes(p), prevRoot, root(size)); err != nil {
				t.Fatalf("checkpoints %d→%d: %v", prev, size, err)
			}
		}
		for i := prev; i < size; i++ {
			p, err := InclusionProof(toHashes(leaves), i, size)
			if err != nil {
				t.Fatal(err)
			}
			if err := proof.VerifyInclusion(h, i, size, leaves[i], fromHashes(p), root(size)); err != nil {
				t.Fatalf("record %d in checkpoint %d: %v", i, size, err)
			}
			rc := receipts[i]
			if !bytes.Equal(rc.Hash[:], leaves[i]) {
				t.Fatalf("receipt %d: record hash differs", i)
			}
			r, err := VerifyReceipt(rc.Header, KeySet{KeyID(pub): pub})
			if err != nil {
				t.Fatalf("receipt %d: %v", i, err)
			}
			if !bytes.Equal(r.SignedCheckpoint(), signed) {
				t.Fatalf("receipt %d carries another checkpoint than the one after its batch", i)
			}
			if len(rc.Header) > 600 {
				t.Fatalf("receipt %d: %d bytes", i, len(rc.Header))
			}
		}
		if _, err := VerifyBatch(batches[k], signed, note.VerifierList(v)); err != nil {
			t.Fatalf("VerifyBatch %d: %v", k, err)
		}
		prev, prevRoot = size, root(size)
	}
	res := mustVerify(t, o)
	if res.Records != 640 || res.Checkpoints != len(cps) || res.Format != 2 {
		t.Fatalf("verify: %+v", res)
	}
}

func toHashes(b [][]byte) []Hash {
	out := make([]Hash, len(b))
	for i := range b {
		copy(out[i][:], b[i])
	}
	return out
}

func fromHashes(hs []Hash) [][]byte {
	out := make([][]byte, len(hs))
	for i := range hs {
		out[i] = hs[i][:]
	}
	return out
}

// TestReceiptSizeAtScale: a receipt for a record of a log of 10^9 (and
// 2^40) records, with the longest batch and a long log name, stays within
// 600 bytes.
func TestReceiptSizeAtScale(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(nil)
	k := newSigningKey(priv)
	for _, origin := range []string{"agentauthz", strings.Repeat("r", maxOriginBytes)} {
		for _, size := range []uint64{1_000_000_000, 1 << 40} {
			leaves := make([]Hash, MaxBatch)
			for i := range leaves {
				leaves[i] = LeafHash([]byte(fmt.Sprint(i)))
			}
			lv := buildLevels(leaves)
			cp := Checkpoint{Origin: origin, Size: size, BatchStart: size - MaxBatch, BatchRoot: lv.root()}
			_, sig, err := signCheckpoint(cp, newNoteSigner(origin, k))
			if err != nil {
				t.Fatal(err)
			}
			for _, i := range []int{0, 77, MaxBatch - 1} {
				r := CompactReceipt{Checkpoint: cp, Index: cp.BatchStart + uint64(i), RecordHash: leaves[i], Proof: lv.proof(i),
					KeyHash: uint32(sig[0])<<24 | uint32(sig[1])<<16 | uint32(sig[2])<<8 | uint32(sig[3]), Signature: sig[4:]}
				s := r.Encode()
				t.Logf("origin of %d bytes, log of %d records, record %d of a batch of %d: %d bytes", len(origin), size, i, MaxBatch, len(s))
				if len(s) > 600 {
					t.Errorf("origin of %d bytes, size %d: receipt of %d bytes", len(origin), size, len(s))
				}
				if _, err := VerifyReceipt(s, KeySet{k.kid: k.public()}); err != nil {
					t.Errorf("size %d index %d: %v", size, r.Index, err)
				}
			}
		}
	}
}

// TestReceiptTampering: any changed byte of a receipt fails verification.
func TestReceiptTampering(t *testing.T) {
	o := testOptions(t)
	l := mustOpen(t, o)
	defer l.Close()
	rc := appendN(t, l, 0, 3)[1]
	ks := l.PublicKeys()
	if _, err := VerifyReceipt(rc.Header, ks); err != nil {
		t.Fatal(err)
	}
	raw, _ := base64.RawURLEncoding.DecodeString(rc.Header)
	for i := range raw {
		b := bytes.Clone(raw)
		b[i] ^= 0x01
		if _, err := VerifyReceipt(base64.RawURLEncoding.EncodeToString(b), ks); err == nil {
			t.Fatalf("byte %d changed: still verifies", i)
		}
	}
	other := KeySet{}
	pub, _, _ := ed25519.GenerateKey(nil)
	other.Add(pub)
	if _, err := VerifyReceipt(rc.Header, other); err == nil {
		t.Fatal("verifies under another key")
	}
	if _, err := VerifyReceipt(rc.Header+"A", ks); err == nil {
		t.Fatal("trailing byte accepted")
	}
}

// TestRotationV2: the checkpoint covering the rotation record is signed by
// the old key, later ones by the new key; a verifier that trusts only the
// first key follows the hand-over, and a later checkpoint re-signed with
// the retired key is refused even when both keys are trusted.
func TestRotationV2(t *testing.T) {
	o := testOptions(t)
	l := mustOpen(t, o)
	oldKey := l.key
	first := l.PublicKeys()
	appendN(t, l, 0, 3)
	kid, err := l.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	rcs := appendN(t, l, 3, 2)
	if _, err := VerifyReceipt(rcs[0].Header, first); err == nil {
		t.Fatal("a receipt after the rotation verifies under the old key")
	}
	both := l.PublicKeys()
	if _, err := VerifyReceipt(rcs[0].Header, KeySet{kid: both[kid]}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	l = mustOpen(t, o) // a restart keeps the new key
	if l.KeyID() != kid {
		t.Fatalf("after restart kid %s, want %s", l.KeyID(), kid)
	}
	appendN(t, l, 5, 1)
	l.Close()
	res, err := Verify(o.Dir, first)
	if err != nil || res.Problem != nil || res.Records != 7 || len(res.KeyIDs) != 2 || res.KeyIDs[1] != kid {
		t.Fatalf("verify with the first key: %+v %v", res, err)
	}
	// Re-sign the last checkpoint with the retired key.
	segs, _ := listSegments(o.Dir)
	path := filepath.Join(o.Dir, segs[len(segs)-1])
	data, _ := os.ReadFile(path)
	lines := strings.SplitAfter(strings.TrimRight(string(data), "\n"), "\n")
	cpLine := []byte(lines[len(lines)-1])
	signed, hashes, err := decodeCheckpointLine(cpLine)
	if err != nil {
		t.Fatal(err)
	}
	cp, _, err := OpenCheckpoint(signed, mustVerifiers(t, "test-1", both))
	if err != nil {
		t.Fatal(err)
	}
	forged, _, err := signCheckpoint(cp, newNoteSigner("test-1", oldKey))
	if err != nil {
		t.Fatal(err)
	}
	t2, err := NewTreeFromRange(cp.Size, hashes)
	if err != nil {
		t.Fatal(err)
	}
	lines[len(lines)-1] = string(encodeCheckpointLine(forged, t2.hashes)) + "\n"
	os.WriteFile(path, []byte(strings.Join(lines, "")), 0o640)
	res, err = Verify(o.Dir, both)
	if err != nil || res.Problem == nil || res.Problem.Kind != KindBadCheckpoint || res.Problem.Index != 6 {
		t.Fatalf("checkpoint signed by the retired key: %+v %v", res.Problem, err)
	}
}

func mustVerifiers(t *testing.T, origin string, ks KeySet) note.Verifiers {
	t.Helper()
	vs, err := NoteVerifiers(origin, ks)
	if err != nil {
		t.Fatal(err)
	}
	return vs
}

// TestOpenCoversRecordsAfterTheLastCheckpoint: a crash after a batch's
// records reached the disk but before its checkpoint did: Open keeps the
// records and writes the checkpoint that covers them; a torn line after
// them goes to a side file.
func TestOpenCoversRecordsAfterTheLastCheckpoint(t *testing.T) {
	o := testOptions(t)
	l := mustOpen(t, o)
	appendN(t, l, 0, 5)
	l.Close()
	segs, _ := listSegments(o.Dir)
	path := filepath.Join(o.Dir, segs[len(segs)-1])
	data, _ := os.ReadFile(path)
	// Two more records as the writer would have written them, without
	// their checkpoint, and a torn third one.
	var extra []byte
	for i := 5; i < 8; i++ {
		r := sampleRecord(i)
		r.Time = r.Time.UTC()
		r.Decision.Reasons = []string{}
		p, _ := prepareRecord(r)
		extra = append(p.appendLine(extra, uint64(i), "test-1"), '\n')
	}
	torn := extra[:len(extra)-40]
	os.WriteFile(path, append(append(data, torn...), make([]byte, 4096)...), 0o640)
	if res, _ := Verify(o.Dir, l.PublicKeys()); res.Problem == nil {
		t.Fatal("the crashed log verifies before Open")
	}
	l = mustOpen(t, o)
	rc := appendN(t, l, 100, 1)[0]
	if rc.Index != 7 {
		t.Fatalf("next index %d, want 7 (records 5 and 6 kept)", rc.Index)
	}
	l.Close()
	res := mustVerify(t, o)
	if res.Records != 8 {
		t.Fatalf("%+v", res)
	}
	side, _ := filepath.Glob(filepath.Join(o.Dir, tornFilePrefix+"*"))
	if len(side) != 1 {
		t.Fatalf("side files %v", side)
	}
	if b, _ := os.ReadFile(side[0]); !bytes.HasPrefix(b, []byte(`{"index":7,`)) {
		t.Fatalf("side file holds %q", b)
	}
}

// TestOpenRefusesDamageBeforeACheckpoint: a changed record followed by
// checkpointed records is not a crash: Open refuses.
func TestOpenRefusesDamageBeforeACheckpoint(t *testing.T) {
	o := testOptions(t)
	l := mustOpen(t, o)
	appendN(t, l, 0, 3)
	appendN(t, l, 3, 3)
	l.Close()
	segs, _ := listSegments(o.Dir)
	path := filepath.Join(o.Dir, segs[0])
	data, _ := os.ReadFile(path)
	data[5] = 'x' // record 0's index
	os.WriteFile(path, data, 0o640)
	if _, err := Open(o); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open: %v, want ErrCorrupt", err)
	}
}

// TestVerifyV2Tampering: each kind of damage is named at its first bad
// index.
func TestVerifyV2Tampering(t *testing.T) {
	build := func(t *testing.T) (Options, KeySet, string) {
		o := testOptions(t)
		l := mustOpen(t, o)
		for i := 0; i < 4; i++ {
			appendN(t, l, i*3, 3) // one batch (and checkpoint) per Append: 12 records
		}
		ks := l.PublicKeys()
		l.Close()
		segs, _ := listSegments(o.Dir)
		return o, ks, filepath.Join(o.Dir, segs[0])
	}
	edit := func(t *testing.T, path string, f func(lines []string) []string) {
		data, _ := os.ReadFile(path)
		lines := strings.SplitAfter(string(bytes.TrimRight(data, "\x00")), "\n")
		lines = f(lines[:len(lines)-1])
		os.WriteFile(path, []byte(strings.Join(lines, "")), 0o640)
	}
	// Lines: records 0..11, each followed by its checkpoint (one record
	// per batch, since each Append waits for its flush): line 2i is
	// record i, line 2i+1 its checkpoint.
	cases := []struct {
		name  string
		f     func([]string) []string
		kind  string
		index uint64
	}{
		{"change a record", func(ls []string) []string {
			ls[10] = strings.Replace(ls[10], "payments-bot", "payments-bat", 1)
			return ls
		}, KindModified, 5},
		{"delete a record", func(ls []string) []string { return append(ls[:10], ls[11:]...) }, KindBadCheckpoint, 5},
		{"delete a record and its checkpoint", func(ls []string) []string { return append(ls[:10], ls[12:]...) }, KindMissing, 5},
		{"swap two records with their checkpoints", func(ls []string) []string {
			ls[10], ls[11], ls[12], ls[13] = ls[12], ls[13], ls[10], ls[11]
			return ls
		}, KindMissing, 5},
		{"duplicate a record", func(ls []string) []string { return append(ls[:12], ls[10:]...) }, KindInserted, 6},
		{"drop a checkpoint", func(ls []string) []string { return append(ls[:11], ls[12:]...) }, KindBadCheckpoint, 5},
		{"cut the end", func(ls []string) []string { return ls[:len(ls)-1] }, KindUncovered, 11},
		{"truncate a line", func(ls []string) []string { ls[len(ls)-1] = ls[len(ls)-1][:20]; return ls }, KindTruncated, 11},
		{"CR in a checkpoint", func(ls []string) []string { ls[9] = strings.Replace(ls[9], `\n`, `\r\n`, 1); return ls }, KindBadCheckpoint, 4},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o, ks, path := build(t)
			edit(t, path, tc.f)
			res, err := Verify(o.Dir, ks)
			if err != nil {
				t.Fatal(err)
			}
			if res.Problem == nil || res.Problem.Kind != tc.kind || res.Problem.Index != tc.index {
				t.Fatalf("got %+v, want %s at %d", res.Problem, tc.kind, tc.index)
			}
		})
	}
}

// TestCheckpointLineIsJSON: the hand-written checkpoint line is what
// encoding/json writes for it, and decodes back.
func TestCheckpointLineIsJSON(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(nil)
	k := newSigningKey(priv)
	tree := NewTree()
	for i := 0; i < 13; i++ {
		tree.Append(LeafHash([]byte{byte(i)}))
	}
	for _, origin := range []string{"agentauthz", "eu-west/replica-1", strings.Repeat("x", maxOriginBytes)} {
		cp := Checkpoint{Origin: origin, Size: 13, Root: tree.Root(), BatchStart: 10, BatchRoot: LeafHash([]byte("b"))}
		signed, _, err := signCheckpoint(cp, newNoteSigner(origin, k))
		if err != nil {
			t.Fatal(err)
		}
		got := encodeCheckpointLine(signed, tree.hashes)
		l := checkpointLine{Checkpoint: string(signed)}
		for _, h := range tree.Hashes() {
			l.Range = append(l.Range, base64.StdEncoding.EncodeToString(h))
		}
		want, _ := marshalJSON(l)
		if !bytes.Equal(got, want) {
			t.Fatalf("hand-written line differs:\n got %s\nwant %s", got, want)
		}
		s2, hs, err := decodeCheckpointLine(got)
		if err != nil || !bytes.Equal(s2, signed) || len(hs) != len(tree.Hashes()) {
			t.Fatalf("decode: %v", err)
		}
	}
}

// TestTreeMatchesCompactRange: Tree's root and compact range are those of
// github.com/transparency-dev/merkle's compact range at every size up to
// 1,100, and a tree rebuilt from its range continues alike.
func TestTreeMatchesCompactRange(t *testing.T) {
	rf := &compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	ref := rf.NewEmptyRange(0)
	tree := NewTree()
	for i := range 1100 {
		leaf := LeafHash([]byte(fmt.Sprint(i)))
		if err := ref.Append(leaf[:], nil); err != nil {
			t.Fatal(err)
		}
		tree.Append(leaf)
		want, err := ref.GetRootHash(nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := tree.Root(); !bytes.Equal(got[:], want) || tree.Size() != ref.End() {
			t.Fatalf("size %d: root %x, want %x", i+1, got, want)
		}
		hs := tree.Hashes()
		if len(hs) != len(ref.Hashes()) {
			t.Fatalf("size %d: %d range hashes, want %d", i+1, len(hs), len(ref.Hashes()))
		}
		for j, h := range ref.Hashes() {
			if !bytes.Equal(hs[j], h) {
				t.Fatalf("size %d: range hash %d differs", i+1, j)
			}
		}
		if i%97 == 0 {
			re, err := NewTreeFromRange(tree.Size(), hs)
			if err != nil {
				t.Fatal(err)
			}
			re.Append(leaf)
			c := tree.Clone()
			c.Append(leaf)
			if re.Root() != c.Root() {
				t.Fatalf("size %d: rebuilt tree continues differently", i+1)
			}
		}
	}
	if _, err := NewTreeFromRange(5, [][]byte{make([]byte, 32)}); err == nil {
		t.Error("a range of 1 hash for 5 leaves accepted")
	}
	if _, err := NewTreeFromRange(4, [][]byte{make([]byte, 31)}); err == nil {
		t.Error("a 31-byte hash accepted")
	}
}
