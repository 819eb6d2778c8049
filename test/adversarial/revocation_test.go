package adversarial

import (
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/server"
	"github.com/agentauthz/agentauthz/internal/testca"
)

// TestRevocationOffIsExplicit (#15.1): a tenant configured with no
// revocation source (the old README `serve --trust-bundle` example) used to
// allow revoked certificates, log nothing and report ready. Now it does not
// start; running without revocation takes revocation.disabled (or serve
// --no-revocation), which is logged, shown on /readyz and counted in
// agentauthz_revocation_disabled.
func TestRevocationOffIsExplicit(t *testing.T) {
	ca := testca.New(t)
	cfg := newConfig(t, ca.WriteBundle(), func(c *config.Config) { c.TrustBundles[0].Revocation.Disabled = false })
	if _, err := server.Assemble(cfg, hclog.NewNullLogger()); err == nil ||
		!strings.Contains(err.Error(), `tenant "example.test" has no revocation source`) {
		t.Fatalf("a tenant without a revocation source: assemble err = %v", err)
	}

	svc := startService(t, newConfig(t, ca.WriteBundle(), nil)) // revocation.disabled: true
	eventually(t, "ready", func() bool { c, _ := httpGet(t, "http://"+svc.httpAddr+"/readyz"); return c == 200 })
	if _, body := httpGet(t, "http://"+svc.httpAddr+"/readyz"); !strings.Contains(body, "revocation: tenant example.test: revocation checking disabled") {
		t.Errorf("/readyz does not show the opt-out:\n%s", body)
	}
	if _, body := httpGet(t, "http://"+svc.httpAddr+"/metrics"); !strings.Contains(body, `agentauthz_revocation_disabled{tenant="example.test"} 1`) {
		t.Errorf("/metrics lacks agentauthz_revocation_disabled for the tenant")
	}
}
