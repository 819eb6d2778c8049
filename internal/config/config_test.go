package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDecodeRejectsUnknownKeys(t *testing.T) {
	_, err := Decode(strings.NewReader("data_dir: x\ngrpc:\n  adress: \":1\"\n"))
	if err == nil || !strings.Contains(err.Error(), "adress") {
		t.Fatalf("err = %v, want an error naming the unknown key", err)
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	c, err := Decode(strings.NewReader(`
log_level: loud
grpc:
  addr: "nope"
  tls: {cert_file: a.pem}
policy:
  path: "not a path"
  decision_cache: {max_entries: -1, time_granularity: 2h}
identity:
  sources: [xfcc, xfcc, carrier_pigeon]
trust_bundles:
  - trust_domain: "Bad Domain"
    profile: weird
decision_log:
  mode: maybe
`))
	if err != nil {
		t.Fatal(err)
	}
	c.ApplyDefaults()
	err = c.Validate()
	if err == nil {
		t.Fatal("want errors")
	}
	for _, want := range []string{
		"data_dir", "log_level", "grpc.addr", "grpc.tls", "policy.path", "listed twice", "carrier_pigeon",
		"trust_domain", "profile", "decision_log.mode", "decision_cache.max_entries", "decision_cache.time_granularity",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("errors do not mention %q:\n%v", want, err)
		}
	}
}

func TestDefaultsValidate(t *testing.T) {
	c := Default()
	c.DataDir = t.TempDir()
	c.Dev = true
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.GRPC.Addr != ":9191" || c.HTTP.Addr != ":9192" || c.Policy.Path != "agentauthz/authz/decision" {
		t.Errorf("defaults: %+v", c)
	}
	if c.DecisionLog.Dir != filepath.Join(c.DataDir, "log") || c.DecisionLog.Mode != "sync" {
		t.Errorf("decision log defaults: %+v", c.DecisionLog)
	}
	if got := c.Identity.Sources; len(got) != 2 || got[0] != "peer_certificate" || got[1] != "xfcc" {
		t.Errorf("identity sources default %v: SPIFFE-only must be off by default", got)
	}
	if dc := c.Policy.DecisionCache; dc.Disabled || dc.MaxEntries != 10000 || dc.TimeGranularity.D() != time.Second {
		t.Errorf("decision cache defaults: %+v", dc)
	}
}

func TestLoadFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(p, []byte(`
data_dir: /tmp/x
trust_bundles:
  - trust_domain: acme.example
    file: /etc/acme.pem
    revocation: {grace: 2h, crl_urls: ["http://127.0.0.1:9193/v1/crl/acme.example"]}
decision_log: {mode: async, segment_max_age: 1h}
`), 0o644)
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	tb := c.TrustBundles[0]
	if tb.Profile != "native" || tb.Revocation.Grace.D() != 2*time.Hour || c.DecisionLog.SegmentMaxAge.D() != time.Hour {
		t.Errorf("loaded %+v", c)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Error("missing file must be an error")
	}
	os.WriteFile(p, []byte("grpc:\n  check_timeout: soon\n"), 0o644)
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), "soon") {
		t.Errorf("bad duration: err = %v", err)
	}
}

// Every problem of a file is reported in one run, in the file's own terms
// (line, key path, expected form), with a suggestion for a misspelt key; a
// bad duration no longer hides the unknown keys after it.
func TestDecodeReportsEveryProblemAtOnce(t *testing.T) {
	_, err := Decode(strings.NewReader(`data_dir: /tmp/x
grpc:
  check_timeout: 5 seconds
log_levl: debug
policy:
  decision_cache: {max_entries: lots}
trust_bundles:
  - trust_domain: a.example
    fille: a.pem
    revocation: {grace: 1h, poll_intervall: 1s, crl_files: one.crl}
dev: maybe
`))
	if err == nil {
		t.Fatal("no error")
	}
	want := []string{
		`line 3: grpc.check_timeout: "5 seconds" is not a duration (want one like 250ms, 30s or 1h)`,
		`line 4: unknown key "log_levl" (did you mean "log_level"?)`,
		`line 6: policy.decision_cache.max_entries: "lots" is not a whole number in range`,
		`line 9: unknown key "fille" in trust_bundles[0] (did you mean "file"?)`,
		`line 10: unknown key "poll_intervall" in trust_bundles[0].revocation (did you mean "poll_interval"?)`,
		`line 10: trust_bundles[0].revocation.crl_files: want a list, not "one.crl"`,
		`line 11: dev: "maybe" is not true or false`,
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q:\n%v", w, err)
		}
	}
	if strings.Contains(err.Error(), "config.Config") || strings.Contains(err.Error(), "!!str") {
		t.Errorf("error speaks Go, not the file's terms:\n%v", err)
	}
	if !strings.HasPrefix(err.Error(), "7 problem(s):") {
		t.Errorf("error = %v, want 7 problems", err)
	}
}

// FuzzDecode: any input is either a Config or an error, never a panic, and a
// decoded Config validates without panicking.
func FuzzDecode(f *testing.F) {
	f.Add("data_dir: x\ngrpc:\n  addr: \":1\"\n")
	f.Add("trust_bundles:\n  - trust_domain: a\n    revocation: {crl_files: [a], grace: 1h}\n")
	f.Add("grpc: {check_timeout: 5 seconds}\nlog_levl: x\n")
	f.Add("a: &x [*x]\n")
	f.Add("policy: [1, 2]\n")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Decode(strings.NewReader(s))
		if err != nil {
			return
		}
		c.ApplyDefaults()
		_ = c.Validate()
	})
}
