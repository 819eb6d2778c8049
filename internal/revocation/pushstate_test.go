package revocation

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/reason"
	"github.com/agentauthz/agentauthz/internal/testca"
)

// TestPushStateSurvivesRestart: a replica restarted while the control plane
// is gone keeps the agent revocations and restrictions it last verified
// (and the CRL that came with them); a saved state that was altered is
// refused, and the tenant then starts unready, as without it.
func TestPushStateSurvivesRestart(t *testing.T) {
	ca := testca.New(t)
	x, ok := ca.Issue("bot-x"), ca.Issue("bot-ok")
	store := newFakeStore(ca)
	store.mu.Lock()
	store.restr = []byte(`{"bot-q":{"quarantined":true,"removed_scopes":[],"note":"INC-7"}}`)
	store.mu.Unlock()
	srv, _, _ := startPublisher(t, store)
	stateDir := t.TempDir()
	var mu sync.Mutex
	restr := map[int]string{}
	cfg := func(run int) Config {
		return Config{Tenants: map[string]TenantConfig{td: {CAs: []*x509.Certificate{ca.Cert}, WatchURL: srv.URL + WatchPath,
			PollInterval: time.Hour}}, StateDir: stateDir, Logger: testLogger(t),
			OnRestrictions: func(_ string, r json.RawMessage) { mu.Lock(); restr[run] = string(r); mu.Unlock() }}
	}
	got := func(run int) string { mu.Lock(); defer mu.Unlock(); return restr[run] }

	c, err := New(cfg(1))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	store.revokeAgent("bot-x")
	waitCheck(t, c, td, issuedBy(ca, serialOf(x)), "bot-x", reason.AgentRevoked)
	waitFor(t, "restrictions", func() bool { return strings.Contains(got(1), "bot-q") })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	srv.Close() // the control plane is gone

	// Restarted: the saved state is in force before Run, and stays.
	c2, err := New(cfg(2))
	if err != nil {
		t.Fatal(err)
	}
	if !c2.Ready() {
		t.Fatal("not ready from the saved state")
	}
	if r := c2.Check(td, issuedBy(ca, serialOf(x)), "bot-x"); r != reason.AgentRevoked {
		t.Fatalf("revoked agent after the restart: %q", r)
	}
	if r := c2.Check(td, issuedBy(ca, serialOf(ok)), "bot-ok"); r != "" {
		t.Fatalf("other agent after the restart: %q", r)
	}
	if !strings.Contains(got(2), `"bot-q":{"quarantined":true`) {
		t.Fatalf("restrictions after the restart: %q", got(2))
	}
	if st := c2.PushStatuses(); len(st) != 1 || !st[0].Restored || st[0].Connected || st[0].Applied.IsZero() {
		t.Fatalf("push status %+v", st)
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	go func() { done <- c2.Run(ctx2) }()
	time.Sleep(50 * time.Millisecond) // a failed connect and CRL poll: nothing is forgotten
	if r := c2.Check(td, issuedBy(ca, serialOf(x)), "bot-x"); r != reason.AgentRevoked {
		t.Fatalf("revoked agent with the control plane unreachable: %q", r)
	}
	cancel2()
	<-done

	// An altered file (the restrictions emptied) does not verify.
	path := filepath.Join(stateDir, td+".push.json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f pushFile
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	f.Event = []byte(strings.Replace(string(f.Event), `"bot-q":{"quarantined":true`, `"bot-q":{"quarantined":false`, 1))
	b, _ = json.Marshal(f)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	c3, err := New(cfg(3))
	if err != nil {
		t.Fatal(err)
	}
	if c3.Ready() || got(3) != "" {
		t.Fatalf("altered saved state applied: ready %v, restrictions %q", c3.Ready(), got(3))
	}
}

// FuzzRestorePush: whatever the saved push state file holds, New either
// applies exactly a state the tenant's CA signed or starts without it, and
// never panics.
func FuzzRestorePush(f *testing.F) {
	ca := testca.New(f)
	ev := WatchEvent{Generation: 3, Tenant: td, RevokedAgents: []string{"bot-a"}, CRLETag: `"e"`,
		Restrictions: json.RawMessage(`{"bot-b":{"quarantined":true}}`), Expires: time.Now().Add(time.Hour).Unix()}
	sig, err := SignPush(ca.Key, PushMessage(&ev))
	if err != nil {
		f.Fatal(err)
	}
	ev.Signature = sig
	raw, _ := json.Marshal(ev)
	good, _ := json.Marshal(pushFile{Version: 1, Tenant: td, VerifiedAt: time.Unix(1_800_000_000, 0).UTC(), Event: raw})
	f.Add(good)
	f.Add([]byte(`{"version":1,"tenant":"example.test","event":"e30="}`))
	f.Add([]byte(`{"version":2}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, td+".push.json"), data, 0o600); err != nil {
			t.Fatal(err)
		}
		var got []string
		c, err := New(Config{Tenants: map[string]TenantConfig{td: {CAs: []*x509.Certificate{ca.Cert}, WatchURL: "http://127.0.0.1:1/v1/watch"}},
			StateDir: dir, OnRestrictions: func(_ string, r json.RawMessage) { got = append(got, string(r)) }})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) > 0 && (len(got) != 1 || got[0] != string(ev.Restrictions) || len(c.PushStatuses()) != 1 || !c.PushStatuses()[0].Restored) {
			t.Fatalf("applied restrictions %q from %s", got, data)
		}
	})
}
