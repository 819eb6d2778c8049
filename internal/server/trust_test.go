package server

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
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

// lockedBuffer collects log output written from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestTrustReloadAllOrNothing: a reload that the verifier would accept but
// revocation refuses (a SPIFFE tenant's bundle file emptied, while its CRLs
// still need a CA) changes neither. Before, the verifier switched to the
// new bundles and the log said the last valid bundles stayed in force.
func TestTrustReloadAllOrNothing(t *testing.T) {
	oldCA, newCA, spiffeCA := testca.New(t), testca.New(t), testca.NewDomain(t, "spiffe.test")
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	now := time.Now()
	revoked := oldCA.Issue("revoked-bot", testca.Trust(1), testca.Scopes("payments:read"))
	bundle := write("bundle.pem", oldCA.PEM())
	spiffeBundle := write("spiffe.pem", spiffeCA.PEM())
	cfg := config.Config{DataDir: t.TempDir(), TrustBundles: []config.TrustBundle{
		{TrustDomain: "example.test", File: bundle, Revocation: config.Revocation{
			CRLFiles: []string{write("example.crl", oldCA.CRL(1, now, now.Add(time.Hour), revoked.Cert.SerialNumber))}}},
		{TrustDomain: "spiffe.test", File: spiffeBundle, Profile: "spiffe", Revocation: config.Revocation{
			CRLFiles: []string{write("spiffe.crl", spiffeCA.CRL(1, now, now.Add(time.Hour)))}}},
	}}
	cfg.Identity.Sources = []string{"peer_certificate", "xfcc", "spiffe_id"}
	cfg.Policy.Dir = filepath.Join("..", "..", "policies")
	cfg.ApplyDefaults()
	logs := &lockedBuffer{}
	c, err := Assemble(cfg, hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Info}))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, cl := range c.Closers {
			cl()
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, loop := range c.Loops {
		go loop(ctx)
	}
	reader := func(ca *testca.CA) *testca.Leaf {
		return ca.Issue("reader", testca.Trust(1), testca.Scopes("payments:read"))
	}
	deadline := time.Now().Add(10 * time.Second)
	for checkLeaf(t, c, revoked) != "certificate_revoked" {
		if time.Now().After(deadline) {
			t.Fatal("the CRL was never loaded")
		}
		time.Sleep(50 * time.Millisecond)
	}

	// example.test rotates to a new CA while spiffe.test's file is emptied
	// (valid for the verifier: a SPIFFE bundle may list no CA).
	write("bundle.pem", newCA.PEM())
	write("spiffe.pem", nil)
	if err := c.Reload(); err == nil {
		t.Fatal("reload accepted a tenant with CRLs and no CA to verify them")
	}
	if !strings.Contains(logs.String(), "the last valid bundles stay in force") {
		t.Fatalf("no refusal logged:\n%s", logs)
	}
	// The verifier still trusts the old CA only (a certificate never seen, so
	// not cached), and revocation still holds the old CA's CRL: had its CAs
	// switched, the old CRL would be dropped and both answers would be
	// revocation_status_unknown.
	if got := checkLeaf(t, c, reader(oldCA)); got != "allowed" {
		t.Errorf("old CA after the refused reload: %s, want allowed", got)
	}
	if got := checkLeaf(t, c, reader(newCA)); got != "untrusted_issuer" {
		t.Errorf("new CA after the refused reload: %s, want untrusted_issuer", got)
	}
	if got := checkLeaf(t, c, revoked); got != "certificate_revoked" {
		t.Errorf("revoked agent after the refused reload: %s, want certificate_revoked", got)
	}
	if got := gatherValue(t, c.Registry, "agentauthz_trust_bundle_stale"); got != 1 {
		t.Errorf("stale gauge = %v", got)
	}

	// Fixed: both move together.
	write("spiffe.pem", spiffeCA.PEM())
	if err := c.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := checkLeaf(t, c, reader(newCA)); got != "revocation_status_unknown" {
		t.Errorf("new CA after the reload: %s, want revocation_status_unknown (verified; no CRL from it yet)", got)
	}
	if got := checkLeaf(t, c, reader(oldCA)); got != "untrusted_issuer" {
		t.Errorf("old CA after the reload: %s, want untrusted_issuer", got)
	}
}
