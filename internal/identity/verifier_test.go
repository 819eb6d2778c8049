package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentauthz/agentauthz/internal/reason"
	"github.com/agentauthz/agentauthz/internal/testca"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }

func peerAttrs(cert string) *authv3.AttributeContext {
	return &authv3.AttributeContext{Source: &authv3.AttributeContext_Peer{Certificate: cert}}
}

func xfccAttrs(header string) *authv3.AttributeContext {
	return &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Headers: map[string]string{"x-forwarded-client-cert": header}},
	}}
}

// xfccElement is one element as Envoy writes it for leaf.
func xfccElement(leaf *testca.Leaf) string {
	uri := ""
	if len(leaf.Cert.URIs) > 0 {
		uri = ";URI=" + leaf.Cert.URIs[0].String()
	}
	return `By=spiffe://mesh.test/ns/edge/sa/envoy;Hash=00ff;Cert="` + leaf.URLEncodedPEM() +
		`";Subject="` + strings.ReplaceAll(leaf.Cert.Subject.String(), `"`, `\"`) + `"` + uri
}

type fixture struct {
	ca    *testca.CA
	clock *clock
	reg   *prometheus.Registry
	v     *Verifier
}

func newFixture(t *testing.T, mutate ...func(*Config)) *fixture {
	t.Helper()
	ca := testca.New(t)
	f := &fixture{ca: ca, clock: &clock{t: time.Now()}, reg: prometheus.NewRegistry()}
	cfg := Config{
		Bundles:    []Bundle{{TrustDomain: ca.TrustDomain, Profile: ProfileNative, Roots: []*x509.Certificate{ca.Cert}}},
		Now:        f.clock.Now,
		Registerer: f.reg,
	}
	for _, m := range mutate {
		m(&cfg)
	}
	v, err := NewVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.v = v
	return f
}

func (f *fixture) counter(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := f.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

// denied asserts that v refuses attrs with reason want.
func denied(t *testing.T, v *Verifier, attrs *authv3.AttributeContext, want reason.Code) *Error {
	t.Helper()
	a, e := v.Identify(attrs)
	return wantReason(t, a, e, want)
}

// allowed asserts that v accepts attrs.
func allowed(t *testing.T, v *Verifier, attrs *authv3.AttributeContext) *Agent {
	t.Helper()
	a, e := v.Identify(attrs)
	return wantAgent(t, a, e)
}

func wantReason(t *testing.T, a *Agent, e *Error, want reason.Code) *Error {
	t.Helper()
	if e == nil {
		t.Fatalf("got agent %+v, want %s", a, want)
	}
	if a != nil {
		t.Fatalf("got both agent and error %v", e)
	}
	if e.Reason != want {
		t.Fatalf("reason = %s (%v), want %s", e.Reason, e.Err, want)
	}
	return e
}

func wantAgent(t *testing.T, a *Agent, e *Error) *Agent {
	t.Helper()
	if e != nil {
		t.Fatalf("unexpected error: %v", e)
	}
	if a == nil {
		t.Fatal("nil agent and nil error")
	}
	return a
}

func TestIdentifyValidPeerCertificate(t *testing.T) {
	f := newFixture(t)
	leaf := f.ca.Issue("payments-bot-1", testca.Trust(3), testca.Scopes("payments:initiate", "accounts:read", "payments:initiate"), testca.Owner("alice@acme.example"))
	a := allowed(t, f.v, peerAttrs(leaf.URLEncodedPEM()))
	want := &Agent{
		ID:         "payments-bot-1",
		SPIFFEID:   "spiffe://example.test/agent/payments-bot-1",
		Tenant:     "example.test",
		TrustLevel: 3,
		Scopes:     []string{"accounts:read", "payments:initiate"},
		Owner:      "alice@acme.example",
		Serial:     leaf.Cert.SerialNumber.Text(16),
		CertSHA256: sha256Hex(leaf.Cert.Raw),
		Issuer:     f.ca.Cert.Subject.String(),
		NotBefore:  leaf.Cert.NotBefore,
		NotAfter:   leaf.Cert.NotAfter,
		Profile:    ProfileNative,
		Source:     SourcePeerCertificate,
		Chain: []ChainCert{{Serial: leaf.Cert.SerialNumber.Text(16), Issuer: f.ca.Cert, IssuerKey: CAKeyOf(f.ca.Cert),
			CRLDistributionPoints: leaf.Cert.CRLDistributionPoints}},
	}
	if !reflect.DeepEqual(a, want) {
		t.Fatalf("agent\n got %+v\nwant %+v", a, want)
	}
	if a.TrustLabel() != "L3" {
		t.Fatalf("TrustLabel = %s", a.TrustLabel())
	}
}

func TestIdentifyXFCC(t *testing.T) {
	f := newFixture(t)
	good := f.ca.Issue("bot-a", testca.Trust(1))
	forged := f.ca.Issue("bot-admin", testca.Trust(4))
	other := testca.NewDomain(t, "example.test").Issue("bot-a", testca.Trust(4))

	t.Run("single element", func(t *testing.T) {
		a := allowed(t, f.v, xfccAttrs(xfccElement(good)))
		if a.ID != "bot-a" || a.Source != SourceXFCC || a.TrustLevel != 1 {
			t.Fatalf("agent %+v", a)
		}
	})
	t.Run("forged leftmost element ignored", func(t *testing.T) {
		h := xfccElement(forged) + "," + xfccElement(good)
		a := allowed(t, f.v, xfccAttrs(h))
		if a.ID != "bot-a" || a.TrustLevel != 1 {
			t.Fatalf("used a forged element: %+v", a)
		}
	})
	t.Run("rightmost decides even when leftmost is valid", func(t *testing.T) {
		h := xfccElement(good) + ", " + xfccElement(other)
		denied(t, f.v, xfccAttrs(h), reason.UntrustedIssuer)
	})
	t.Run("three elements", func(t *testing.T) {
		h := `Hash=1;URI=spiffe://x/y,` + xfccElement(forged) + "," + xfccElement(good)
		a := allowed(t, f.v, xfccAttrs(h))
		if a.ID != "bot-a" {
			t.Fatalf("agent %+v", a)
		}
	})
	t.Run("rightmost element without Cert falls through", func(t *testing.T) {
		h := xfccElement(good) + ",By=spiffe://mesh.test/proxy;Hash=1"
		denied(t, f.v, xfccAttrs(h), reason.NoClientCertificate)
	})
	t.Run("header_map raw headers", func(t *testing.T) {
		attrs := &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			HeaderMap: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
				{Key: "x-forwarded-client-cert", RawValue: []byte(xfccElement(forged))},
				{Key: "X-Forwarded-Client-Cert", RawValue: []byte(xfccElement(good))},
			}},
		}}}
		a := allowed(t, f.v, attrs)
		if a.ID != "bot-a" {
			t.Fatalf("agent %+v", a)
		}
	})
}

func TestIdentifyReasons(t *testing.T) {
	f := newFixture(t)
	ca := f.ca
	now := time.Now()
	other := testca.NewDomain(t, "example.test")
	valid := ca.Issue("bot-1")
	twoPEM := url.QueryEscape(string(valid.PEM()) + string(ca.Issue("bot-2").PEM()))
	keyPEM := url.QueryEscape(string(valid.KeyPEM()))

	tests := []struct {
		name    string
		attrs   *authv3.AttributeContext
		want    reason.Code
		certSHA string // expected Error.CertSHA256 when a certificate was decoded
	}{
		{"no cert", &authv3.AttributeContext{}, reason.NoClientCertificate, ""},
		{"nil attrs", nil, reason.NoClientCertificate, ""},
		{"xfcc unmatched quote", xfccAttrs(`Hash=1;Cert="abc`), reason.MalformedXFCC, ""},
		{"xfcc too big", xfccAttrs("Cert=" + strings.Repeat("A", MaxXFCCBytes)), reason.MalformedXFCC, ""},
		{"xfcc too many elements", xfccAttrs(strings.Repeat(xfccElement(valid)+",", 40) + xfccElement(valid)), reason.MalformedXFCC, ""},
		{"garbage", peerAttrs("not a certificate"), reason.MalformedClientCertificate, ""},
		{"oversized peer certificate", peerAttrs(strings.Repeat("A", MaxCertificateBytes+1)), reason.MalformedClientCertificate, ""},
		{"bad URL encoding", peerAttrs("%zz" + valid.URLEncodedPEM()), reason.MalformedClientCertificate, ""},
		{"two certs in Cert=", xfccAttrs(`Cert="` + twoPEM + `"`), reason.MalformedClientCertificate, ""},
		{"private key block", peerAttrs(keyPEM), reason.MalformedClientCertificate, ""},
		{"truncated PEM", peerAttrs(valid.URLEncodedPEM()[:200]), reason.MalformedClientCertificate, ""},
		{"garbage before PEM", peerAttrs("junk" + valid.URLEncodedPEM()), reason.MalformedClientCertificate, ""},
		{"garbage after PEM", peerAttrs(valid.URLEncodedPEM() + "junk"), reason.MalformedClientCertificate, ""},
		{"bad DER", peerAttrs(url.QueryEscape(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 0x03, 1, 2, 3}})))), reason.MalformedClientCertificate, ""},
		{"another CA", peerAttrs(other.Issue("bot-1").URLEncodedPEM()), reason.UntrustedIssuer, "set"},
		{"unknown trust domain", peerAttrs(testca.NewDomain(t, "evil.test").Issue("bot-1").URLEncodedPEM()), reason.UntrustedIssuer, "set"},
		{"URI in another tenant signed by this CA", peerAttrs(ca.Issue("bot-1", testca.URIs("spiffe://tenant-b.test/agent/bot-1")).URLEncodedPEM()), reason.UntrustedIssuer, "set"},
		{"expired", peerAttrs(ca.Issue("bot-1", testca.Validity(now.Add(-2*time.Hour), now.Add(-time.Hour))).URLEncodedPEM()), reason.CertificateExpired, "set"},
		{"not yet valid", peerAttrs(ca.Issue("bot-1", testca.Validity(now.Add(time.Hour), now.Add(2*time.Hour))).URLEncodedPEM()), reason.CertificateNotYetValid, "set"},
		{"expired from another CA", peerAttrs(other.Issue("bot-1", testca.Validity(now.Add(-2*time.Hour), now.Add(-time.Hour))).URLEncodedPEM()), reason.UntrustedIssuer, "set"},
		{"wrong EKU", peerAttrs(ca.Issue("bot-1", testca.EKU(x509.ExtKeyUsageServerAuth)).URLEncodedPEM()), reason.InvalidAgentProfile, "set"},
		{"no EKU", peerAttrs(ca.Issue("bot-1", testca.EKU()).URLEncodedPEM()), reason.InvalidAgentProfile, "set"},
		{"two URI SANs", peerAttrs(ca.Issue("bot-1", testca.URIs("spiffe://example.test/agent/bot-1", "spiffe://example.test/agent/bot-2")).URLEncodedPEM()), reason.InvalidAgentProfile, "set"},
		{"no URI SAN", peerAttrs(ca.Issue("bot-1", testca.URIs()).URLEncodedPEM()), reason.InvalidAgentProfile, "set"},
		{"CN/URI mismatch", peerAttrs(ca.Issue("bot-1", testca.CN("bot-2")).URLEncodedPEM()), reason.InvalidAgentProfile, "set"},
		{"two trust OUs", peerAttrs(ca.Issue("bot-1", testca.OUs("trust:L1", "trust:L4")).URLEncodedPEM()), reason.InvalidAgentProfile, "set"},
		{"no trust OU", peerAttrs(ca.Issue("bot-1", testca.OUs("scope:a:b")).URLEncodedPEM()), reason.InvalidAgentProfile, "set"},
		{"trust L7", peerAttrs(ca.Issue("bot-1", testca.Trust(7)).URLEncodedPEM()), reason.InvalidAgentProfile, "set"},
		{"bad agent id", peerAttrs(ca.Issue("Bot_1", testca.URIs("spiffe://example.test/agent/Bot_1")).URLEncodedPEM()), reason.InvalidAgentProfile, "set"},
		{"unicode CN", peerAttrs(ca.Issue("bot-1", testca.CN("bøt-1")).URLEncodedPEM()), reason.InvalidAgentProfile, "set"},
		{"bad scope", peerAttrs(ca.Issue("bot-1", testca.Scopes("payments")).URLEncodedPEM()), reason.InvalidAgentProfile, "set"},
		{"unknown OU", peerAttrs(ca.Issue("bot-1", testca.OUs("trust:L1", "Engineering")).URLEncodedPEM()), reason.InvalidAgentProfile, "set"},
		{"two owners", peerAttrs(ca.Issue("bot-1", testca.Owner("a"), testca.Owner("b")).URLEncodedPEM()), reason.InvalidAgentProfile, "set"},
		{"too many scopes", peerAttrs(ca.Issue("bot-1", testca.Scopes(manyScopes(MaxScopes+1)...)).URLEncodedPEM()), reason.InvalidAgentProfile, "set"},
		{"CA certificate as agent", peerAttrs(ca.Issue("bot-1", testca.Template(func(c *x509.Certificate) {
			c.IsCA, c.BasicConstraintsValid = true, true
		})).URLEncodedPEM()), reason.InvalidAgentProfile, "set"},
		{"unknown critical extension", peerAttrs(ca.Issue("bot-1", testca.Template(func(c *x509.Certificate) {
			c.ExtraExtensions = append(c.ExtraExtensions, pkix.Extension{Id: asn1.ObjectIdentifier{1, 2, 3, 4}, Critical: true, Value: []byte{5, 0}})
		})).URLEncodedPEM()), reason.InvalidAgentProfile, "set"},
		{"unknown critical extension from another CA", peerAttrs(other.Issue("bot-1", testca.Template(func(c *x509.Certificate) {
			c.ExtraExtensions = append(c.ExtraExtensions, pkix.Extension{Id: asn1.ObjectIdentifier{1, 2, 3, 4}, Critical: true, Value: []byte{5, 0}})
		})).URLEncodedPEM()), reason.UntrustedIssuer, "set"},
		{"self-signed agent", peerAttrs(selfSigned(t, "bot-1")), reason.UntrustedIssuer, "set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, e := f.v.Identify(tt.attrs)
			e = wantReason(t, a, e, tt.want)
			if tt.certSHA == "set" {
				if len(e.CertSHA256) != 64 || e.Issuer == "" || e.Subject == "" {
					t.Fatalf("error lacks certificate details: %+v", e)
				}
			} else if e.CertSHA256 != "" {
				t.Fatalf("CertSHA256 set without a decoded certificate: %+v", e)
			}
			if e.Err == nil || !strings.HasPrefix(e.Error(), string(tt.want)) {
				t.Fatalf("Error() = %q", e.Error())
			}
		})
	}
}

func TestIdentifyEd25519Leaf(t *testing.T) {
	f := newFixture(t)
	leaf := f.ca.Issue("ed-bot", testca.Ed25519())
	a := allowed(t, f.v, peerAttrs(leaf.URLEncodedPEM()))
	if a.ID != "ed-bot" {
		t.Fatalf("agent %+v", a)
	}
}

func TestIdentifyP384LeafRejected(t *testing.T) {
	f := newFixture(t)
	leaf := f.ca.Issue("rsa-bot")
	// The native profile allows P-256 and Ed25519 keys only.
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, leaf.Cert, f.ca.Cert, &key.PublicKey, f.ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	denied(t, f.v, peerAttrs(urlPEM(der)), reason.InvalidAgentProfile)
}

func TestSourceOrder(t *testing.T) {
	f := newFixture(t)
	peer := f.ca.Issue("peer-bot")
	xf := f.ca.Issue("xfcc-bot")
	both := peerAttrs(peer.URLEncodedPEM())
	both.Request = xfccAttrs(xfccElement(xf)).Request

	a := allowed(t, f.v, both)
	if a.ID != "peer-bot" || a.Source != SourcePeerCertificate {
		t.Fatalf("peer certificate must win: %+v", a)
	}

	// A present but invalid first source is a denial, not a fall-through.
	bad := peerAttrs("garbage")
	bad.Request = both.Request
	denied(t, f.v, bad, reason.MalformedClientCertificate)

	xfOnly := newFixture(t, func(c *Config) { c.Sources = []Source{SourceXFCC} })
	both2 := peerAttrs(xfOnly.ca.Issue("peer-bot").URLEncodedPEM())
	both2.Request = xfccAttrs(xfccElement(xfOnly.ca.Issue("xfcc-bot"))).Request
	a = allowed(t, xfOnly.v, both2)
	if a.ID != "xfcc-bot" || a.Source != SourceXFCC {
		t.Fatalf("only xfcc configured: %+v", a)
	}
	denied(t, xfOnly.v, peerAttrs(peer.URLEncodedPEM()), reason.NoClientCertificate)
}

// mapRegistry is a Registry over a map.
type mapRegistry map[string]RegistryEntry

func (m mapRegistry) LookupAgent(id string) (RegistryEntry, bool) { e, ok := m[id]; return e, ok }

func TestSPIFFEOnly(t *testing.T) {
	reg := mapRegistry{
		"spiffe://cluster.local/ns/pay/sa/payments-bot": {ID: "payments-bot", TrustLevel: 3, Scopes: []string{"payments:initiate", "accounts:read"}, Owner: "team-payments"},
		"spiffe://cluster.local/ns/x/sa/bad":            {TrustLevel: 9},
	}
	spiffeCfg := func(c *Config) {
		c.Sources = []Source{SourcePeerCertificate, SourceXFCC, SourceSPIFFEID}
		c.Bundles = append(c.Bundles, Bundle{TrustDomain: "cluster.local", Profile: ProfileSPIFFE})
		c.Registry = reg
	}
	principal := func(id string) *authv3.AttributeContext {
		return &authv3.AttributeContext{Source: &authv3.AttributeContext_Peer{Principal: id}}
	}

	t.Run("disabled by default", func(t *testing.T) {
		f := newFixture(t, func(c *Config) {
			c.Bundles = append(c.Bundles, Bundle{TrustDomain: "cluster.local", Profile: ProfileSPIFFE})
		})
		denied(t, f.v, principal("spiffe://cluster.local/ns/pay/sa/payments-bot"), reason.NoClientCertificate)
	})

	f := newFixture(t, spiffeCfg)
	t.Run("known principal", func(t *testing.T) {
		a := allowed(t, f.v, principal("spiffe://cluster.local/ns/pay/sa/payments-bot"))
		want := &Agent{ID: "payments-bot", SPIFFEID: "spiffe://cluster.local/ns/pay/sa/payments-bot", Tenant: "cluster.local",
			TrustLevel: 3, Scopes: []string{"accounts:read", "payments:initiate"}, Owner: "team-payments",
			Profile: ProfileSPIFFE, Source: SourceSPIFFEID}
		if !reflect.DeepEqual(a, want) {
			t.Fatalf("got %+v\nwant %+v", a, want)
		}
	})
	t.Run("unknown principal is L0 without scopes", func(t *testing.T) {
		a := allowed(t, f.v, principal("spiffe://cluster.local/agent/newbie"))
		if a.ID != "newbie" || a.TrustLevel != 0 || a.Scopes != nil {
			t.Fatalf("agent %+v", a)
		}
		a = allowed(t, f.v, principal("spiffe://cluster.local/ns/a/sa/b"))
		if a.ID != "spiffe://cluster.local/ns/a/sa/b" || a.TrustLevel != 0 {
			t.Fatalf("agent %+v", a)
		}
	})
	t.Run("xfcc URI", func(t *testing.T) {
		a := allowed(t, f.v, xfccAttrs(`By=spiffe://x/proxy;URI=spiffe://cluster.local/ns/pay/sa/payments-bot`))
		if a.ID != "payments-bot" || a.Source != SourceSPIFFEID {
			t.Fatalf("agent %+v", a)
		}
		denied(t, f.v, xfccAttrs(`URI=spiffe://cluster.local/a;URI=spiffe://cluster.local/b`), reason.InvalidAgentProfile)
	})
	t.Run("forged leftmost URI ignored", func(t *testing.T) {
		a := allowed(t, f.v, xfccAttrs(`URI=spiffe://cluster.local/ns/pay/sa/payments-bot,URI=spiffe://cluster.local/ns/a/sa/b`))
		if a.TrustLevel != 0 {
			t.Fatalf("agent %+v", a)
		}
	})
	t.Run("native trust domain refuses a bare SPIFFE ID", func(t *testing.T) {
		denied(t, f.v, principal("spiffe://example.test/agent/bot-1"), reason.UntrustedIssuer)
	})
	t.Run("unknown trust domain", func(t *testing.T) {
		denied(t, f.v, principal("spiffe://nowhere.test/agent/bot-1"), reason.UntrustedIssuer)
	})
	t.Run("malformed SPIFFE ID", func(t *testing.T) {
		denied(t, f.v, principal("spiffe://cluster.local/a//b"), reason.InvalidAgentProfile)
		denied(t, f.v, principal("spiffe://cluster.local/a?x=1"), reason.InvalidAgentProfile)
	})
	t.Run("bad registry entry fails closed", func(t *testing.T) {
		denied(t, f.v, principal("spiffe://cluster.local/ns/x/sa/bad"), reason.InvalidAgentProfile)
	})
	t.Run("non-SPIFFE principal is no identity", func(t *testing.T) {
		denied(t, f.v, principal("CN=someone,O=x"), reason.NoClientCertificate)
	})
	t.Run("certificate still wins", func(t *testing.T) {
		a := allowed(t, f.v, peerAttrs(f.ca.Issue("bot-1").URLEncodedPEM()))
		if a.Profile != ProfileNative {
			t.Fatalf("agent %+v", a)
		}
	})
}

func TestSPIFFEProfileCertificate(t *testing.T) {
	reg := mapRegistry{"spiffe://svid.test/workload/pay": {TrustLevel: 2, Scopes: []string{"payments:read"}}}
	ca := testca.NewDomain(t, "svid.test")
	clk := &clock{t: time.Now()}
	v, err := NewVerifier(Config{
		Bundles:  []Bundle{{TrustDomain: "svid.test", Profile: ProfileSPIFFE, Roots: []*x509.Certificate{ca.Cert}}},
		Registry: reg,
		Now:      clk.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	leaf := ca.Issue("pay", testca.URIs("spiffe://svid.test/workload/pay"), testca.OUs())
	for i := 0; i < 2; i++ { // miss, then hit: both consult the registry
		a := allowed(t, v, peerAttrs(leaf.URLEncodedPEM()))
		if a.SPIFFEID != "spiffe://svid.test/workload/pay" || a.TrustLevel != 2 || a.Profile != ProfileSPIFFE || a.CertSHA256 == "" {
			t.Fatalf("agent %+v", a)
		}
	}
	reg["spiffe://svid.test/workload/pay"] = RegistryEntry{TrustLevel: 0}
	a := allowed(t, v, peerAttrs(leaf.URLEncodedPEM()))
	if a.TrustLevel != 0 {
		t.Fatalf("cached SPIFFE agent kept stale registry data: %+v", a)
	}
}

func TestXFCCChain(t *testing.T) {
	f := newFixture(t)
	inter, interKey := intermediate(t, f.ca)
	leafDER := issueUnder(t, inter, interKey, "chained-bot")
	leafPEM := string(pemCert(leafDER))
	chain := url.QueryEscape(leafPEM + string(pemCert(inter.Raw)))

	a := allowed(t, f.v, xfccAttrs(`Cert="`+url.QueryEscape(leafPEM)+`";Chain="`+chain+`"`))
	if a.ID != "chained-bot" || !a.NotAfter.Equal(mustParse(t, leafDER).NotAfter) {
		t.Fatalf("agent %+v", a)
	}
	// Without Chain= the intermediate is unknown.
	f2 := newFixture(t)
	if err := f2.v.SetBundles([]Bundle{{TrustDomain: "example.test", Roots: []*x509.Certificate{f.ca.Cert}}}); err != nil {
		t.Fatal(err)
	}
	denied(t, f2.v, peerAttrs(url.QueryEscape(leafPEM)), reason.UntrustedIssuer)
	tooLong := url.QueryEscape(strings.Repeat(string(pemCert(inter.Raw)), MaxChainCerts+1))
	denied(t, f2.v, xfccAttrs(`Cert="`+url.QueryEscape(leafPEM)+`";Chain="`+tooLong+`"`), reason.MalformedClientCertificate)
}

func TestCache(t *testing.T) {
	f := newFixture(t)
	leaf := f.ca.Issue("cached-bot")
	attrs := peerAttrs(leaf.URLEncodedPEM())

	a1 := allowed(t, f.v, attrs)
	a2 := allowed(t, f.v, attrs)
	if a1 != a2 {
		t.Fatal("cache hit returned a different agent")
	}
	if h, m := f.counter(t, "agentauthz_identity_cache_hits_total"), f.counter(t, "agentauthz_identity_cache_misses_total"); h != 1 || m != 1 {
		t.Fatalf("hits=%v misses=%v, want 1 and 1", h, m)
	}

	// The same certificate through XFCC is another entry (Source differs).
	ax := allowed(t, f.v, xfccAttrs(xfccElement(leaf)))
	if ax.Source != SourceXFCC || ax == a1 {
		t.Fatalf("xfcc agent %+v", ax)
	}

	// Past NotAfter the entry is not served: the certificate is re-verified.
	f.clock.Set(leaf.Cert.NotAfter.Add(time.Second))
	denied(t, f.v, attrs, reason.CertificateExpired)
	f.clock.Set(time.Now())

	// A bundle swap empties the cache: the new bundle (another CA) decides.
	other := testca.NewDomain(t, "example.test")
	if err := f.v.SetBundles([]Bundle{{TrustDomain: "example.test", Roots: []*x509.Certificate{other.Cert}}}); err != nil {
		t.Fatal(err)
	}
	denied(t, f.v, attrs, reason.UntrustedIssuer)

	// Swapping back re-verifies (a miss), then caches again.
	if err := f.v.SetBundles([]Bundle{{TrustDomain: "example.test", Roots: []*x509.Certificate{f.ca.Cert}}}); err != nil {
		t.Fatal(err)
	}
	before := f.counter(t, "agentauthz_identity_cache_misses_total")
	allowed(t, f.v, attrs)
	if m := f.counter(t, "agentauthz_identity_cache_misses_total"); m != before+1 {
		t.Fatalf("misses %v -> %v, want one more", before, m)
	}
}

// The key holds digests, never the forwarded strings: every field is the
// source's code or a fixed-size byte array, so no entry can pin a request's
// header.
func TestCacheKeyHoldsNoCertificate(t *testing.T) {
	typ := reflect.TypeOf(cacheKey{})
	for i := 0; i < typ.NumField(); i++ {
		ft := typ.Field(i).Type
		if ft.Kind() != reflect.Uint8 && (ft.Kind() != reflect.Array || ft.Elem().Kind() != reflect.Uint8) {
			t.Errorf("cacheKey.%s is a %s: it could hold the forwarded certificate", typ.Field(i).Name, ft)
		}
	}
	if size := typ.Size(); size > 96 {
		t.Errorf("cacheKey is %d bytes", size)
	}

	f := newFixture(t)
	leaf := f.ca.Issue("bot-1")
	allowed(t, f.v, peerAttrs(leaf.URLEncodedPEM()))
	want := cacheKey{src: sourceCode(SourcePeerCertificate), cert: sha256.Sum256([]byte(leaf.URLEncodedPEM()))}
	if _, ok := f.v.state.Load().cache.m.Get(want); !ok || f.v.state.Load().cache.len() != 1 {
		t.Fatalf("cache holds %d entries, want only %v", f.v.state.Load().cache.len(), want)
	}
}

// Two different forwarded strings never share an entry, even when they carry
// the same certificate: a hit answers exactly what verifying the very same
// strings would.
func TestCacheKeyIsExact(t *testing.T) {
	f := newFixture(t)
	leaf := f.ca.Issue("bot-1")
	plain := leaf.URLEncodedPEM()
	// The same certificate with its first base64 character percent-encoded:
	// it decodes to the same DER but is another string.
	i := strings.Index(plain, "%0A") + len("%0A")
	escaped := plain[:i] + fmt.Sprintf("%%%02X", plain[i]) + plain[i+1:]
	misses := func() float64 { return f.counter(t, "agentauthz_identity_cache_misses_total") }

	a1 := allowed(t, f.v, peerAttrs(plain))
	a2 := allowed(t, f.v, peerAttrs(escaped))
	if a1 == a2 || misses() != 2 || f.v.state.Load().cache.len() != 2 {
		t.Fatalf("re-encoded certificate shared an entry: misses=%v entries=%d", misses(), f.v.state.Load().cache.len())
	}

	// A different Chain= is a different key too. A leaf under an intermediate
	// the bundle lacks verifies only with the intermediate forwarded; the
	// same Cert= without it must not be answered from the entry the chained
	// request left.
	inter, interKey := intermediate(t, f.ca)
	cert := url.QueryEscape(string(pemCert(issueUnder(t, inter, interKey, "chained-bot"))))
	chained := `Cert="` + cert + `";Chain="` + url.QueryEscape(string(pemCert(inter.Raw))) + `"`
	allowed(t, f.v, xfccAttrs(chained))
	allowed(t, f.v, xfccAttrs(chained)) // a hit
	denied(t, f.v, xfccAttrs(`Cert="`+cert+`"`), reason.UntrustedIssuer)
	denied(t, f.v, xfccAttrs(`Cert="`+cert+`";Chain="garbage"`), reason.MalformedClientCertificate)
	if h := f.counter(t, "agentauthz_identity_cache_hits_total"); h != 1 {
		t.Fatalf("hits = %v, want 1", h)
	}
}

func TestNewCacheKey(t *testing.T) {
	keys := map[cacheKey]string{}
	for _, k := range []struct{ name, cert, chain string }{
		{"cert", "ab", ""},
		{"cert with chain", "ab", "c"},
		{"boundary moved", "a", "bc"},
		{"other cert", "ba", ""},
		{"chain as cert", "", "ab"},
	} {
		key := newCacheKey(SourceXFCC, k.cert, k.chain)
		if prev, ok := keys[key]; ok {
			t.Fatalf("%s and %s share a key", k.name, prev)
		}
		keys[key] = k.name
	}
	if newCacheKey(SourceXFCC, "ab", "c") != newCacheKey(SourceXFCC, "ab", "c") {
		t.Fatal("same strings, different keys")
	}
	if newCacheKey(SourceXFCC, "ab", "") == newCacheKey(SourcePeerCertificate, "ab", "") {
		t.Fatal("the source is not part of the key")
	}
}

func TestCacheExpiresWithIntermediate(t *testing.T) {
	f := newFixture(t)
	inter, interKey := intermediate(t, f.ca)
	leafDER := issueUnder(t, inter, interKey, "chained-bot")
	h := `Cert="` + url.QueryEscape(string(pemCert(leafDER))) + `";Chain="` + url.QueryEscape(string(pemCert(inter.Raw))) + `"`
	allowed(t, f.v, xfccAttrs(h))
	st := f.v.state.Load()
	if n := st.cache.len(); n != 1 {
		t.Fatalf("cache holds %d entries", n)
	}
	key := newCacheKey(SourceXFCC, url.QueryEscape(string(pemCert(leafDER))), url.QueryEscape(string(pemCert(inter.Raw))))
	if e, ok := st.cache.m.Get(key); !ok || !e.notAfter.Equal(inter.NotAfter) {
		t.Fatalf("entry %v expires %v, want the intermediate's NotAfter %v", ok, e.notAfter, inter.NotAfter)
	}
}

func TestCacheBounded(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.CacheSize = 3 })
	for i := 0; i < 10; i++ {
		allowed(t, f.v, peerAttrs(f.ca.Issue("bot-"+string(rune('a'+i))).URLEncodedPEM()))
	}
	// Eviction may trail a write by a moment.
	deadline := time.Now().Add(5 * time.Second)
	for f.v.state.Load().cache.len() > 3 {
		if time.Now().After(deadline) {
			t.Fatalf("cache holds %d entries, limit 3", f.v.state.Load().cache.len())
		}
		time.Sleep(time.Millisecond)
	}
}

func TestCacheConcurrent(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.CacheSize = 4 })
	leaves := make([]string, 8)
	for i := range leaves {
		leaves[i] = f.ca.Issue("bot-" + string(rune('a'+i))).URLEncodedPEM()
	}
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				if _, e := f.v.Identify(peerAttrs(leaves[(i+g)%len(leaves)])); e != nil {
					t.Error(e)
					return
				}
				if i%17 == 0 {
					_ = f.v.SetBundles([]Bundle{{TrustDomain: "example.test", Roots: []*x509.Certificate{f.ca.Cert}}})
				}
			}
		}()
	}
	wg.Wait()
}

func TestNewVerifierErrors(t *testing.T) {
	ca := testca.New(t)
	b := Bundle{TrustDomain: "example.test", Roots: []*x509.Certificate{ca.Cert}}
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"unknown source", Config{Sources: []Source{"carrier-pigeon"}}, "not one of"},
		{"duplicate source", Config{Sources: []Source{SourceXFCC, SourceXFCC}}, "listed twice"},
		{"negative cache", Config{CacheSize: -1}, "negative"},
		{"duplicate trust domain", Config{Bundles: []Bundle{b, b}}, "two trust bundles"},
		{"bad trust domain", Config{Bundles: []Bundle{{TrustDomain: "Bad Domain", Roots: b.Roots}}}, "not valid"},
		{"bad profile", Config{Bundles: []Bundle{{TrustDomain: "x.test", Profile: "magic", Roots: b.Roots}}}, "not one of"},
		{"native without roots", Config{Bundles: []Bundle{{TrustDomain: "x.test"}}}, "at least one CA"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewVerifier(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
	reg := prometheus.NewRegistry()
	if _, err := NewVerifier(Config{Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	if _, err := NewVerifier(Config{Registerer: reg}); err == nil {
		t.Fatal("second registration on one registry must fail")
	}
}

func TestSetBundlesKeepsOldOnError(t *testing.T) {
	f := newFixture(t)
	leaf := f.ca.Issue("bot-1")
	if err := f.v.SetBundles([]Bundle{{TrustDomain: "bad domain"}}); err == nil {
		t.Fatal("want error")
	}
	allowed(t, f.v, peerAttrs(leaf.URLEncodedPEM()))
	if got := f.v.TrustDomains(); !reflect.DeepEqual(got, []string{"example.test"}) {
		t.Fatalf("TrustDomains = %v", got)
	}
}

func TestLoadBundle(t *testing.T) {
	ca := testca.New(t)
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.pem", append([]byte("# comment line\n"), ca.PEM()...))
	b, err := LoadBundle("example.test", good, "")
	if err != nil || b.Profile != ProfileNative || len(b.Roots) != 1 {
		t.Fatalf("LoadBundle: %+v %v", b, err)
	}
	if b, err := LoadBundle("cluster.local", "", ProfileSPIFFE); err != nil || len(b.Roots) != 0 {
		t.Fatalf("spiffe without file: %v", err)
	}
	leaf := ca.Issue("bot-1")
	tests := []struct{ name, path, want string }{
		{"missing file", filepath.Join(dir, "nope.pem"), "no such file"},
		{"empty", write("empty.pem", nil), "at least one CA"},
		{"garbage", write("garbage.pem", []byte("hello")), "no PEM CERTIFICATE"},
		{"private key", write("key.pem", leaf.KeyPEM()), "not CERTIFICATE"},
		{"leaf not CA", write("leaf.pem", leaf.PEM()), "not a CA"},
		{"truncated", write("trunc.pem", append(ca.PEM(), ca.PEM()[:100]...)), "truncated"},
		{"bad DER", write("der.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2, 3}})), "certificate 1"},
		{"too big", write("big.pem", make([]byte, MaxBundleBytes+1)), "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadBundle("example.test", tt.path, ProfileNative)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
	if _, err := LoadBundle("Example.Test", good, ProfileNative); err == nil {
		t.Fatal("bad trust domain accepted")
	}
}

// --- helpers ---

func manyScopes(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = "res" + big.NewInt(int64(i)).String() + ":read"
	}
	return out
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func urlPEM(der []byte) string { return url.QueryEscape(string(pemCert(der))) }

func mustParse(t *testing.T, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// selfSigned is a native-looking agent certificate that signs itself.
func selfSigned(t *testing.T, id string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse("spiffe://example.test/agent/" + id)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7),
		Subject:      pkix.Name{CommonName: id, OrganizationalUnit: []string{"trust:L4"}},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{u},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return urlPEM(der)
}

// intermediate makes an intermediate CA under ca that expires before it.
func intermediate(t *testing.T, ca *testca.CA) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(99),
		Subject:               pkix.Name{CommonName: "intermediate"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(90 * time.Minute),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return mustParse(t, der), key
}

func issueUnder(t *testing.T, parent *x509.Certificate, key *ecdsa.PrivateKey, id string) []byte {
	t.Helper()
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse("spiffe://example.test/agent/" + id)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1234),
		Subject:      pkix.Name{CommonName: id, OrganizationalUnit: []string{"trust:L2"}},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(2 * time.Hour), // outlives the intermediate
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{u},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &leafKey.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// TestBundleIntermediateIsNotAnAnchor: a bundle holding a root and the
// issuing CA it signed (`cat root.pem issuing.pem`) builds chains up to the
// root, as openssl verify does, so that revocation checks the issuing CA
// too: Agent.Chain lists the leaf (issued by the issuing CA) and the
// issuing CA (issued by the root). A bundle of the issuing CA alone anchors
// there (openssl's -partial_chain).
func TestBundleIntermediateIsNotAnAnchor(t *testing.T) {
	p := testca.NewOpenSSLPKI(t)
	p.Root("root")
	p.Intermediate("issuing", "root")
	p.Agent("bot", "issuing", "example.test")
	p.Cat("bundle.pem", "root.pem", "issuing.pem")
	// The same bundle as `openssl x509 -text` prints it: text before each
	// block is accepted.
	p.Run("x509", "-in", "root.pem", "-text", "-out", "root.txt")
	p.Run("x509", "-in", "issuing.pem", "-text", "-out", "issuing.txt")
	p.Cat("bundle.txt", "root.txt", "issuing.txt")
	root, issuing, bot := p.Cert("root.pem"), p.Cert("issuing.pem"), p.Cert("bot.pem")
	for _, tc := range []struct {
		bundle string
		want   []ChainCert
	}{
		{"bundle.pem", []ChainCert{
			{Serial: bot.SerialNumber.Text(16), Issuer: issuing, IssuerKey: CAKeyOf(issuing)},
			{Serial: issuing.SerialNumber.Text(16), Issuer: root, IssuerKey: CAKeyOf(root), IsCA: true},
		}},
		{"bundle.txt", []ChainCert{
			{Serial: bot.SerialNumber.Text(16), Issuer: issuing, IssuerKey: CAKeyOf(issuing)},
			{Serial: issuing.SerialNumber.Text(16), Issuer: root, IssuerKey: CAKeyOf(root), IsCA: true},
		}},
		{"issuing.pem", []ChainCert{{Serial: bot.SerialNumber.Text(16), Issuer: issuing, IssuerKey: CAKeyOf(issuing)}}},
	} {
		b, err := LoadBundle("example.test", p.Path(tc.bundle), ProfileNative)
		if err != nil {
			t.Fatal(err)
		}
		v, err := NewVerifier(Config{Bundles: []Bundle{b}})
		if err != nil {
			t.Fatal(err)
		}
		a := allowed(t, v, peerAttrs(p.URLEncoded("bot.pem")))
		if len(a.Chain) != len(tc.want) {
			t.Fatalf("%s: chain of %d, want %d", tc.bundle, len(a.Chain), len(tc.want))
		}
		for i, w := range tc.want {
			g := a.Chain[i]
			if g.Serial != w.Serial || !g.Issuer.Equal(w.Issuer) || g.IssuerKey != w.IssuerKey || g.IsCA != w.IsCA {
				t.Errorf("%s: chain[%d] = %s issued by %s (CA %v), want %s issued by %s (CA %v)", tc.bundle, i,
					g.Serial, g.Issuer.Subject, g.IsCA, w.Serial, w.Issuer.Subject, w.IsCA)
			}
		}
	}
}

// TestSelfSignedIsAlwaysAnAnchor: a bundle holding a new root and the same
// key cross-signed by the old root keeps the self-signed new root as a
// trust anchor; the cross-signed copy is an intermediate.
func TestSelfSignedIsAlwaysAnAnchor(t *testing.T) {
	mk := func(cn string, key *ecdsa.PrivateKey, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, serial int64) *x509.Certificate {
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		}
		if parent == nil {
			parent, parentKey = tmpl, key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	oldKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	newKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	oldRoot := mk("old root", oldKey, nil, nil, 1)
	newRoot := mk("new root", newKey, nil, nil, 2)
	cross := mk("new root", newKey, oldRoot, oldKey, 3)
	bundle := []*x509.Certificate{oldRoot, cross, newRoot}
	for _, tc := range []struct {
		c      *x509.Certificate
		issued bool
	}{{oldRoot, false}, {newRoot, false}, {cross, true}} {
		if got := issuedInBundle(tc.c, bundle); got != tc.issued {
			t.Errorf("%s (serial %v): issued in bundle = %v, want %v", tc.c.Subject.CommonName, tc.c.SerialNumber, got, tc.issued)
		}
	}
}

func TestTrustLabel(t *testing.T) {
	for level, want := range map[int]string{0: "L0", 1: "L1", 2: "L2", 3: "L3", 4: "L4", 12: "L12", -1: "L-1"} {
		if got := (&Agent{TrustLevel: level}).TrustLabel(); got != want {
			t.Errorf("TrustLabel(%d) = %q, want %q", level, got, want)
		}
	}
	a, labels := &Agent{TrustLevel: 3}, make([]string, 1)
	if n := testing.AllocsPerRun(100, func() { labels[0] = a.TrustLabel() }); n != 0 {
		t.Errorf("TrustLabel allocates %v times", n)
	}
}
