package console

import (
	"bytes"
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/control"
)

// TestSessionsAcrossInstances runs two control-plane instances, each with
// its own data directory, on one PostgreSQL store, as behind a load
// balancer: a link minted for A's store signs in on B, a session made on
// either works on the other, and signing out on B ends the session, and its
// live tail, on A.
func TestSessionsAcrossInstances(t *testing.T) {
	a := newEnvOn(t, pgShared.Database(t))
	b := a.instance()

	// A link minted against A's store is claimed on B, once.
	tok, err := CreateLink(a.auth, "alice", control.RoleAuditor, time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	alice := a.client(nil)
	if code, body := b.post(alice, "/ui/login", url.Values{"token": {tok}}); code != http.StatusSeeOther {
		t.Fatalf("link of A claimed on B: %d %s", code, body)
	}
	if code, _ := a.post(a.client(nil), "/ui/login", url.Values{"token": {tok}}); code != http.StatusUnauthorized {
		t.Errorf("the link claimed on B worked again on A: %d", code)
	}
	// The session made on B works on A, with the same CSRF token.
	if code, _ := a.get(alice, "/ui/decisions"); code != http.StatusOK {
		t.Errorf("B's session on A: %d", code)
	}
	if ca, cb := a.csrf(alice, "/ui/decisions"), b.csrf(alice, "/ui/decisions"); ca != cb {
		t.Errorf("CSRF token differs between instances: %q %q", ca, cb)
	}

	// A session made on A works on B.
	bob := a.signIn("bob", control.RoleAuditor)
	if code, _ := b.get(bob, "/ui/decisions"); code != http.StatusOK {
		t.Errorf("A's session on B: %d", code)
	}

	// Signing out on B ends the session on A, and A's live tail of it.
	s := a.openStream(bob)
	if code, _ := b.post(bob, "/ui/logout", url.Values{"csrf": {b.csrf(bob, "/ui/decisions")}}); code != http.StatusOK {
		t.Fatalf("sign-out on B: %d", code)
	}
	if code, _ := a.get(bob, "/ui/decisions"); code != http.StatusUnauthorized {
		t.Errorf("A after sign-out on B: %d", code)
	}
	for {
		ev, data := s.next(t)
		if ev == "decision" || ev == "sampled" {
			continue
		}
		if ev != "end" || !strings.Contains(data, "Signed out") {
			t.Errorf("A's stream after sign-out on B: %q %q", ev, data)
		}
		break
	}
	// A certificate sign-in's CSRF token, keyed by a secret in the store,
	// is the same on both instances.
	adm := a.client(a.certFor("ops", control.RoleAdmin))
	if ta, tb := a.csrf(adm, agentPage), b.csrf(adm, agentPage); ta != tb {
		t.Errorf("certificate CSRF token differs between instances: %q %q", ta, tb)
	}
	// Alice, signed in separately, is still signed in.
	if code, _ := b.get(alice, "/ui/decisions"); code != http.StatusOK {
		t.Errorf("another session after bob's sign-out: %d", code)
	}
}

// TestSessionSurvivesRestart: sessions are in the store, not the process.
func TestSessionSurvivesRestart(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		c := e.signIn("carol", control.RoleAdmin)
		tok, err := CreateLink(e.auth, "dave", control.RoleAuditor, time.Minute, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		e.restart()
		if code, body := e.get(c, "/ui/fleet"); code != http.StatusOK || !strings.Contains(body, "carol") {
			t.Errorf("after a restart: %d", code)
		}
		// A link minted before the restart still works after it.
		if code, _ := e.post(e.client(nil), "/ui/login", url.Values{"token": {tok}}); code != http.StatusSeeOther {
			t.Errorf("link across a restart: %d", code)
		}
	})
}

// TestSessionStore checks what the store keeps of a session: only the
// SHA-256 of the cookie value (the CSRF token is derived from the value,
// not stored), the expiry enforced, expired rows purged and the count
// bounded.
func TestSessionStore(t *testing.T) {
	eachStore(t, func(t *testing.T, e *env) {
		now := time.Now()
		s := sessions{e.auth}
		id, se, err := s.create(control.Operator{Name: "erin", Role: control.RoleResponder}, now)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.auth.ConsoleSession(id, now); !errors.Is(err, ca.ErrNotFound) {
			t.Errorf("the session is stored under its cookie value: %v", err)
		}
		st, err := e.auth.ConsoleSession(secretHash(id), now)
		if err != nil || st.Operator != "erin" || st.Role != "responder" {
			t.Fatalf("stored session %+v %v", st, err)
		}
		if se.csrf == "" || se.csrf != sessionCSRF(id) || se.csrf == sessionCSRF(randomToken()) {
			t.Errorf("session CSRF token %q is not the one derived from its cookie value", se.csrf)
		}
		if got, err := s.get(id, now); err != nil || got == nil || got.csrf != se.csrf {
			t.Errorf("session read back: %+v %v, want CSRF %q", got, err, se.csrf)
		}
		if got, err := s.get(id, se.expires); got != nil || err != nil {
			t.Errorf("session at its expiry: %+v %v", got, err)
		}
		if got, err := s.get("not-a-token", now); got != nil || err != nil {
			t.Errorf("malformed id: %+v %v", got, err)
		}
		// Expired rows go when the next session is made.
		old := now.Add(-SessionTTL - time.Minute)
		oldID, _, err := s.create(control.Operator{Name: "old", Role: control.RoleAuditor}, old)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.create(control.Operator{Name: "new", Role: control.RoleAuditor}, now); err != nil {
			t.Fatal(err)
		}
		if _, err := e.auth.ConsoleSession(secretHash(oldID), old); !errors.Is(err, ca.ErrNotFound) {
			t.Errorf("expired session not purged: %v", err)
		}
		// At the bound, the sessions closest to expiry make room.
		put := func(name string, exp time.Time) string {
			h := secretHash(randomToken())
			if err := e.auth.PutConsoleSession(h, ca.ConsoleSession{Operator: name, Role: "auditor", Expires: exp}, now, 3); err != nil {
				t.Fatal(err)
			}
			return h
		}
		first := put("f1", now.Add(time.Minute))
		second := put("f2", now.Add(2*time.Minute))
		third := put("f3", now.Add(3*time.Minute))
		for name, h := range map[string]string{"closest to expiry": first, "second": second} {
			if _, err := e.auth.ConsoleSession(h, now); !errors.Is(err, ca.ErrNotFound) {
				t.Errorf("%s kept past the bound: %v", name, err)
			}
		}
		if _, err := e.auth.ConsoleSession(third, now); err != nil {
			t.Errorf("newest session: %v", err)
		}
		// An OIDC sign-in under way is claimed once, and not after it expired.
		for _, exp := range []time.Time{now.Add(time.Minute), now} {
			state := randomToken()
			h := secretHash(state)
			sealed, err := sealOIDC(state, "n0nce", "v3rifier")
			if err != nil {
				t.Fatal(err)
			}
			if err := e.auth.PutConsoleOIDC(h, ca.ConsoleOIDC{Sealed: sealed, Expires: exp}, now, maxOIDCPending); err != nil {
				t.Fatal(err)
			}
			p, err := e.auth.ClaimConsoleOIDC(h, now)
			if exp.After(now) != (err == nil) || (err == nil && p.Sealed != sealed) {
				t.Errorf("OIDC sign-in expiring %v: %+v %v", exp, p, err)
			}
			if _, err := e.auth.ClaimConsoleOIDC(h, now); !errors.Is(err, ca.ErrNotFound) {
				t.Errorf("OIDC sign-in claimed twice: %v", err)
			}
		}
		// Sign-out removes it from the store.
		if err := s.remove(id); err != nil {
			t.Fatal(err)
		}
		if _, err := e.auth.ConsoleSession(secretHash(id), now); !errors.Is(err, ca.ErrNotFound) {
			t.Errorf("after remove: %v", err)
		}
	})
}

// TestLinkClaimedOnce: two instances claiming one link at once, on either
// store, sign in exactly once.
func TestLinkClaimedOnce(t *testing.T) {
	eachStore(t, func(t *testing.T, a *env) {
		// A second instance's inventory connection: on SQLite it shares
		// the data directory, on PostgreSQL only the database.
		dir := a.dir
		if a.dsn != "" {
			dir = t.TempDir()
		}
		other := openAuthority(t, dir, a.dsn)
		for range 5 {
			tok, err := CreateLink(a.auth, "frank", control.RoleAuditor, time.Minute, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			wins := make(chan bool, 8)
			for i := range 8 {
				go func() {
					_, err := claimLink([]*ca.Authority{a.auth, other}[i%2], tok, time.Now())
					wins <- err == nil
				}()
			}
			n := 0
			for range 8 {
				if <-wins {
					n++
				}
			}
			if n != 1 {
				t.Fatalf("a link signed in %d times", n)
			}
		}
	})
}

// TestOIDCSealed: a pending OIDC sign-in's nonce and verifier are stored
// sealed under its state: they open with the state only, and a changed
// byte is refused.
func TestOIDCSealed(t *testing.T) {
	state, nonce, verifier := randomToken(), randomToken(), randomToken()
	sealed, err := sealOIDC(state, nonce, verifier)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := base64.RawURLEncoding.DecodeString(sealed)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{nonce, verifier} {
		if strings.Contains(sealed, secret) || bytes.Contains(raw, []byte(secret)) {
			t.Fatalf("sealed sign-in shows a secret in the clear: %q", sealed)
		}
	}
	if again, _ := sealOIDC(state, nonce, verifier); again == sealed {
		t.Error("two sealings of one sign-in are equal: the IV is not fresh")
	}
	n, v, err := openOIDC(state, sealed)
	if err != nil || n != nonce || v != verifier {
		t.Fatalf("open = %q, %q, %v", n, v, err)
	}
	if _, _, err := openOIDC(randomToken(), sealed); err == nil {
		t.Error("opened with another state")
	}
	raw[len(raw)-1] ^= 1
	if _, _, err := openOIDC(state, base64.RawURLEncoding.EncodeToString(raw)); err == nil {
		t.Error("opened after a changed byte")
	}
	for _, bad := range []string{"", "!!", "AAAA"} {
		if _, _, err := openOIDC(state, bad); err == nil {
			t.Errorf("opened malformed %q", bad)
		}
	}
}
