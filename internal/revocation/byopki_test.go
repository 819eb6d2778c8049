package revocation

import (
	"crypto/x509"
	"encoding/pem"
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
