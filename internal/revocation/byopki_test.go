package revocation

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/agentauthz/agentauthz/internal/identity"
	"github.com/agentauthz/agentauthz/internal/reason"
	"github.com/agentauthz/agentauthz/internal/testca"
)

// The tests in this file build a PKI with the openssl CLI (`openssl ca`,
// `-gencrl`), as an organisation bringing its own PKI would, and compare
// what the Checker answers with what `openssl verify -crl_check` /
// `-crl_check_all` answers on the same files.

const byoTD = "byo.example"

// opensslSays runs openssl verify on cert and returns the reason code the
// Checker should answer for the same files: "" when openssl accepts,
// certificate_revoked when openssl says the certificate is revoked.
func opensslSays(t *testing.T, p *testca.OpenSSLPKI, cert string, args ...string) reason.Code {
	t.Helper()
	ok, out := p.Verify(cert, args...)
	switch {
	case ok:
		return ""
	case strings.Contains(out, "certificate revoked"):
		return reason.CertificateRevoked
	case strings.Contains(out, "unable to get certificate CRL"), strings.Contains(out, "different CRL scope"):
		return reason.RevocationStatusUnknown
	}
	t.Fatalf("openssl verify %s: unexpected failure:\n%s", cert, out)
	return ""
}

// identify verifies cert (with the certificates in chain forwarded as an
// XFCC Chain=, as Envoy forwards them) against the trust bundle file bundle,
// as serve does, and returns the agent, whose Chain is what Check checks.
func identify(t *testing.T, p *testca.OpenSSLPKI, bundle, cert string, chain ...string) *identity.Agent {
	t.Helper()
	b, err := identity.LoadBundle(byoTD, p.Path(bundle), identity.ProfileNative)
	if err != nil {
		t.Fatal(err)
	}
	v, err := identity.NewVerifier(identity.Config{Bundles: []identity.Bundle{b}, Sources: []identity.Source{identity.SourceXFCC}})
	if err != nil {
		t.Fatal(err)
	}
	xfcc := `Hash=00;Cert="` + p.URLEncoded(cert) + `"`
	if len(chain) > 0 {
		xfcc += `;Chain="` + p.URLEncoded(append([]string{cert}, chain...)...) + `"`
	}
	a, ierr := v.Identify(&authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Headers: map[string]string{"x-forwarded-client-cert": xfcc}},
	}})
	if ierr != nil {
		t.Fatalf("identify %s: %v", cert, ierr)
	}
	return a
}

// checkFile answers Check for the certificate in file cert of p, verified
// against the trust bundle file bundle with the forwarded chain.
func checkFile(t *testing.T, c *Checker, p *testca.OpenSSLPKI, bundle, cert string, chain ...string) reason.Code {
	t.Helper()
	a := identify(t, p, bundle, cert, chain...)
	return c.Check(byoTD, a.Chain, a.ID)
}

// TestFinalCRLNextUpdate9999: a CA's final CRL has nextUpdate
// 99991231235959Z; nextUpdate+grace is past what int64 nanoseconds hold
// (2262), which once made every agent revocation_status_unknown (#28.1).
func TestFinalCRLNextUpdate9999(t *testing.T) {
	p := testca.NewOpenSSLPKI(t)
	p.Root("root")
	p.Agent("good", "root", byoTD)
	p.Agent("gone", "root", byoTD)
	p.Revoke("root", "gone.pem")
	p.CRL("root", "root.crl", "-crl_nextupdate", "99991231235959Z")

	c, _ := start(t, Config{Tenants: map[string]TenantConfig{byoTD: {
		CAs: []*x509.Certificate{p.Cert("root.pem")}, CRLFiles: []string{p.Path("root.crl")},
	}}})
	waitFor(t, "ready", c.Ready)
	for _, cert := range []string{"good.pem", "gone.pem"} {
		want := opensslSays(t, p, cert, "-CAfile", "root.pem", "-CRLfile", "root.crl", "-crl_check")
		if got := checkFile(t, c, p, "root.pem", cert); got != want {
			t.Errorf("%s: Check = %q, openssl says %q", cert, string(got), string(want))
		}
	}
	if checkFile(t, c, p, "root.pem", "gone.pem") != reason.CertificateRevoked {
		t.Error("the revoked agent is not revoked")
	}
}

// twoTierPKI makes root → issuing → {bot, gone}, with gone revoked by
// issuing, and the CRLs root.crl and issuing.crl.
func twoTierPKI(t *testing.T) *testca.OpenSSLPKI {
	p := testca.NewOpenSSLPKI(t)
	p.Root("root")
	p.Intermediate("issuing", "root")
	p.Agent("bot", "issuing", byoTD)
	p.Agent("gone", "issuing", byoTD)
	p.Revoke("issuing", "gone.pem")
	p.CRL("root", "root.crl")
	p.CRL("issuing", "issuing.crl")
	return p
}

// TestPEMFileWithSeveralCRLs: `cat root.crl issuing.crl > crls.pem` is what
// openssl verify -CRLfile, nginx and Envoy read; every CRL in it is used,
// not only the first (#28.2). Text before each block (`openssl crl -text`)
// is accepted, as in trust bundles.
func TestPEMFileWithSeveralCRLs(t *testing.T) {
	p := twoTierPKI(t)
	p.Cat("crls.pem", "root.crl", "issuing.crl")
	p.Run("crl", "-in", "root.crl", "-text", "-out", "root.txt")
	p.Run("crl", "-in", "issuing.crl", "-text", "-out", "issuing.txt")
	p.Cat("crls.txt", "root.txt", "issuing.txt")
	cas := []*x509.Certificate{p.Cert("root.pem"), p.Cert("issuing.pem")}
	for _, file := range []string{"crls.pem", "crls.txt"} {
		t.Run(file, func(t *testing.T) {
			c, _ := start(t, Config{Tenants: map[string]TenantConfig{byoTD: {CAs: cas, CRLFiles: []string{p.Path(file)}}}})
			waitFor(t, "ready", c.Ready)
			for _, cert := range []string{"bot.pem", "gone.pem"} {
				want := opensslSays(t, p, cert, "-CAfile", "root.pem", "-untrusted", "issuing.pem",
					"-CRLfile", file, "-crl_check_all")
				if got := checkFile(t, c, p, "root.pem", cert, "issuing.pem"); got != want {
					t.Errorf("%s: Check = %q, openssl says %q", cert, string(got), string(want))
				}
			}
			if checkFile(t, c, p, "root.pem", "gone.pem", "issuing.pem") != reason.CertificateRevoked {
				t.Error("the agent revoked in the second CRL of the file is allowed")
			}
		})
	}
}

// TestCRLFileRefusedWhole: a file that holds something besides valid CRLs
// is refused as a whole, saying why, never applied in part (#28.2).
func TestCRLFileRefusedWhole(t *testing.T) {
	p := twoTierPKI(t)
	cas := []*x509.Certificate{p.Cert("root.pem"), p.Cert("issuing.pem")}
	root, issuing := p.Read("root.crl"), p.Read("issuing.crl")
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"certificate among the CRLs", append(append(append([]byte{}, root...), p.Read("bot.pem")...), issuing...), `PEM block 2 is "CERTIFICATE"`},
		{"truncated second CRL", append(append([]byte{}, root...), issuing[:len(issuing)/2]...), "truncated or corrupt PEM block after CRL 1"},
		{"the same CA twice", append(append([]byte{}, issuing...), issuing...), "CRLs 1 and 2 are both from CA"},
		{"a CRL of another CA", append(append([]byte{}, root...), pemCRL(testca.New(t).CRL(1, time.Now(), time.Now().Add(time.Hour)))...), "crl 2 of 2 in the file: crl not signed"},
		{"text only", []byte("Certificate Revocation List (CRL):\n"), "neither a DER CRL nor PEM"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseCRLs(tc.data, cas, 0)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func pemCRL(der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}) }

// TestRevokedIntermediate: when the root revokes the issuing CA, every agent
// it issued is refused, as openssl verify -crl_check_all refuses them
// (#28.3); with a root-only bundle (the issuing CA forwarded in the XFCC
// Chain=, openssl's -untrusted) the issuing CA's own CRL is used once an
// agent's verified chain shows that CA, and with the issuing CA in the
// bundle (after the root) it is an intermediate, not an anchor.
func TestRevokedIntermediate(t *testing.T) {
	p := twoTierPKI(t)
	p.Cat("crls.pem", "root.crl", "issuing.crl")
	p.Cat("bundle.pem", "root.pem", "issuing.pem")
	// Before the root revokes it, the issuing CA is good.
	for _, bundle := range []string{"root.pem", "bundle.pem"} {
		t.Run("not revoked/"+bundle, func(t *testing.T) {
			c, _ := start(t, Config{Tenants: map[string]TenantConfig{byoTD: {
				CAs: identityCAs(t, p, bundle), CRLFiles: []string{p.Path("crls.pem")},
			}}})
			waitFor(t, "ready", c.Ready)
			for cert, want := range map[string]reason.Code{"bot.pem": "", "gone.pem": reason.CertificateRevoked} {
				if o := opensslSays(t, p, cert, "-CAfile", bundle, "-untrusted", "issuing.pem", "-CRLfile", "crls.pem", "-crl_check_all"); o != want {
					t.Fatalf("%s: openssl says %q, want %q", cert, string(o), string(want))
				}
				if got := checkFile(t, c, p, bundle, cert, "issuing.pem"); got != want {
					t.Errorf("%s: Check = %q, openssl says %q", cert, string(got), string(want))
				}
			}
		})
	}
	// A bundle reload keeps the issuing CA's CRL learned from a chain: the
	// file has not changed, so nothing would bring it back.
	t.Run("reload keeps learned", func(t *testing.T) {
		c, _ := start(t, Config{Tenants: map[string]TenantConfig{byoTD: {
			CAs: identityCAs(t, p, "root.pem"), CRLFiles: []string{p.Path("crls.pem")},
		}}})
		waitFor(t, "ready", c.Ready)
		if got := checkFile(t, c, p, "root.pem", "gone.pem", "issuing.pem"); got != reason.CertificateRevoked {
			t.Fatalf("before the reload: %q", string(got))
		}
		if got := checkFile(t, c, p, "root.pem", "bot.pem", "issuing.pem"); got != "" {
			t.Fatalf("before the reload: %q", string(got))
		}
		if err := c.SetCAs(map[string][]*x509.Certificate{byoTD: identityCAs(t, p, "root.pem")}); err != nil {
			t.Fatal(err)
		}
		if got := checkFile(t, c, p, "root.pem", "gone.pem", "issuing.pem"); got != reason.CertificateRevoked {
			t.Errorf("after the reload: %q", string(got))
		}
		if got := checkFile(t, c, p, "root.pem", "bot.pem", "issuing.pem"); got != "" {
			t.Errorf("after the reload: %q", string(got))
		}
	})
	p.Revoke("root", "issuing.pem")
	p.CRL("root", "root.crl")
	p.Cat("crls.pem", "root.crl", "issuing.crl")
	for _, bundle := range []string{"root.pem", "bundle.pem"} {
		t.Run("revoked/"+bundle, func(t *testing.T) {
			c, _ := start(t, Config{Tenants: map[string]TenantConfig{byoTD: {
				CAs: identityCAs(t, p, bundle), CRLFiles: []string{p.Path("crls.pem")},
			}}})
			waitFor(t, "ready", c.Ready)
			for _, cert := range []string{"bot.pem", "gone.pem"} {
				want := opensslSays(t, p, cert, "-CAfile", bundle, "-untrusted", "issuing.pem", "-CRLfile", "crls.pem", "-crl_check_all")
				if want != reason.CertificateRevoked {
					t.Fatalf("%s: openssl says %q", cert, string(want))
				}
				if got := checkFile(t, c, p, bundle, cert, "issuing.pem"); got != want {
					t.Errorf("%s: Check = %q, openssl says %q", cert, string(got), string(want))
				}
			}
		})
	}
	// Without the root's CRL the issuing CA's status is unknown: openssl
	// -crl_check_all fails, and so does Check (fail closed).
	t.Run("no root crl", func(t *testing.T) {
		c, _ := start(t, Config{Tenants: map[string]TenantConfig{byoTD: {
			CAs: identityCAs(t, p, "bundle.pem"), CRLFiles: []string{p.Path("issuing.crl")},
		}}})
		waitFor(t, "ready", c.Ready)
		want := opensslSays(t, p, "bot.pem", "-CAfile", "bundle.pem", "-CRLfile", "issuing.crl", "-crl_check_all")
		if got := checkFile(t, c, p, "bundle.pem", "bot.pem", "issuing.pem"); got != want || got != reason.RevocationStatusUnknown {
			t.Errorf("Check = %q, openssl says %q", string(got), string(want))
		}
	})
}

// identityCAs returns the certificates of the trust bundle file bundle, the
// CAs that verify the tenant's CRLs (as serve passes them).
func identityCAs(t *testing.T, p *testca.OpenSSLPKI, bundle string) []*x509.Certificate {
	t.Helper()
	b, err := identity.LoadBundle(byoTD, p.Path(bundle), identity.ProfileNative)
	if err != nil {
		t.Fatal(err)
	}
	return b.Roots
}

// TestSerialScopedToIssuer: two issuing CAs of one tenant number their
// certificates alike (openssl ca's serial file); a CRL entry of one revokes
// only its own certificate, as RFC 5280 scopes a CRL entry to its issuer
// (#28.4).
func TestSerialScopedToIssuer(t *testing.T) {
	p := testca.NewOpenSSLPKI(t)
	p.Root("root")
	p.Intermediate("issuing-a", "root")
	p.Intermediate("issuing-b", "root")
	p.Agent("bot-a", "issuing-a", byoTD)
	p.Agent("bot-b", "issuing-b", byoTD)
	if a, b := p.Cert("bot-a.pem").SerialNumber, p.Cert("bot-b.pem").SerialNumber; a.Cmp(b) != 0 {
		t.Fatalf("serials %v and %v differ; the test needs a collision", a, b)
	}
	p.Revoke("issuing-a", "bot-a.pem")
	p.CRL("root", "root.crl")
	p.CRL("issuing-a", "a.crl")
	p.CRL("issuing-b", "b.crl")
	p.Cat("crls.pem", "root.crl", "a.crl", "b.crl")
	p.Cat("bundle.pem", "root.pem", "issuing-a.pem", "issuing-b.pem")
	c, _ := start(t, Config{Tenants: map[string]TenantConfig{byoTD: {
		CAs: identityCAs(t, p, "bundle.pem"), CRLFiles: []string{p.Path("crls.pem")},
	}}})
	waitFor(t, "ready", c.Ready)
	for cert, inter := range map[string]string{"bot-a.pem": "issuing-a.pem", "bot-b.pem": "issuing-b.pem"} {
		want := opensslSays(t, p, cert, "-CAfile", "bundle.pem", "-CRLfile", "crls.pem", "-crl_check_all")
		if got := checkFile(t, c, p, "bundle.pem", cert, inter); got != want {
			t.Errorf("%s: Check = %q, openssl says %q", cert, string(got), string(want))
		}
	}
	if got := checkFile(t, c, p, "bundle.pem", "bot-b.pem"); got != "" {
		t.Errorf("issuing-b's certificate with the serial issuing-a revoked: %q", string(got))
	}
}

// idpPKI makes a root whose CRLs carry the issuingDistributionPoint idp
// (an `openssl ca` [idp] section body), with agents bot and gone (revoked)
// naming the distribution point http://crl.byo.example/agents.crl, and
// elsewhere naming another.
func idpPKI(t *testing.T, idp string) *testca.OpenSSLPKI {
	p := testca.NewOpenSSLPKI(t)
	p.Root("root")
	dp := "crlDistributionPoints = URI:http://crl.byo.example/agents.crl"
	p.Agent("bot", "root", byoTD, dp)
	p.Agent("gone", "root", byoTD, dp)
	p.Agent("elsewhere", "root", byoTD, "crlDistributionPoints = URI:http://crl.byo.example/other.crl")
	p.Revoke("root", "gone.pem")
	p.SetCRLExtensions("root", "issuingDistributionPoint = critical, @idp\n[idp]\n"+idp)
	p.CRL("root", "root.crl")
	return p
}

// TestIssuingDistributionPoint: a CRL with the (critical) IDP extension is
// used for what it covers, as openssl applies it (#28.5): an agent whose
// CRL distribution point it names is checked; one naming another is not
// covered, so its status is unknown (openssl: unable to get certificate
// CRL).
func TestIssuingDistributionPoint(t *testing.T) {
	for _, idp := range []string{
		"fullname = URI:http://crl.byo.example/agents.crl",
		"fullname = URI:http://crl.byo.example/agents.crl\nonlyuser = TRUE",
	} {
		t.Run(idp, func(t *testing.T) {
			p := idpPKI(t, idp)
			c, _ := start(t, Config{Tenants: map[string]TenantConfig{byoTD: {
				CAs: identityCAs(t, p, "root.pem"), CRLFiles: []string{p.Path("root.crl")},
			}}})
			waitFor(t, "ready", c.Ready)
			wants := map[string]reason.Code{"bot.pem": "", "gone.pem": reason.CertificateRevoked, "elsewhere.pem": reason.RevocationStatusUnknown}
			for cert, want := range wants {
				if o := opensslSays(t, p, cert, "-CAfile", "root.pem", "-CRLfile", "root.crl", "-crl_check"); o != want {
					t.Fatalf("%s: openssl says %q, want %q", cert, string(o), string(want))
				}
				if got := checkFile(t, c, p, "root.pem", cert); got != want {
					t.Errorf("%s: Check = %q, openssl says %q", cert, string(got), string(want))
				}
			}
		})
	}
}

// TestIssuingDistributionPointRefused: the scopes that cannot be applied
// are refused with an error saying what to do, and one tenant's refused
// CRL leaves the other tenants (and readiness) alone (#28.5). openssl
// (without -extended_crl) does not use these CRLs either.
func TestIssuingDistributionPointRefused(t *testing.T) {
	good := twoTierPKI(t)
	good.Cat("crls.pem", "root.crl", "issuing.crl")
	for _, tc := range []struct{ idp, want string }{
		{"fullname = URI:http://crl.byo.example/agents.crl\nindirectCRL = TRUE", "indirectCRL"},
		{"fullname = URI:http://crl.byo.example/agents.crl\nonlysomereasons = keyCompromise", "onlySomeReasons"},
		{"onlyAA = TRUE", "onlyContainsAttributeCerts"},
		{"relativename = rel\n[rel]\nCN = agents", "nameRelativeToCRLIssuer"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			p := idpPKI(t, tc.idp)
			_, err := ParseCRLs(p.Read("root.crl"), identityCAs(t, p, "root.pem"), 0)
			if err == nil || !strings.Contains(err.Error(), "issuing distribution point: ") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to name %s", err, tc.want)
			}
			c, _ := start(t, Config{Tenants: map[string]TenantConfig{
				byoTD:          {CAs: identityCAs(t, p, "root.pem"), CRLFiles: []string{p.Path("root.crl")}},
				"good.example": {CAs: identityCAs(t, good, "root.pem"), CRLFiles: []string{good.Path("crls.pem")}},
			}})
			waitFor(t, "ready despite the refused crl of another tenant", c.Ready)
			st := c.Status()
			if st[byoTD].Ready || !strings.Contains(st[byoTD].Detail, tc.want) {
				t.Errorf("status of the tenant with the refused crl: %+v", st[byoTD])
			}
			if !st["good.example"].Ready {
				t.Errorf("status of the other tenant: %+v", st["good.example"])
			}
			want := opensslSays(t, p, "bot.pem", "-CAfile", "root.pem", "-CRLfile", "root.crl", "-crl_check")
			if got := checkFile(t, c, p, "root.pem", "bot.pem"); got != want || got != reason.RevocationStatusUnknown {
				t.Errorf("Check = %q, openssl says %q", string(got), string(want))
			}
		})
	}
}

// TestKeyTypes: CAs with the key types an organisation's CA tools make
// (ECDSA P-256 and P-384, RSA 2048, Ed25519) issue agents with the key types
// the agent profiles allow (ECDSA P-256, Ed25519); the certificates verify
// and the CRLs, signed with each CA key type, are enforced as openssl
// enforces them. An agent key of another type is refused, saying so
// (docs/ca.md, "Bring your own PKI").
func TestKeyTypes(t *testing.T) {
	for _, caKey := range []string{"ec", "ec384", "rsa", "ed25519"} {
		t.Run("ca-"+caKey, func(t *testing.T) {
			p := testca.NewOpenSSLPKI(t)
			p.KeyType = caKey
			p.Root("root")
			for _, k := range []string{"ec", "ed25519"} {
				p.KeyType = k
				p.Agent("bot-"+k, "root", byoTD)
			}
			p.Revoke("root", "bot-ed25519.pem")
			p.CRL("root", "root.crl")
			c, _ := start(t, Config{Tenants: map[string]TenantConfig{byoTD: {
				CAs: identityCAs(t, p, "root.pem"), CRLFiles: []string{p.Path("root.crl")},
			}}})
			waitFor(t, "ready", c.Ready)
			for _, cert := range []string{"bot-ec.pem", "bot-ed25519.pem"} {
				want := opensslSays(t, p, cert, "-CAfile", "root.pem", "-CRLfile", "root.crl", "-crl_check")
				if got := checkFile(t, c, p, "root.pem", cert); got != want {
					t.Errorf("%s: Check = %q, openssl says %q", cert, string(got), string(want))
				}
			}
		})
	}
	p := testca.NewOpenSSLPKI(t)
	p.Root("root")
	b, err := identity.LoadBundle(byoTD, p.Path("root.pem"), identity.ProfileNative)
	if err != nil {
		t.Fatal(err)
	}
	v, err := identity.NewVerifier(identity.Config{Bundles: []identity.Bundle{b}})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"rsa", "ec384"} {
		p.KeyType = k
		p.Agent("bot-"+k, "root", byoTD)
		_, ierr := v.Identify(&authv3.AttributeContext{Source: &authv3.AttributeContext_Peer{Certificate: p.URLEncoded("bot-" + k + ".pem")}})
		if ierr == nil || ierr.Reason != reason.InvalidAgentProfile || !strings.Contains(ierr.Error(), "is not ECDSA P-256 or Ed25519") {
			t.Errorf("agent key %s: %v, want invalid_agent_profile naming the allowed keys", k, ierr)
		}
	}
}

// TestDeltaCRLRefused: a delta CRL (`openssl ca -gencrl` with a deltaCRL
// extension) is refused: only complete CRLs are used (docs/ca.md).
func TestDeltaCRLRefused(t *testing.T) {
	p := testca.NewOpenSSLPKI(t)
	p.Root("root")
	p.SetCRLExtensions("root", "2.5.29.27 = critical, DER:02:01:01") // deltaCRLIndicator, base CRL 1
	p.CRL("root", "delta.crl")
	_, err := ParseCRLs(p.Read("delta.crl"), identityCAs(t, p, "root.pem"), 0)
	if err == nil || !strings.Contains(err.Error(), "unsupported critical extension 2.5.29.27") {
		t.Fatalf("delta CRL: err = %v", err)
	}
}

// TestDocsBYOPKITestsExist: every test the "Bring your own PKI" table of
// docs/ca.md names exists in the package it names, so the table cannot
// claim a test that was renamed or removed.
func TestDocsBYOPKITestsExist(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "ca.md"))
	if err != nil {
		t.Fatal(err)
	}
	start := strings.Index(string(doc), "## Bring your own PKI")
	end := strings.Index(string(doc)[start+1:], "\n## ")
	if start < 0 || end < 0 {
		t.Fatal(`docs/ca.md has no "Bring your own PKI" section`)
	}
	section := string(doc)[start : start+1+end]
	refs := regexp.MustCompile("`(?:internal/([a-z]+) )?(Test[A-Za-z0-9]+)`").FindAllStringSubmatch(section, -1)
	if len(refs) < 10 {
		t.Fatalf("only %d test references found", len(refs))
	}
	pkg := ""
	for _, r := range refs {
		if r[1] != "" {
			pkg = r[1] // a bare `TestX` belongs to the package named before it
		}
		files, _ := filepath.Glob(filepath.Join("..", pkg, "*_test.go"))
		found := false
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(b), "func "+r[2]+"(") {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("docs/ca.md names %s in internal/%s, which has no such test", r[2], pkg)
		}
	}
}
