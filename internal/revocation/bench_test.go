package revocation

import (
	"crypto/x509"
	"fmt"
	"math/big"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/testca"
)

// benchChecker returns a Checker whose tenant holds n revoked serials,
// installed directly: signing and parsing a million-entry CRL would measure
// the setup, not Check.
func benchChecker(tb testing.TB, n int) *Checker {
	ca := testca.New(tb)
	c, err := New(Config{Tenants: map[string]TenantConfig{td: {
		CAs: []*x509.Certificate{ca.Cert}, CRLFiles: []string{"unused"},
	}}})
	if err != nil {
		tb.Fatal(err)
	}
	serials := make(map[string]struct{}, n)
	for i := range n {
		serials[big.NewInt(int64(i)*7919+1).Text(16)] = struct{}{}
	}
	now := time.Now()
	c.mu.Lock()
	t := c.tenants[td]
	t.held[0] = &CRL{Number: big.NewInt(1), ThisUpdate: now, NextUpdate: now.Add(time.Hour), Serials: serials}
	t.agents = map[string]struct{}{"revoked-bot": {}}
	t.sources[0].loaded = true
	t.snap = nil
	c.publishLocked()
	c.mu.Unlock()
	return c
}

func BenchmarkCheck(b *testing.B) {
	for _, n := range []int{0, 10_000, 1_000_000} {
		c := benchChecker(b, n)
		good, revoked := "deadbeefcafe", big.NewInt(1).Text(16)
		b.Run(fmt.Sprintf("serials=%d/good", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if c.Check(td, good, "bot") != "" {
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
		}
	}
}
