package revocation

import (
	"crypto/x509"
	"strings"
	"testing"

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

// checkFile answers Check for the certificate in file cert of p.
func checkFile(c *Checker, p *testca.OpenSSLPKI, cert string) reason.Code {
	return c.Check(byoTD, p.Cert(cert).SerialNumber.Text(16), "bot")
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
		if got := checkFile(c, p, cert); got != want {
			t.Errorf("%s: Check = %q, openssl says %q", cert, string(got), string(want))
		}
	}
	if checkFile(c, p, "gone.pem") != reason.CertificateRevoked {
		t.Error("the revoked agent is not revoked")
	}
}
