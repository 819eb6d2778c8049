package cli

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/testca"
)

// resolveServe runs serve's flag and file handling with args and returns the
// configuration it would start with, or the error and hint it prints.
func resolveServe(t *testing.T, args ...string) (config.Config, string, bool) {
	t.Helper()
	var got config.Config
	ran := false
	cmd := newServeCmdWith(func(_ context.Context, _ io.Writer, cfg config.Config) error {
		got, ran = cfg, true
		return nil
	})
	root := newRoot()
	for _, c := range root.Commands() {
		if c.Name() == "serve" {
			root.RemoveCommand(c)
		}
	}
	root.AddCommand(cmd)
	var stderr bytes.Buffer
	root.SetArgs(append([]string{"serve"}, args...))
	root.SetOut(io.Discard)
	root.SetErr(&stderr)
	err := root.ExecuteContext(context.Background())
	if err != nil {
		var out bytes.Buffer
		reportError(&out, err)
		return got, out.String(), false
	}
	if !ran {
		t.Fatal("serve returned without running")
	}
	return got, stderr.String(), true
}

func TestServeRevocationFlags(t *testing.T) {
	dir := t.TempDir()
	cfg, msg, ok := resolveServe(t, "--data-dir", dir,
		"--trust-bundle", "acme.example=acme-ca.pem", "--trust-bundle", "globex.example=globex-ca.pem",
		"--crl", "acme.example=acme.crl", "--crl", "acme.example=https://ca.acme.example/acme.crl",
		"--revocation-watch", "globex.example=http://127.0.0.1:9193/v1/watch")
	if !ok {
		t.Fatalf("serve refused: %s", msg)
	}
	want := map[string]config.Revocation{
		"acme.example":   {CRLFiles: []string{"acme.crl"}, CRLURLs: []string{"https://ca.acme.example/acme.crl"}},
		"globex.example": {WatchURL: "http://127.0.0.1:9193/v1/watch"},
	}
	if len(cfg.TrustBundles) != 2 {
		t.Fatalf("trust bundles: %+v", cfg.TrustBundles)
	}
	for _, tb := range cfg.TrustBundles {
		w := want[tb.TrustDomain]
		got := tb.Revocation
		got.PollInterval, got.Grace = 0, 0 // defaults, not the flags' business
		if !reflect.DeepEqual(got, w) {
			t.Errorf("%s revocation = %+v, want %+v", tb.TrustDomain, got, w)
		}
	}
}

// --no-revocation is the explicit opt-out a tenant without a source needs
// (#15.1).
func TestServeNoRevocationFlag(t *testing.T) {
	cfg, msg, ok := resolveServe(t, "--data-dir", t.TempDir(), "--trust-bundle", "acme.example=acme-ca.pem",
		"--no-revocation", "acme.example")
	if !ok {
		t.Fatalf("serve refused: %s", msg)
	}
	if !cfg.TrustBundles[0].Revocation.Disabled {
		t.Errorf("revocation = %+v, want disabled", cfg.TrustBundles[0].Revocation)
	}
}

// The flags add to the tenants of a config file.
func TestServeRevocationFlagsOverConfigFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "serve.yaml")
	if err := os.WriteFile(file, []byte("data_dir: "+dir+"\ntrust_bundles:\n  - trust_domain: acme.example\n    file: acme-ca.pem\n    revocation:\n      crl_files: [a.crl]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, msg, ok := resolveServe(t, "--config", file, "--crl", "acme.example=b.crl")
	if !ok {
		t.Fatalf("serve refused: %s", msg)
	}
	if got := cfg.TrustBundles[0].Revocation.CRLFiles; !reflect.DeepEqual(got, []string{"a.crl", "b.crl"}) {
		t.Errorf("crl files = %v, want [a.crl b.crl]", got)
	}
}

func TestServeRevocationFlagErrors(t *testing.T) {
	dir := t.TempDir()
	base := []string{"--data-dir", dir, "--trust-bundle", "acme.example=acme-ca.pem"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--crl", "acme.crl"}, `error: --crl "acme.crl" is not TRUST_DOMAIN=FILE or TRUST_DOMAIN=URL` + "\n" + `agentauthz: hint: e.g. --crl acme.example=acme.crl`},
		{[]string{"--crl", "globex.example=g.crl"}, `no tenant "globex.example"` + "\n" + `agentauthz: hint: give its CA first: --trust-bundle globex.example=CA_PEM_FILE`},
		{[]string{"--revocation-watch", "acme.example="}, `is not TRUST_DOMAIN=URL`},
		{[]string{"--revocation-watch", "acme.example=ftp://x/v1/watch"}, `is not an http(s) URL`},
		{[]string{"--revocation-watch", "acme.example=http://a/v1/watch", "--revocation-watch", "acme.example=http://b/v1/watch"}, `one push channel per tenant`},
		{[]string{"--no-revocation", "globex.example"}, `--no-revocation globex.example: no tenant "globex.example"`},
		{[]string{"--no-revocation", "acme.example", "--crl", "acme.example=a.crl"}, `revocation.disabled: true, but sources are listed`},
	} {
		_, msg, ok := resolveServe(t, append(append([]string{}, base...), tc.args...)...)
		if ok || !strings.Contains(msg, tc.want) {
			t.Errorf("serve %v: ok=%v, output %q, want it to contain %q", tc.args, ok, msg, tc.want)
		}
	}
}

// Dev mode serves a dev CA's agents, so it listens on loopback unless told
// otherwise; production keeps every interface, and flags win over both.
func TestServeListenDefaults(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args       []string
		grpc, http string
	}{
		{[]string{"--dev"}, "127.0.0.1:9191", "127.0.0.1:9192"},
		{[]string{"--trust-bundle", "acme.example=acme-ca.pem"}, ":9191", ":9192"},
		{[]string{"--dev", "--grpc-addr", ":7000", "--http-addr", "0.0.0.0:7001"}, ":7000", "0.0.0.0:7001"},
	} {
		cfg, msg, ok := resolveServe(t, append([]string{"--data-dir", dir}, tc.args...)...)
		if !ok {
			t.Fatalf("serve %v refused: %s", tc.args, msg)
		}
		if cfg.GRPC.Addr != tc.grpc || cfg.HTTP.Addr != tc.http {
			t.Errorf("serve %v listens on %s and %s, want %s and %s", tc.args, cfg.GRPC.Addr, cfg.HTTP.Addr, tc.grpc, tc.http)
		}
	}
	file := filepath.Join(dir, "dev.yaml")
	if err := os.WriteFile(file, []byte("dev: true\ndata_dir: "+dir+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, msg, ok := resolveServe(t, "--config", file)
	if !ok || cfg.GRPC.Addr != "127.0.0.1:9191" {
		t.Errorf("dev: true in a file: listens on %q (%s), want 127.0.0.1:9191", cfg.GRPC.Addr, msg)
	}
}

// serve --dev with no policy named serves the built-in policies; naming a
// directory or a bundle (by flag or file) replaces them, and production
// serve keeps its policies directory default.
func TestServePolicyDefaults(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "dev.yaml")
	if err := os.WriteFile(file, []byte("dev: true\ndata_dir: "+dir+"\npolicy:\n  dir: mine\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args    []string
		builtin bool
		dir     string
		bundle  string
	}{
		{[]string{"--dev"}, true, "", ""},
		{[]string{"--dev", "--policies", "policies"}, false, "policies", ""},
		{[]string{"--dev", "--bundle", "b.tar.gz"}, false, "", "b.tar.gz"},
		{[]string{"--trust-bundle", "acme.example=acme-ca.pem"}, false, config.DefaultPoliciesDir, ""},
		{[]string{"--config", file}, false, "mine", ""},
		{[]string{"--config", file, "--bundle", "b.tar.gz"}, false, "", "b.tar.gz"},
	} {
		cfg, msg, ok := resolveServe(t, append([]string{"--data-dir", dir}, tc.args...)...)
		if !ok {
			t.Fatalf("serve %v refused: %s", tc.args, msg)
		}
		if p := cfg.Policy; p.Builtin != tc.builtin || p.Dir != tc.dir || p.Bundle != tc.bundle {
			t.Errorf("serve %v: policy builtin=%v dir=%q bundle=%q, want %v %q %q", tc.args, p.Builtin, p.Dir, p.Bundle, tc.builtin, tc.dir, tc.bundle)
		}
	}
}

// A tenant without a revocation source does not start, and the hint names
// the three ways out (#15.1).
func TestServeTenantWithoutRevocationSource(t *testing.T) {
	bundle := testca.New(t).WriteBundle()
	var errOut bytes.Buffer
	code := Run(context.Background(), []string{"serve", "--data-dir", t.TempDir(), "--trust-bundle", "example.test=" + bundle,
		"--policies", filepath.Join("..", "..", "policies"), "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--log-level", "error"}, nil, &bytes.Buffer{}, &errOut)
	if code != ExitError || !strings.Contains(errOut.String(), `tenant "example.test" has no revocation source`) ||
		!strings.Contains(errOut.String(), "agentauthz: hint: give it a source: --crl example.test=CRL_FILE_OR_URL or --revocation-watch example.test=URL; or, to accept its revoked certificates, --no-revocation example.test") {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut.String())
	}
}

// A missing --config file says so, without the hint about the keys.
func TestServeMissingConfigFile(t *testing.T) {
	_, msg, ok := resolveServe(t, "--config", filepath.Join(t.TempDir(), "nope.yaml"))
	if ok || !strings.HasSuffix(msg, "nope.yaml: no such file\n") || strings.Contains(msg, "hint") {
		t.Errorf("serve --config nope.yaml: %q", msg)
	}
}
