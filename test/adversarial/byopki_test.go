package adversarial

import (
	"os"
	"testing"

	"github.com/agentauthz/agentauthz/internal/checkreq"
	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/testca"
)

// TestRevokedIssuingCAThroughServe (#28.2, #28.3), end to end through the
// service as serve assembles it: a two-tier PKI made with `openssl ca`, the
// bundle `cat root.pem issuing.pem`, the CRL file `cat root.crl
// issuing.crl`. An agent the issuing CA revoked is denied; when the root
// then revokes the issuing CA, every agent it issued is denied — what
// `openssl verify -crl_check_all` answers on the same files at each step.
func TestRevokedIssuingCAThroughServe(t *testing.T) {
	p := testca.NewOpenSSLPKI(t)
	p.Root("root")
	p.Intermediate("issuing", "root")
	p.Agent("bot", "issuing", "example.test")
	p.Agent("gone", "issuing", "example.test")
	p.Revoke("issuing", "gone.pem")
	p.CRL("root", "root.crl")
	p.CRL("issuing", "issuing.crl")
	p.Cat("bundle.pem", "root.pem", "issuing.pem")
	p.Cat("crls.pem", "root.crl", "issuing.crl")
	svc := startService(t, newConfig(t, p.Path("bundle.pem"), func(c *config.Config) {
		c.TrustBundles[0].Revocation = config.Revocation{CRLFiles: []string{p.Path("crls.pem")}}
	}))
	eventually(t, "ready", func() bool { c, _ := httpGet(t, "http://"+svc.httpAddr+"/readyz"); return c == 200 })

	check := func(agent string) verdict {
		req, err := checkreq.Build(checkreq.Request{Method: "GET", Path: "/v1/payments/p-1", CertPEM: p.Read(agent + ".pem"),
			Via: checkreq.ViaPeer, RequestID: "byopki-" + agent})
		if err != nil {
			t.Fatal(err)
		}
		return reduce(mustCheck(t, svc, req))
	}
	expect := func(agent string, revoked bool) {
		t.Helper()
		ok, out := p.Verify(agent+".pem", "-CAfile", "bundle.pem", "-CRLfile", "crls.pem", "-crl_check_all")
		if ok == revoked {
			t.Fatalf("openssl verify %s: ok=%v, want revoked=%v:\n%s", agent, ok, revoked, out)
		}
		v := check(agent)
		if revoked && (v.Allowed || v.Reason != "certificate_revoked" || v.Status != 401) {
			t.Errorf("%s: allowed=%v reason=%s status=%d, want certificate_revoked 401 (openssl: %s)", agent, v.Allowed, v.Reason, v.Status, out)
		}
		if !revoked && !v.Allowed {
			t.Errorf("%s: denied %s, openssl accepts it", agent, v.Reason)
		}
	}
	expect("bot", false)
	expect("gone", true)

	// The root revokes the issuing CA; the CRL file is replaced atomically.
	p.Revoke("root", "issuing.pem")
	p.CRL("root", "root.crl")
	p.Cat("crls.new", "root.crl", "issuing.crl")
	if err := os.Rename(p.Path("crls.new"), p.Path("crls.pem")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the issuing CA's agents denied", func() bool { return check("bot").Reason == "certificate_revoked" })
	expect("bot", true)
	expect("gone", true)
}
