package control

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func leafOf(t *testing.T, is *Issued) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(is.CertPEM)
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRequire(t *testing.T) {
	dir := t.TempDir()
	op, err := OpenOperatorCA(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	// A second open loads the same CA (no new one is made).
	op2, err := OpenOperatorCA(dir, true)
	if err != nil || !op2.Cert.Equal(op.Cert) {
		t.Fatalf("reopen: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "operator", "ca.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v %v", fi, err)
	}
	other, err := OpenOperatorCA(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(o *OperatorCA, name string, r Role) *x509.Certificate {
		is, err := o.Issue(name, r, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return leafOf(t, is)
	}
	var refused []string
	now := time.Now()
	a := NewAuthenticator(op, func() time.Time { return now }, func(r string) { refused = append(refused, r) })
	h := a.Require(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o, _ := OperatorFrom(r.Context())
		w.Write([]byte(o.String()))
	}), RoleResponder)
	for _, tc := range []struct {
		name   string
		certs  []*x509.Certificate
		noTLS  bool
		status int
		reason string
	}{
		{"responder", []*x509.Certificate{issue(op, "alice", RoleResponder)}, false, 200, ""},
		{"admin does everything", []*x509.Certificate{issue(op, "root", RoleAdmin)}, false, 200, ""},
		{"auditor", []*x509.Certificate{issue(op, "audrey", RoleAuditor)}, false, 403, AuthWrongRole},
		{"replica", []*x509.Certificate{issue(op, "replica-1", RoleReplica)}, false, 403, AuthWrongRole},
		{"other operator CA", []*x509.Certificate{issue(other, "mallory", RoleAdmin)}, false, 401, AuthUnknownCA},
		{"no certificate", nil, false, 401, AuthNoCertificate},
		{"plain HTTP", nil, true, 401, AuthNoTLS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			refused = nil
			r := httptest.NewRequest("POST", "/", nil)
			if !tc.noTLS {
				r.TLS = &tls.ConnectionState{PeerCertificates: tc.certs}
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.status, w.Body)
			}
			if tc.reason != "" && (len(refused) != 1 || refused[0] != tc.reason || !strings.Contains(w.Body.String(), tc.reason)) {
				t.Errorf("refused %v, body %s, want %s", refused, w.Body, tc.reason)
			}
		})
	}
	// Expiry is checked at request time, against the injected clock.
	alice := issue(op, "alice", RoleResponder)
	now = now.Add(2 * time.Hour)
	r := httptest.NewRequest("POST", "/", nil)
	r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{alice}}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != 401 || !strings.Contains(w.Body.String(), AuthExpired) {
		t.Errorf("expired: %d %s", w.Code, w.Body)
	}
}

func TestIssueValidation(t *testing.T) {
	op, err := OpenOperatorCA(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		role Role
		ttl  time.Duration
	}{
		{"Alice", RoleAdmin, time.Hour},
		{"alice", "root", time.Hour},
		{"alice", RoleAdmin, 0},
		{"alice", RoleAdmin, MaxOperatorTTL + time.Hour},
		{"a/b", RoleAdmin, time.Hour},
	} {
		if _, err := op.Issue(tc.name, tc.role, tc.ttl); err == nil {
			t.Errorf("Issue(%q, %q, %v) accepted", tc.name, tc.role, tc.ttl)
		}
	}
	if _, err := OpenOperatorCA(t.TempDir(), false); err == nil {
		t.Error("a missing operator CA was opened without create")
	}
}
