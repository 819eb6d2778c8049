package decisionlog

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkRecordSign is the per-record cost outside the writer: JSON,
// signing input, chain hash and Ed25519 signature.
func BenchmarkRecordSign(b *testing.B) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	k := newSigningKey(priv)
	r := sampleRecord(1)
	r.KeyID, r.Seq, r.Prev = k.kid, 1, "00"
	b.ReportAllocs()
	var payload []byte
	for b.Loop() {
		// What Append does: prepare, splice, encode, hash, sign.
		p, err := prepareRecord(r)
		if err != nil {
			b.Fatal(err)
		}
		payload = p.appendPayload(payload[:0], r.Seq, r.Log, r.KeyID, r.Prev)
		in := k.signingInput(payload)
		_ = chainHashInput(in)
		_, _ = k.finish(in)
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

// BenchmarkAppendSyncUnprepared is the same without preallocation (as in a
// segment started when none was ready): every flush grows the file.
func BenchmarkAppendSyncUnprepared(b *testing.B) {
	for _, p := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("appenders=%dxCPU", p), func(b *testing.B) { benchAppend(b, p, false) })
	}
}

// BenchmarkAppendRotating is BenchmarkAppendSync with 16 MiB segments, so
// that the log rotates every second or so and the next segment is being
// prepared most of the time: the tail it reports (p99.9, max) is what the
// preparer's flushes add to the writer's.
func BenchmarkAppendRotating(b *testing.B) {
	b.Run("appenders=8xCPU", func(b *testing.B) {
		o := testOptions(b)
		o.SegmentMaxBytes = 16 << 20
		reg := prometheus.NewRegistry()
		o.Registerer = reg
		benchAppendOpts(b, o, 8, true)
		b.ReportMetric(counterValue(b, reg, "agentauthz_decisionlog_segments_total", "preallocated"), "prepared-segments")
		b.ReportMetric(counterValue(b, reg, "agentauthz_decisionlog_segments_total", "appended"), "appended-segments")
	})
}

func benchAppend(b *testing.B, parallelism int, prepared bool) {
	benchAppendOpts(b, testOptions(b), parallelism, prepared)
}

func benchAppendOpts(b *testing.B, o Options, parallelism int, prepared bool) {
	if !prepared {
		holdPreparation(&o) // never released: every segment is appended to (and capped at 1 MiB)
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
	cpu0 := cpuTime()
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
	cpu := cpuTime() - cpu0
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

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkVerifyLog is audit verify over a 2,000-record log (signatures
// checked in parallel ahead of the chain walk).
func BenchmarkVerifyLog(b *testing.B) {
	o := testOptions(b)
	l := mustOpen(b, o)
	var wg sync.WaitGroup
	for w := 0; w < 20; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			appendN(b, l, 0, 100)
		}()
	}
	wg.Wait()
	ks := l.PublicKeys()
	l.Close()
	b.ResetTimer()
	for b.Loop() {
		res, err := Verify(o.Dir, ks)
		if err != nil || res.Problem != nil || res.Records != 2000 {
			b.Fatalf("%v %+v", err, res)
		}
	}
	b.ReportMetric(float64(2000*b.N)/b.Elapsed().Seconds(), "records/s")
}

// crashedSegment makes a log whose last (only) segment holds n records,
// and returns its options, the segment's path and the length of its
// records. Before each scan, os.Truncate adds the padding a crash leaves
// (a sparse hole): scanning cuts it off.
func crashedSegment(b *testing.B, n int) (o Options, seg string, size int64) {
	b.Helper()
	o = testOptions(b)
	holdPreparation(&o) // Open and Close only: no segment is prepared
	mustOpen(b, o).Close()
	keys, err := loadSigningKeys(o.KeyDir)
	if err != nil || len(keys) != 1 {
		b.Fatalf("keys %v %v", keys, err)
	}
	var data []byte
	for _, k := range keys {
		data = []byte(strings.Join(signedLines(k, o.Name, n), ""))
	}
	seg = filepath.Join(o.Dir, segmentName(1))
	if err := os.WriteFile(seg, data, 0o640); err != nil {
		b.Fatal(err)
	}
	return o, seg, int64(len(data))
}

// BenchmarkOpen is Open (and Close) after a crash that left 50,000
// records and then the default 64 MiB of padding in the last segment:
// Open scans the segment and seals it.
func BenchmarkOpen(b *testing.B) {
	o, seg, size := crashedSegment(b, 50000)
	b.ReportAllocs()
	b.ResetTimer()
	var cpu time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		if err := os.Truncate(seg, size+DefaultSegmentMaxBytes); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		cpu0 := cpuTime()
		l := mustOpen(b, o)
		if err := l.Close(); err != nil {
			b.Fatal(err)
		}
		cpu += cpuTime() - cpu0
	}
	b.ReportMetric(float64(size)/(1<<20), "MiB-of-records")
	b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/op") // steadier than ns/op on a shared machine
}

// BenchmarkScanSegment is the scan alone, on the same segment, streamed and
// as it was (scanSegmentReference reads the whole file).
func BenchmarkScanSegment(b *testing.B) {
	_, seg, size := crashedSegment(b, 50000)
	for _, impl := range []struct {
		name string
		scan func(path, name string, isLast bool, maxTorn int, open openFunc) (*scannedLine, int64, error)
	}{
		{"stream", scanSegment},
		{"reference", scanSegmentReference},
	} {
		b.Run(impl.name, func(b *testing.B) {
			b.ReportAllocs()
			var cpu time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				if err := os.Truncate(seg, size+DefaultSegmentMaxBytes); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				cpu0 := cpuTime()
				if _, good, err := impl.scan(seg, segmentName(1), true, maxWriteBytes, osOpenFile); good != size || err == nil {
					b.Fatalf("scan: %d bytes, %v", good, err)
				}
				cpu += cpuTime() - cpu0
			}
			b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/op")
		})
	}
}
