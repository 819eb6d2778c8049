package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentauthz/agentauthz/internal/testenv"
)

// TestAuditReport builds the evidence pack from a CA and a sample log, checks
// its signature with report-verify and with openssl, sees an edit break it,
// and runs one of the report's reproduce-with commands to get its figure.
func TestAuditReport(t *testing.T) {
	dir := t.TempDir()
	run := func(args ...string) (string, string, int) {
		var out, errb bytes.Buffer
		code := Run(context.Background(), args, strings.NewReader(""), &out, &errb)
		return out.String(), errb.String(), code
	}
	for _, args := range [][]string{
		{"ca", "init", "--trust-domain", "acme.example", "--data-dir", dir},
		{"audit", "sample", "--count", "12", "--data-dir", dir},
	} {
		if _, stderr, code := run(args...); code != 0 {
			t.Fatalf("%v: exit %d %s", args, code, stderr)
		}
	}
	rep := filepath.Join(dir, "report.json")
	cfg := filepath.Join(dir, "serve.yaml")
	if err := os.WriteFile(cfg, []byte("decision_log: {name: replica-a, mode: sync}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, stderr, code := run("audit", "report", "--data-dir", dir, "--format", "json", "--out", rep, "--sample", "3", "--config", cfg)
	if code != 0 || !strings.Contains(out, "wrote "+rep+" (14 controls") {
		t.Fatalf("report: exit %d %s %s", code, out, stderr)
	}
	var r struct {
		Controls []struct {
			ID, Status string
			Evidence   []struct{ Label, Value, Command string }
		}
		Sample []json.RawMessage
		Config []struct{ File, SHA256, Log string }
	}
	b, err := os.ReadFile(rep)
	if err != nil || json.Unmarshal(b, &r) != nil || len(r.Controls) != 14 || len(r.Sample) != 3 {
		t.Fatalf("report JSON: %v, %d controls, %d samples", err, len(r.Controls), len(r.Sample))
	}
	if len(r.Config) != 1 || r.Config[0].File != cfg || len(r.Config[0].SHA256) != 64 || r.Config[0].Log != "replica-a" {
		t.Fatalf("configuration in the report: %+v", r.Config)
	}
	if out, _, code := run("audit", "report-verify", rep); code != 0 || !strings.HasPrefix(out, "ok:") {
		t.Fatalf("report-verify: exit %d %s", code, out)
	}
	openssl := testenv.LookPath(t, "openssl", "openssl")
	if out, err := exec.Command(openssl, "pkeyutl", "-verify", "-pubin", "-inkey", rep+".pub.pem", "-rawin", "-in", rep, "-sigfile", rep+".sig").CombinedOutput(); err != nil {
		t.Fatalf("openssl does not verify the report: %v %s", err, out)
	}
	// The first figure, reproduced with its own command: the test binary
	// runs as agentauthz when called by that name (TestMain).
	testenv.LookPath(t, "jq", "jq")
	binDir := t.TempDir()
	if err := os.Symlink(os.Args[0], filepath.Join(binDir, "agentauthz")); err != nil {
		t.Fatal(err)
	}
	f := r.Controls[0].Evidence[0]
	sh := exec.Command("sh", "-c", f.Command)
	sh.Env = append(os.Environ(), "PATH="+binDir+":"+os.Getenv("PATH"))
	got, err := sh.Output()
	if err != nil {
		t.Fatalf("%s: %v", f.Command, err)
	}
	if strings.TrimSpace(string(got)) != f.Value || f.Value == "0" {
		t.Fatalf("%q reproduces %q, the report says %q", f.Command, strings.TrimSpace(string(got)), f.Value)
	}
	// An edited report fails.
	if err := os.WriteFile(rep, append(b, ' '), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, _, code := run("audit", "report-verify", rep); code != 1 || !strings.HasPrefix(out, "FAILED") {
		t.Fatalf("edited report: exit %d %s", code, out)
	}
	// Bad input.
	if _, stderr, code := run("audit", "report", "--data-dir", dir); code != 2 || !strings.Contains(stderr, "--out is required") {
		t.Fatalf("no --out: %d %s", code, stderr)
	}
	if _, stderr, code := run("audit", "report", "--data-dir", dir, "--out", rep, "--config", filepath.Join(dir, "nope.yaml")); code != 2 || !strings.Contains(stderr, "--config") {
		t.Fatalf("missing config: %d %s", code, stderr)
	}
	if _, stderr, code := run("audit", "report", "--data-dir", dir, "--out", rep, "--format", "pdf"); code != 2 || !strings.Contains(stderr, "want html or json") {
		t.Fatalf("bad format: %d %s", code, stderr)
	}
}
