package revocation

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/reason"
	"github.com/agentauthz/agentauthz/internal/testca"
)

// TestHighWaterMarkSurvivesRestart: a restarted replica refuses a validly
// signed CRL older than one it applied before the restart (#15.2). Kept in
// memory only, the mark was lost and the older CRL un-revoked the
// certificate until its nextUpdate plus grace.
func TestHighWaterMarkSurvivesRestart(t *testing.T) {
	ca := testca.New(t)
	leaf := ca.Issue("bot")
	state := t.TempDir()
	path := tempFile(t, "ca.crl")
	now := time.Now()
	writeFile(t, path, ca.CRL(5, now, now.Add(time.Hour), leaf.Cert.SerialNumber))
	cfg := func() Config {
		return Config{StateDir: state, Tenants: map[string]TenantConfig{td: {
			CAs: []*x509.Certificate{ca.Cert}, CRLFiles: []string{path}, PollInterval: time.Hour,
		}}}
	}
	// First life: CRL 5 revokes the leaf.
	func() {
		c, err := New(cfg())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { c.Run(ctx); close(done) }()
		defer func() { cancel(); <-done }()
		waitCheck(t, c, td, issuedBy(ca, serialOf(leaf)), "bot", reason.CertificateRevoked)
	}()
	if _, err := os.Stat(filepath.Join(state, td+".json")); err != nil {
		t.Fatalf("no high-water mark file: %v", err)
	}
	// Restart with an older, validly signed CRL that does not list it.
	writeFile(t, path, ca.CRL(4, now.Add(-time.Hour), now.Add(time.Hour)))
	c, _ := start(t, cfg())
	waitFor(t, "the older crl tried", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.tenants[td].sources[0].tried
	})
	if got := c.Check(td, issuedBy(ca, serialOf(leaf)), "bot"); got != reason.RevocationStatusUnknown {
		t.Errorf("after restart with an older crl: Check = %q, want revocation_status_unknown", string(got))
	}
	if d := c.Status()[td].Detail; !strings.Contains(d, "older") || !strings.Contains(d, "4 < 5") {
		t.Errorf("status detail %q does not say the crl is older", d)
	}
	// CRL 6 is accepted and raises the mark.
	writeFile(t, path, ca.CRL(6, now, now.Add(time.Hour)))
	waitCheck(t, c, td, issuedBy(ca, serialOf(leaf)), "bot", "")
	data, err := os.ReadFile(filepath.Join(state, td+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var f hwmFile
	if err := json.Unmarshal(data, &f); err != nil || len(f.Marks) != 1 {
		t.Fatalf("mark file %s: %v", data, err)
	}
	for _, m := range f.Marks {
		if m.Number.Int64() != 6 {
			t.Errorf("mark %v, want 6", m.Number)
		}
	}
}

// TestHighWaterMarkFileCorrupt: a mark file that cannot be read stops New,
// saying what to do, rather than starting without the protection.
func TestHighWaterMarkFileCorrupt(t *testing.T) {
	ca := testca.New(t)
	state := t.TempDir()
	if err := os.WriteFile(filepath.Join(state, td+".json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := New(Config{StateDir: state, Tenants: map[string]TenantConfig{td: {
		CAs: []*x509.Certificate{ca.Cert}, CRLFiles: []string{"x.crl"},
	}}})
	if err == nil || !strings.Contains(err.Error(), "corrupt") || !strings.Contains(err.Error(), "move the file away") {
		t.Fatalf("err = %v", err)
	}
}

// TestRefusedEventKeepsAgentRevocations: a watch event whose CRL is refused
// (older than the one held) does not apply its revoked_agents either, so
// whoever controls the channel cannot clear agent revocations by replaying
// an old CRL with an empty list (#15.2).
func TestRefusedEventKeepsAgentRevocations(t *testing.T) {
	ca := testca.New(t)
	now := time.Now()
	events := make(chan WatchEvent, 4)
	events <- WatchEvent{Generation: 2, Tenant: td, CRL: ca.CRL(2, now, now.Add(time.Hour)), RevokedAgents: []string{"bot-a"}}
	srv := newHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != WatchPath {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		for {
			select {
			case <-r.Context().Done():
				return
			case ev := <-events:
				ev.Expires = time.Now().Add(time.Hour).Unix()
				sig, err := SignPush(ca.Key, PushMessage(&ev))
				if err != nil {
					t.Error(err)
					return
				}
				ev.Signature = sig
				data, _ := json.Marshal(ev)
				fmt.Fprintf(w, "event: revocation\nid: %d\ndata: %s\n\n", ev.Generation, data)
				w.(http.Flusher).Flush()
			case <-time.After(10 * time.Millisecond):
				fmt.Fprint(w, ": ping\n\n")
				w.(http.Flusher).Flush()
			}
		}
	}))
	c, reg := start(t, Config{Tenants: map[string]TenantConfig{td: {
		CAs: []*x509.Certificate{ca.Cert}, WatchURL: srv.URL + WatchPath, PollInterval: time.Hour,
	}}})
	bot := issuedBy(ca, "1f")
	waitCheck(t, c, td, bot, "bot-a", reason.AgentRevoked)
	refused := func() float64 {
		return metric(t, reg, "agentauthz_revocation_refresh_errors_total", map[string]string{"tenant": td, "source": "watch"})
	}
	before := refused()
	// An event with CRL 1, validly signed but older than the CRL held, and
	// no agent revoked (a replica's CRL can be ahead of the channel's: it
	// may have another source).
	events <- WatchEvent{Generation: 3, Tenant: td, CRL: ca.CRL(1, now.Add(-time.Hour), now.Add(time.Hour)), RevokedAgents: []string{}}
	waitFor(t, "the replayed crl refused", func() bool { return refused() > before })
	if got := c.Check(td, bot, "bot-a"); got != reason.AgentRevoked {
		t.Errorf("bot-a after the replayed event: %q, want agent_revoked", string(got))
	}
}

// TestRefusedFetchedCRLKeepsAgentRevocations: the same for an event that
// announces its CRL by ETag (too large to inline): when the CRL fetched for
// it is refused as older, the event's agent list is not applied (#15.2).
func TestRefusedFetchedCRLKeepsAgentRevocations(t *testing.T) {
	ca := testca.New(t)
	store := newFakeStore(ca)
	srv, _, _ := startPublisher(t, store, 1) // every CRL by ETag
	c, reg := start(t, Config{Tenants: map[string]TenantConfig{td: {
		CAs: []*x509.Certificate{ca.Cert}, WatchURL: srv.URL + WatchPath, PollInterval: time.Hour,
	}}})
	bot := issuedBy(ca, "1f")
	store.revokeAgent("bot-a") // CRL 2, agents [bot-a]
	waitCheck(t, c, td, bot, "bot-a", reason.AgentRevoked)
	refused := func() float64 {
		return metric(t, reg, "agentauthz_revocation_refresh_errors_total", map[string]string{"tenant": td, "source": "watch"})
	}
	before := refused()
	// The server now publishes an older CRL (number 1) and no agent.
	now := time.Now()
	older := ca.CRL(1, now.Add(-time.Hour), now.Add(time.Hour))
	store.mu.Lock()
	store.crl, store.agents = older, map[string]bool{}
	store.gen++
	store.mu.Unlock()
	waitFor(t, "the fetched older crl refused", func() bool { return refused() > before })
	if got := c.Check(td, bot, "bot-a"); got != reason.AgentRevoked {
		t.Errorf("bot-a after an event whose fetched crl was refused: %q, want agent_revoked", string(got))
	}
}
