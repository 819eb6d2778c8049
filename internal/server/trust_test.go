package server

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentauthz/agentauthz/internal/checkreq"
	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/testca"
)

func reasonOf(t *testing.T, resp *authv3.CheckResponse) string {
	t.Helper()
	return resp.GetDynamicMetadata().GetFields()["reason"].GetStringValue()
}

func checkLeaf(t *testing.T, c Components, l *testca.Leaf) string {
	t.Helper()
	req, err := checkreq.Build(checkreq.Request{Method: "GET", Path: "/v1/payments/p-1", CertPEM: l.PEM(), Via: checkreq.ViaPeer})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Authorization.Check(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	return reasonOf(t, resp)
}

// TestTrustBundleCorruptedAtRuntime: a broken bundle file keeps the last
// valid bundle in force; a new valid file replaces it.
func TestTrustBundleCorruptedAtRuntime(t *testing.T) {
	oldCA, newCA := testca.New(t), testca.New(t)
	bundle := filepath.Join(t.TempDir(), "bundle.pem")
	if err := os.WriteFile(bundle, oldCA.PEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := config.Config{DataDir: t.TempDir(), TrustBundles: []config.TrustBundle{{TrustDomain: "example.test", File: bundle, Revocation: config.Revocation{Disabled: true}}}}
	cfg.Policy.Dir = filepath.Join("..", "..", "policies")
	cfg.ApplyDefaults()
	c, err := Assemble(cfg, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, cl := range c.Closers {
			cl()
		}
	}()
	reader := func(ca *testca.CA) *testca.Leaf {
		return ca.Issue("reader", testca.Trust(1), testca.Scopes("payments:read"))
	}

	if got := checkLeaf(t, c, reader(oldCA)); got != "allowed" {
		t.Fatalf("before: %s", got)
	}
	if err := os.WriteFile(bundle, []byte("-----BEGIN CERTIFICATE-----\ngarbage\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.Reload(); err == nil {
		t.Fatal("reload of a corrupted bundle succeeded")
	}
	// A certificate never seen before (no cache) still verifies against the last valid bundle.
	if got := checkLeaf(t, c, reader(oldCA)); got != "allowed" {
		t.Errorf("after corruption: %s, want the last valid bundle in force", got)
	}
	if got := gatherValue(t, c.Registry, "agentauthz_trust_bundle_stale"); got != 1 {
		t.Errorf("stale gauge = %v", got)
	}
	if err := os.Remove(bundle); err != nil {
		t.Fatal(err)
	}
	if err := c.Reload(); err == nil {
		t.Fatal("reload of a deleted bundle succeeded")
	}
	if got := checkLeaf(t, c, reader(oldCA)); got != "allowed" {
		t.Errorf("after deletion: %s", got)
	}
	if err := os.WriteFile(bundle, newCA.PEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := checkLeaf(t, c, reader(newCA)); got != "allowed" {
		t.Errorf("new CA after rotation: %s", got)
	}
	if got := checkLeaf(t, c, reader(oldCA)); got != "untrusted_issuer" {
		t.Errorf("old CA after rotation: %s, want untrusted_issuer", got)
	}
	if got := gatherValue(t, c.Registry, "agentauthz_trust_bundle_stale"); got != 0 {
		t.Errorf("stale gauge = %v after recovery", got)
	}
}

func TestTrustReloaderPollsFiles(t *testing.T) {
	oldCA, newCA := testca.New(t), testca.New(t)
	bundle := filepath.Join(t.TempDir(), "bundle.pem")
	os.WriteFile(bundle, oldCA.PEM(), 0o644)
	cfg := config.Config{DataDir: t.TempDir(), TrustBundles: []config.TrustBundle{{TrustDomain: "example.test", File: bundle, Revocation: config.Revocation{Disabled: true}}}}
	cfg.Policy.Dir = filepath.Join("..", "..", "policies")
	cfg.ApplyDefaults()
	c, err := Assemble(cfg, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, cl := range c.Closers {
			cl()
		}
	}()
	// Run the real loops (policy, revocation, trust) as the server would.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, loop := range c.Loops {
		go loop(ctx)
	}
	os.WriteFile(bundle, newCA.PEM(), 0o644)
	l := newCA.Issue("reader", testca.Trust(1), testca.Scopes("payments:read"))
	deadline := time.Now().Add(10 * time.Second)
	for checkLeaf(t, c, l) != "allowed" {
		if time.Now().After(deadline) {
			t.Fatal("a changed bundle file was never picked up")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func gatherValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			m := mf.GetMetric()[0]
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}
