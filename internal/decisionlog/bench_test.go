package decisionlog

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentauthz/agentauthz/internal/testenv"
)

// BenchmarkRecordPrepare is the per-record cost outside the writer's
// flush: JSON, the line, and its leaf hash (the writer hashes it).
func BenchmarkRecordPrepare(b *testing.B) {
	r := sampleRecord(1)
	b.ReportAllocs()
	var line []byte
	for b.Loop() {
		p, err := prepareRecord(r)
		if err != nil {
			b.Fatal(err)
		}
		line = p.appendLine(line[:0], 123456789, "agentauthz")
		_ = LeafHash(line)
	}
}

// BenchmarkCheckpointSign is the per-batch cost of a checkpoint: the batch
// tree of MaxBatch leaves, the signed note, the line.
func BenchmarkCheckpointSign(b *testing.B) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	s := newNoteSigner("agentauthz", newSigningKey(priv))
	leaves := make([]Hash, 16)
	tree := NewTree()
	for i := range leaves {
		leaves[i] = LeafHash([]byte(fmt.Sprint(i)))
		tree.Append(leaves[i])
	}
	b.ReportAllocs()
	for b.Loop() {
		lv := buildLevels(leaves)
		cp := Checkpoint{Origin: "agentauthz", Size: tree.Size(), Root: tree.Root(), BatchStart: 0, BatchRoot: lv.root()}
		signed, _, err := signCheckpoint(cp, s)
		if err != nil {
			b.Fatal(err)
		}
		_ = encodeCheckpointLine(signed, tree.hashes)
	}
}

// BenchmarkRecordVerify is the per-record cost of VerifyRecord (go-jose).
func BenchmarkRecordVerify(b *testing.B) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	k := newSigningKey(priv)
	r := sampleRecord(1)
	r.KeyID, r.Seq, r.Prev = k.kid, 1, "00"
	payload, _ := r.MarshalJSON()
	_, jws := k.finish(k.signingInput(payload))
	ks := KeySet{k.kid: k.public()}
	for b.Loop() {
		if _, err := VerifyRecord(jws, ks); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAppendSync measures sync-mode throughput (records/s, one
// fdatasync per group commit) and Append latency percentiles with 1, 8 and
// 64 concurrent appenders per CPU, as the decision path would call it, in
// the steady state: the segment is preallocated (the timer starts once a
// prepared segment is ready).
func BenchmarkAppendSync(b *testing.B) {
	for _, p := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("appenders=%dxCPU", p), func(b *testing.B) { benchAppend(b, p, true) })
	}
}

// BenchmarkAppendSyncUnprepared is the same without preallocation (as the
// log would be without its preparer): every flush grows the file.
func BenchmarkAppendSyncUnprepared(b *testing.B) {
	for _, p := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("appenders=%dxCPU", p), func(b *testing.B) { benchAppend(b, p, false) })
	}
}

// BenchmarkAppendRotating is BenchmarkAppendSync with 16 MiB segments, so
// that the log rotates every second or so and the next segment is being
// prepared most of the time (the preparer's writes and flushes are in the
// figures), against the same without preallocation: every segment appended
// to. Run the two alternately to compare them in one run (see
// docs/decision-log.md, "Why the log is built this way").
func BenchmarkAppendRotating(b *testing.B) {
	for _, prepared := range []bool{true, false} {
		name := "prepared"
		if !prepared {
			name = "appended"
		}
		b.Run(name+"/appenders=8xCPU", func(b *testing.B) {
			o := testOptions(b)
			o.SegmentMaxBytes = 16 << 20
			reg := prometheus.NewRegistry()
			o.Registerer = reg
			benchAppendOpts(b, o, 8, prepared)
			b.ReportMetric(counterValue(b, reg, "agentauthz_decisionlog_segments_total", "preallocated"), "prepared-segments")
			b.ReportMetric(counterValue(b, reg, "agentauthz_decisionlog_segments_total", "appended"), "appended-segments")
		})
	}
}

func benchAppend(b *testing.B, parallelism int, prepared bool) {
	benchAppendOpts(b, testOptions(b), parallelism, prepared)
}

func benchAppendOpts(b *testing.B, o Options, parallelism int, prepared bool) {
	if !prepared {
		holdPreparation(&o) // never released
		o.noPrealloc = true // every segment appended to, up to SegmentMaxBytes
	}
	l := mustOpen(b, o)
	defer l.Close()
	if prepared {
		waitPrepared(b, l)
	}
	var mu sync.Mutex
	var lat []time.Duration
	b.SetParallelism(parallelism)
	b.ResetTimer()
	cpu0 := testenv.CPUTime()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		var mine []time.Duration
		i := 0
		for pb.Next() {
			t0 := time.Now()
			if _, err := l.Append(context.WithoutCancel(context.Background()), sampleRecord(i)); err != nil {
				b.Error(err)
				return
			}
			mine = append(mine, time.Since(t0))
			i++
		}
		mu.Lock()
		lat = append(lat, mine...)
		mu.Unlock()
	})
	el := time.Since(start)
	cpu := testenv.CPUTime() - cpu0
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if n := len(lat); n > 0 {
		b.ReportMetric(float64(n)/el.Seconds(), "records/s")
		b.ReportMetric(float64(lat[n/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[n*99/100].Microseconds()), "p99-µs")
		b.ReportMetric(float64(lat[n*999/1000].Microseconds()), "p99.9-µs")
		b.ReportMetric(float64(lat[n-1].Microseconds()), "max-µs")
		// CPU per record (user+sys of the whole process): on a shared,
		// loaded machine this says what two dedicated cores would do.
		b.ReportMetric(float64(cpu.Microseconds())/float64(n), "cpu-µs/record")
	}
}
