package decisionlog

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/testenv"
)

// writeBatchedLog writes a log of n records with exactly perCP records per
// checkpoint (the last batch may be shorter) into one segment, as the
// writer would, with the writer's own encoding and signing, and returns its
// public key. The writer's group commit decides the batch size by load;
// this fixes it, so that audit verify can be measured at each size.
func writeBatchedLog(t testing.TB, dir, name string, n, perCP int) (KeySet, ed25519.PrivateKey) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s := newNoteSigner(name, newSigningKey(priv))
	tree := NewTree()
	var out, line []byte
	leaves := make([]Hash, 0, perCP)
	for first := 0; first < n; first += perCP {
		leaves = leaves[:0]
		for i := first; i < min(first+perCP, n); i++ {
			r := sampleRecord(i)
			r.Log = name
			r.Time = r.Time.UTC().Truncate(time.Microsecond)
			p, err := prepareRecord(r)
			if err != nil {
				t.Fatal(err)
			}
			line = p.appendLine(line[:0], uint64(i), name)
			h := LeafHash(line)
			leaves = append(leaves, h)
			tree.Append(h)
			out = append(append(out, line...), '\n')
		}
		cp := Checkpoint{Origin: name, Size: tree.Size(), Root: tree.Root(), BatchStart: uint64(first), BatchRoot: subtreeRoot(leaves)}
		signed, _, err := signCheckpoint(cp, s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(append(out, encodeCheckpointLine(signed, tree.hashes)...), '\n')
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, segmentName(0)), out, 0o640); err != nil {
		t.Fatal(err)
	}
	ks := KeySet{}
	ks.Add(priv.Public().(ed25519.PublicKey))
	return ks, priv
}

// BenchmarkVerifyLog is audit verify over a 20,000-record log with 1, 4,
// 7, 15 and 79 records per checkpoint: a log written one record at a time
// (a lightly loaded log in sync mode), a little more load, the log the load
// harness leaves at concurrency 16, 32 and 256 concurrent appenders. records/cpu-s (the
// process's user+sys time) is steadier than records/s on a shared machine.
func BenchmarkVerifyLog(b *testing.B) {
	const n = 20000
	for _, perCP := range []int{1, 4, 7, 15, 79} {
		b.Run(fmt.Sprintf("per-checkpoint=%d", perCP), func(b *testing.B) {
			dir := filepath.Join(b.TempDir(), "log")
			ks, _ := writeBatchedLog(b, dir, "test-1", n, perCP)
			defer debug.SetGCPercent(debug.SetGCPercent(400)) // as audit verify runs
			b.ResetTimer()
			cpu0 := testenv.CPUTime()
			for b.Loop() {
				res, err := Verify(dir, ks)
				if err != nil || res.Problem != nil || res.Records != n {
					b.Fatalf("%v %+v", err, res)
				}
			}
			cpu := testenv.CPUTime() - cpu0
			recs := float64(n) * float64(b.N)
			b.ReportMetric(recs/b.Elapsed().Seconds(), "records/s")
			b.ReportMetric(recs/cpu.Seconds(), "records/cpu-s")
		})
	}
}
