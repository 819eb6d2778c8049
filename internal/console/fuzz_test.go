package console

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// FuzzParseTTL: a lifetime from a form is positive and bounded, or an
// error; never a panic.
func FuzzParseTTL(f *testing.F) {
	for _, s := range []string{"", "24h", "30d", "0d", "-1h", "3651d", "1e9h", "9223372036854775807ns", "d", " 7d "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := parseTTL(s)
		if err == nil && (d < 0 || (strings.TrimSpace(s) != "" && d == 0)) {
			t.Fatalf("%q: %v", s, d)
		}
		if err == nil && strings.HasSuffix(strings.TrimSpace(s), "d") && d > 3650*24*time.Hour {
			t.Fatalf("%q: %v days", s, d/(24*time.Hour))
		}
	})
}

// FuzzOIDCConfig: whatever the configuration file holds, loading it never
// panics, and what loads has an https issuer, a client id, the callback
// path and only console roles.
func FuzzOIDCConfig(f *testing.F) {
	dir := f.TempDir()
	sec := filepath.Join(dir, "secret")
	if err := os.WriteFile(sec, []byte("x"), 0o600); err != nil {
		f.Fatal(err)
	}
	good := "issuer: https://idp.example.com\nclient_id: c\nclient_secret_file: " + sec +
		"\nredirect_url: https://cp.example.com:9193/ui/oidc/callback\nroles: [{value: a, role: admin}]\n"
	for _, s := range []string{good, "", "{}", "roles: [{value: a, role: replica}]", good + "x: 1\n", "issuer: [1, 2]\n", strings.Repeat("a: ", 100)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, yml string) {
		p := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(p, []byte(yml), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := LoadOIDCConfig(p)
		if err != nil {
			return
		}
		if !strings.HasPrefix(cfg.Issuer, "https://") || cfg.ClientID == "" || !strings.HasSuffix(cfg.RedirectURL, "/ui/oidc/callback") || len(cfg.Roles) == 0 {
			t.Fatalf("loaded %+v", cfg)
		}
		for _, r := range cfg.Roles {
			if r.Role != "admin" && r.Role != "auditor" && r.Role != "responder" {
				t.Fatalf("role %q", r.Role)
			}
		}
	})
}

// FuzzTailPosition: a live-tail position's entries decode only from the
// one canonical form, bounded, never a panic.
func FuzzTailPosition(f *testing.F) {
	for _, s := range []string{"", "~aaaaaaaaaaaa.0", "~aaaaaaaaaaaa.1~bbbbbbbbbbbb.20", "~aaaaaaaaaaaa.01", "~bbbbbbbbbbbb.1~aaaaaaaaaaaa.1",
		"~aaaaaaaaaaaa.9223372036854775807", "~aaaaaaaaaaaa.9223372036854775808", "~aaaaaaaaaaa.1", "~aaaaaaaaaaaa.", "~", "x", "~aaaaaaaaaaaa.1~"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := decodePos(s)
		if err != nil {
			return
		}
		if got := encodePos(p); got != s {
			t.Fatalf("%q decodes to %v, which encodes as %q", s, p, got)
		}
	})
}
