package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/testca"
)

// Envoy running ext_authz without the ext_proc filter: allowed decisions
// fill the response-signing table, and serve says so in its metrics and
// its log.
func TestPendingDecisionsWithoutExtProc(t *testing.T) {
	ca := testca.New(t)
	bundle := filepath.Join(t.TempDir(), "bundle.pem")
	if err := os.WriteFile(bundle, ca.PEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := config.Config{DataDir: t.TempDir(), TrustBundles: []config.TrustBundle{{TrustDomain: "example.test", File: bundle, Revocation: config.Revocation{Disabled: true}}}}
	cfg.Policy.Dir = filepath.Join("..", "..", "policies")
	cfg.ResponseSigning.MaxPending = 2
	cfg.ApplyDefaults()
	logs := &lockedBuffer{}
	c, err := Assemble(cfg, hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Warn}))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, cl := range c.Closers {
			cl()
		}
	}()
	reader := ca.Issue("reader", testca.Trust(1), testca.Scopes("payments:read"))
	for range 3 {
		if got := checkLeaf(t, c, reader); got != "allowed" {
			t.Fatalf("check: %s", got)
		}
	}
	if got := gatherValue(t, c.Registry, "agentauthz_extproc_decisions_pending"); got != 2 {
		t.Errorf("pending = %v, want 2", got)
	}
	if got := gatherValue(t, c.Registry, "agentauthz_extproc_decisions_evicted_total"); got != 1 {
		t.Errorf("evicted = %v, want 1", got)
	}
	if s := logs.String(); !strings.Contains(s, "no ext_proc stream has asked for one since startup") {
		t.Errorf("no warning that ext_proc never came:\n%s", s)
	}
}
