package revocation

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentauthz/agentauthz/internal/testca"
)

func signedEvent(t *testing.T, ca *testca.CA, ev WatchEvent) WatchEvent {
	t.Helper()
	sig, err := SignPush(ca.Key, PushMessage(&ev))
	if err != nil {
		t.Fatal(err)
	}
	ev.Signature = sig
	return ev
}

// TestVerifyPush: every part of the pushed state is covered by the
// signature, and an expired or unsigned event is refused with its reason.
func TestVerifyPush(t *testing.T) {
	ca, other := testca.New(t), testca.New(t)
	now := time.Now()
	good := WatchEvent{Generation: 7, Tenant: td, CRL: []byte{1, 2, 3}, RevokedAgents: []string{"bot-a"},
		Restrictions: json.RawMessage(`{"bot-b":{"quarantined":true}}`), Expires: now.Add(time.Minute).Unix()}
	ev := signedEvent(t, ca, good)
	cas := []*x509.Certificate{other.Cert, ca.Cert}
	if err := VerifyPush(cas, &ev, now); err != nil {
		t.Fatalf("good event: %v", err)
	}
	for _, tc := range []struct {
		name   string
		change func(*WatchEvent)
		cas    []*x509.Certificate
		reason string
	}{
		{"agent removed", func(e *WatchEvent) { e.RevokedAgents = []string{} }, cas, PushBadSignature},
		{"quarantine removed", func(e *WatchEvent) { e.Restrictions = json.RawMessage(`{}`) }, cas, PushBadSignature},
		{"generation changed", func(e *WatchEvent) { e.Generation = 8 }, cas, PushBadSignature},
		{"expiry extended", func(e *WatchEvent) { e.Expires += 3600 }, cas, PushBadSignature},
		{"crl swapped", func(e *WatchEvent) { e.CRL = []byte{9} }, cas, PushBadSignature},
		{"tenant changed", func(e *WatchEvent) { e.Tenant = "other.test" }, cas, PushBadSignature},
		{"unsigned", func(e *WatchEvent) { e.Signature = nil }, cas, PushUnsigned},
		{"foreign CA", func(*WatchEvent) {}, []*x509.Certificate{other.Cert}, PushBadSignature},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := ev
			tc.change(&e)
			err := VerifyPush(tc.cas, &e, now)
			var pe *PushError
			if !errors.As(err, &pe) || pe.Reason != tc.reason {
				t.Errorf("got %v, want reason %s", err, tc.reason)
			}
		})
	}
	var pe *PushError
	if err := VerifyPush(cas, &ev, now.Add(2*time.Minute)); !errors.As(err, &pe) || pe.Reason != PushExpired {
		t.Errorf("expired event: %v", err)
	}
	bad := good
	bad.Restrictions = json.RawMessage(`[1]`)
	bad = signedEvent(t, ca, bad)
	if err := VerifyPush(cas, &bad, now); !errors.As(err, &pe) || pe.Reason != PushBadRestriction {
		t.Errorf("restrictions not an object: %v", err)
	}
}

// TestPushOlderGenerationRefused: a replayed event older than the one
// applied is refused even though its signature is valid.
func TestPushOlderGenerationRefused(t *testing.T) {
	ca := testca.New(t)
	var mu sync.Mutex
	var got []string
	c, err := New(Config{Tenants: map[string]TenantConfig{td: {CAs: []*x509.Certificate{ca.Cert}, WatchURL: "http://127.0.0.1:1/v1/watch"}},
		OnRestrictions: func(_ string, r json.RawMessage) { mu.Lock(); got = append(got, string(r)); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(c.metrics)
	exp := time.Now().Add(time.Minute).Unix()
	newer := signedEvent(t, ca, WatchEvent{Generation: 5, Tenant: td, CRLETag: `"x"`, RevokedAgents: []string{}, Restrictions: json.RawMessage(`{"a":{"quarantined":true}}`), Expires: exp})
	older := signedEvent(t, ca, WatchEvent{Generation: 4, Tenant: td, CRLETag: `"x"`, RevokedAgents: []string{}, Restrictions: json.RawMessage(`{}`), Expires: exp})
	if err := c.checkPush(td, &newer); err != nil {
		t.Fatal(err)
	}
	c.pushApplied(td, nil, &newer)
	if err := c.checkPush(td, &older); err == nil {
		t.Fatal("older generation accepted")
	}
	if n := metric(t, reg, "agentauthz_revocation_push_refused_total", map[string]string{"tenant": td, "reason": PushOlder}); n != 1 {
		t.Errorf("refused older = %v", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[0] != `{"a":{"quarantined":true}}` {
		t.Errorf("restrictions handed on: %q", got)
	}
}

// TestPushForgedEventsIgnored: a watch server whose events are signed by a
// key other than the tenant CA's cannot revoke, un-revoke or restrict:
// every event is refused and counted, and the CRL (signed on its own) is
// still fetched from the fallback endpoint.
func TestPushForgedEventsIgnored(t *testing.T) {
	ca, mallory := testca.New(t), testca.New(t)
	x := ca.Issue("bot-x")
	store := newFakeStore(ca)
	store.signer = mallory.Key
	srv, _, _ := startPublisher(t, store)
	var called atomic.Bool
	c, reg := start(t, Config{Tenants: map[string]TenantConfig{td: {
		CAs: []*x509.Certificate{ca.Cert}, WatchURL: srv.URL + WatchPath, PollInterval: 50 * time.Millisecond,
	}}, OnRestrictions: func(string, json.RawMessage) { called.Store(true) }})
	waitFor(t, "ready from the fallback CRL", c.Ready)
	store.revokeAgent("bot-x")
	waitFor(t, "refusals", func() bool {
		return metric(t, reg, "agentauthz_revocation_push_refused_total", map[string]string{"tenant": td, "reason": PushBadSignature}) >= 2
	})
	if got := c.Check(td, issuedBy(ca, serialOf(x)), "bot-x"); got != "" {
		t.Errorf("forged agent list applied: %q", got)
	}
	if called.Load() {
		t.Error("forged restrictions handed on")
	}
}

// TestPushMessagePinned: the revoked-agent list is hashed as the JSON
// array json.Marshal wrote up to go1.26, on any toolchain, so a control
// plane and a replica built with different ones agree on the message.
func TestPushMessagePinned(t *testing.T) {
	for _, c := range []struct {
		agents []string
		json   string
	}{
		{nil, `null`},
		{[]string{}, `[]`},
		{[]string{"bot-a", "bot.b_c"}, `["bot-a","bot.b_c"]`},
		{[]string{"<&>", "a\xffb", "\u2028"}, `["\u003c\u0026\u003e","a\ufffdb","\u2028"]`},
	} {
		msg := string(PushMessage(&WatchEvent{Tenant: td, Generation: 1, Expires: 2, RevokedAgents: c.agents}))
		if want := "agents:" + hexSum([]byte(c.json)) + "\n"; !strings.Contains(msg, want) {
			t.Errorf("%q: message\n%s\nwant the line %s (sha256 of %s)", c.agents, msg, want, c.json)
		}
	}
}
