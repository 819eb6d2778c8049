package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const stream = `{"config":{"scanner_name":"govulncheck"}}
{"finding":{"osv":"GO-1","fixed_version":"v1.2.3","trace":[{"module":"example.com/m","version":"v1.2.0","package":"example.com/m/p","function":"F"}]}}
{"finding":{"osv":"GO-2","fixed_version":"v1.26.9","trace":[{"module":"stdlib","version":"v1.26.8","package":"net/http","function":"Get"}]}}
{"finding":{"osv":"GO-3","trace":[{"module":"example.com/n","version":"v0.1.0","package":"example.com/n"}]}}
`

func accepted(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "accepted.txt")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestGate(t *testing.T) {
	var out strings.Builder
	// GO-1 is called and not accepted: fail, naming it. GO-3 is only
	// imported: not a failure.
	err := run(strings.NewReader(stream), &out, accepted(t, "# comment\nGO-2 stdlib, fixed in go1.26.9\n"))
	if err == nil || !strings.Contains(err.Error(), "GO-1") || strings.Contains(err.Error(), "GO-3") {
		t.Fatalf("err = %v, want a failure naming GO-1 only\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "accepted GO-2") || !strings.Contains(out.String(), "VULNERABLE GO-1") {
		t.Errorf("output:\n%s", out.String())
	}
	out.Reset()
	if err := run(strings.NewReader(stream), &out, accepted(t, "GO-1 why\nGO-2 why\nGO-9 gone\n")); err != nil {
		t.Fatalf("all accepted: %v", err)
	}
	if !strings.Contains(out.String(), "GO-9 is accepted but no longer found") {
		t.Errorf("stale entry not reported:\n%s", out.String())
	}
	if err := run(strings.NewReader(stream), &out, accepted(t, "GO-1\n")); err == nil || !strings.Contains(err.Error(), "no reason") {
		t.Errorf("entry without a reason: err = %v", err)
	}
}
