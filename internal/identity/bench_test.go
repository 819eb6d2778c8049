package identity

import (
	"crypto/x509"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/agentauthz/agentauthz/internal/testca"
)

func newBenchVerifier(b *testing.B) (*Verifier, *testca.Leaf, *testca.Leaf) {
	b.Helper()
	ca := testca.New(b)
	v, err := NewVerifier(Config{Bundles: []Bundle{{TrustDomain: ca.TrustDomain, Roots: []*x509.Certificate{ca.Cert}}}})
	if err != nil {
		b.Fatal(err)
	}
	leaf := ca.Issue("payments-bot-1", testca.Trust(3), testca.Scopes("payments:initiate", "accounts:read"), testca.Owner("team-payments"))
	forged := ca.Issue("admin-bot", testca.Trust(4))
	return v, leaf, forged
}

// twoHopHeader is what a two-hop mesh forwards: a client-supplied element
// (ignored) and the nearest proxy's element with the certificate.
func twoHopHeader(leaf, forged *testca.Leaf) string {
	return xfccElement(forged) + "," + xfccElement(leaf)
}

func BenchmarkParseXFCC(b *testing.B) {
	_, leaf, forged := newBenchVerifier(b)
	h := twoHopHeader(leaf, forged)
	b.SetBytes(int64(len(h)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseXFCC(h); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLastXFCCElement is the parse Identify does on the hot path.
func BenchmarkLastXFCCElement(b *testing.B) {
	_, leaf, forged := newBenchVerifier(b)
	h := twoHopHeader(leaf, forged)
	b.SetBytes(int64(len(h)))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := lastXFCCElement(h); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkIdentifyCacheHitPeer(b *testing.B) {
	v, leaf, _ := newBenchVerifier(b)
	attrs := peerAttrs(leaf.URLEncodedPEM())
	if _, e := v.Identify(attrs); e != nil {
		b.Fatal(e)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, e := v.Identify(attrs); e != nil {
			b.Fatal(e)
		}
	}
}

func BenchmarkIdentifyCacheHitXFCC(b *testing.B) {
	v, leaf, forged := newBenchVerifier(b)
	attrs := xfccAttrs(twoHopHeader(leaf, forged))
	if _, e := v.Identify(attrs); e != nil {
		b.Fatal(e)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, e := v.Identify(attrs); e != nil {
			b.Fatal(e)
		}
	}
}

func BenchmarkIdentifyCacheHitPeerParallel(b *testing.B) {
	v, leaf, _ := newBenchVerifier(b)
	attrs := peerAttrs(leaf.URLEncodedPEM())
	if _, e := v.Identify(attrs); e != nil {
		b.Fatal(e)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, e := v.Identify(attrs); e != nil {
				b.Error(e)
				return
			}
		}
	})
}

// BenchmarkIdentifyCacheMiss empties the cache before every call, so each
// iteration URL-decodes, parses, verifies the chain and checks the profile.
func BenchmarkIdentifyCacheMiss(b *testing.B) {
	v, leaf, _ := newBenchVerifier(b)
	attrs := peerAttrs(leaf.URLEncodedPEM())
	st := v.state.Load()
	b.ReportAllocs()
	for b.Loop() {
		st.cache.m.Clear()
		if _, e := v.Identify(attrs); e != nil {
			b.Fatal(e)
		}
	}
}

// BenchmarkIdentifyUntrustedCA is a certificate from a CA outside the bundle:
// never cached, so every request pays for decoding and a failed verification.
func BenchmarkIdentifyUntrustedCA(b *testing.B) {
	v, _, _ := newBenchVerifier(b)
	attrs := peerAttrs(testca.New(b).Issue("payments-bot-1").URLEncodedPEM())
	benchDenied(b, v, attrs)
}

// BenchmarkIdentifyUntrustedCAStaleBundle is the same with an expired CA
// certificate in the bundle that the leaf's issuer does not lead to: the
// denial must cost what it costs without one.
func BenchmarkIdentifyUntrustedCAStaleBundle(b *testing.B) {
	ca := testca.New(b)
	now := time.Now()
	old, _ := newTestCA(b, "retired CA", nil, nil, now.Add(-48*time.Hour), now.Add(-24*time.Hour))
	v, err := NewVerifier(Config{Bundles: []Bundle{{TrustDomain: ca.TrustDomain, Roots: []*x509.Certificate{ca.Cert, old}}}})
	if err != nil {
		b.Fatal(err)
	}
	attrs := peerAttrs(testca.New(b).Issue("payments-bot-1").URLEncodedPEM())
	benchDenied(b, v, attrs)
}

// BenchmarkIdentifyExpiredIntermediate is a leaf under an expired
// intermediate of the bundle: the one failure that is verified a second time,
// to tell certificate_expired from untrusted_issuer.
func BenchmarkIdentifyExpiredIntermediate(b *testing.B) {
	ca := testca.New(b)
	now := time.Now()
	inter, key := newTestCA(b, "expired intermediate", ca.Cert, ca.Key, now.Add(-48*time.Hour), now.Add(-24*time.Hour))
	v, err := NewVerifier(Config{Bundles: []Bundle{{TrustDomain: ca.TrustDomain, Roots: []*x509.Certificate{ca.Cert, inter}}}})
	if err != nil {
		b.Fatal(err)
	}
	attrs := peerAttrs(urlPEM(newTestLeaf(b, inter, key, "payments-bot-1", now.Add(-time.Minute), now.Add(time.Hour))))
	benchDenied(b, v, attrs)
}

func benchDenied(b *testing.B, v *Verifier, attrs *authv3.AttributeContext) {
	b.Helper()
	b.ReportAllocs()
	for b.Loop() {
		if _, e := v.Identify(attrs); e == nil {
			b.Fatal("allowed")
		}
	}
}
