package revocation

import (
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"math/big"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/identity"
	"github.com/agentauthz/agentauthz/internal/testca"
)

// benchChecker returns a Checker whose tenant holds n revoked serials,
// installed directly: signing and parsing a million-entry CRL would measure
// the setup, not Check.
func benchChecker(tb testing.TB, n int) (*Checker, *testca.CA) {
	ca := testca.New(tb)
	c, err := New(Config{Tenants: map[string]TenantConfig{td: {
		CAs: []*x509.Certificate{ca.Cert}, CRLFiles: []string{"unused"},
	}}})
	if err != nil {
		tb.Fatal(err)
	}
	serials := make([]*big.Int, n, n+1)
	for i := range n {
		serials[i] = big.NewInt(int64(i)*7919 + 1)
	}
	if n > 0 {
		r, _ := new(big.Int).SetString(revoked16, 16)
		serials = append(serials, r)
	}
	now := time.Now()
	c.mu.Lock()
	t := c.tenants[td]
	t.held[heldKey{ca: identity.CAKeyOf(ca.Cert)}] = &CRL{Number: big.NewInt(1), ThisUpdate: now, NextUpdate: now.Add(time.Hour), Serials: NewSerialSet(serials...)}
	t.agents = map[string]struct{}{"revoked-bot": {}}
	t.sources[0].loaded = true
	t.snap = nil
	c.publishLocked()
	c.mu.Unlock()
	return c, ca
}

// Serials of the size `agentauthz ca` issues (16 bytes), one revoked in
// every non-empty benchChecker set and one not.
const (
	revoked16 = "5c1e0f3a9d2b7e4411a0c3d5e6f70819"
	good16    = "7a3b9c1d2e4f50617283940a1b2c3d4e"
)

func BenchmarkCheck(b *testing.B) {
	for _, n := range []int{0, 10_000, 1_000_000} {
		c, ca := benchChecker(b, n)
		good, revoked := issuedBy(ca, "deadbeefcafe"), issuedBy(ca, big.NewInt(1).Text(16))
		good16, revoked16 := issuedBy(ca, good16), issuedBy(ca, revoked16)
		b.Run(fmt.Sprintf("serials=%d/good", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if c.Check(td, good, "bot") != "" {
					b.Fatal("denied")
				}
			}
		})
		b.Run(fmt.Sprintf("serials=%d/good-16B", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if c.Check(td, good16, "bot") != "" {
					b.Fatal("denied")
				}
			}
		})
		if n > 0 {
			b.Run(fmt.Sprintf("serials=%d/revoked", n), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if c.Check(td, revoked, "bot") == "" {
						b.Fatal("allowed")
					}
				}
			})
			b.Run(fmt.Sprintf("serials=%d/revoked-16B", n), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if c.Check(td, revoked16, "bot") == "" {
						b.Fatal("allowed")
					}
				}
			})
		}
	}
}

// randomSerials returns n distinct serials shaped like those of `agentauthz
// ca` (16 random bytes, top bit clear) from a fixed seed.
func randomSerials(n int) []*big.Int {
	r := rand.New(rand.NewPCG(1, 2))
	out := make([]*big.Int, n)
	seen := make(map[[16]byte]bool, n)
	var b [16]byte
	for i := range out {
		for {
			binary.BigEndian.PutUint64(b[:8], r.Uint64())
			binary.BigEndian.PutUint64(b[8:], r.Uint64())
			b[0] &= 0x7f
			if !seen[b] && b != [16]byte{} {
				break
			}
		}
		seen[b] = true
		out[i] = new(big.Int).SetBytes(b[:])
	}
	return out
}

// BenchmarkCRLHeap parses a signed CRL of a million ca-shaped serials and
// reports, per serial, what the held CRL (without its DER, as the checker
// keeps it) costs on the heap after GC and what the parse allocated in total;
// and, for the whole parse, its time, the most heap in use while it ran
// (sampled every millisecond, garbage included), and the process's peak RSS
// during it (Linux only: VmHWM after resetting it). Run it once:
// go test -run '^$' -bench CRLHeap -benchtime 1x.
func BenchmarkCRLHeap(b *testing.B) {
	const n = 1_000_000
	ca := testca.New(b)
	now := time.Now()
	der := ca.CRL(1, now, now.Add(time.Hour), randomSerials(n)...)
	cas := []*x509.Certificate{ca.Cert}
	var held, allocated, peakHeap, peakRSS, secs float64
	for b.Loop() {
		var before, parsed, after runtime.MemStats
		runtime.GC()
		debug.FreeOSMemory() // so the RSS peak is the parse's, not the setup's
		runtime.ReadMemStats(&before)
		rssReset := resetPeakRSS()
		stop := sampleHeapInUse()
		start := time.Now()
		crl, err := ParseCRL(der, cas, 0)
		secs += time.Since(start).Seconds()
		peakHeap += float64(stop())
		if err != nil {
			b.Fatal(err)
		}
		crl.Raw = nil
		runtime.ReadMemStats(&parsed)
		if rssReset {
			peakRSS += float64(peakRSSBytes())
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if crl.Serials.Len() != n {
			b.Fatalf("%d serials, want %d", crl.Serials.Len(), n)
		}
		held += float64(after.HeapAlloc) - float64(before.HeapAlloc)
		allocated += float64(parsed.TotalAlloc - before.TotalAlloc)
		runtime.KeepAlive(crl)
	}
	const mib = 1 << 20
	perOp := float64(b.N)
	b.ReportMetric(held/perOp/n, "heap-B/serial")
	b.ReportMetric(allocated/perOp/n, "parse-alloc-B/serial")
	b.ReportMetric(allocated/perOp/mib, "parse-alloc-MiB")
	b.ReportMetric(peakHeap/perOp/mib, "peak-heap-inuse-MiB")
	if peakRSS > 0 {
		b.ReportMetric(peakRSS/perOp/mib, "peak-RSS-MiB")
	}
	b.ReportMetric(float64(len(der))/mib, "der-MiB")
	b.ReportMetric(secs/perOp, "parse-s")
	b.ReportMetric(0, "ns/op")
}

// sampleHeapInUse samples the heap in use (objects, live or not yet swept,
// plus the free space of spans holding them: MemStats.HeapInuse) every
// millisecond until the returned function is called, which returns the
// largest sample. runtime/metrics does not stop the world, unlike
// ReadMemStats.
func sampleHeapInUse() (stop func() uint64) {
	samples := []rtmetrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
	}
	read := func() uint64 {
		rtmetrics.Read(samples)
		return samples[0].Value.Uint64() + samples[1].Value.Uint64()
	}
	done := make(chan struct{})
	peak := make(chan uint64)
	go func() {
		m := read()
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				m = max(m, read())
			case <-done:
				peak <- max(m, read())
				return
			}
		}
	}()
	return func() uint64 { close(done); return <-peak }
}

// resetPeakRSS resets the process's peak resident set size (Linux: writing
// 5 to /proc/self/clear_refs); it reports whether it could.
func resetPeakRSS() bool {
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
}

// peakRSSBytes returns VmHWM from /proc/self/status, 0 when unavailable.
func peakRSSBytes() uint64 {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(status)) {
		if kb, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			v, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(kb), " kB"), 10, 64)
			if err != nil {
				return 0
			}
			return v << 10
		}
	}
	return 0
}
