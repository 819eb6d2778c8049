package policy

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/agentauthz/agentauthz/internal/identity"
)

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func newTestEngine(t *testing.T, cfg Config) *Engine {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = hclog.New(&hclog.LoggerOptions{Output: testWriter{t}, Level: hclog.Debug})
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	if cfg.EvalTimeout == 0 {
		// Generous: a loaded CI machine under -race must not turn into a
		// timeout failure. TestEvalTimeout sets its own.
		cfg.EvalTimeout = 30 * time.Second
	}
	e, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return e
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

func agentWith(trust int, scopes ...string) *identity.Agent {
	a := *testAgent()
	a.TrustLevel, a.Scopes = trust, scopes
	return &a
}

func TestShippedPolicyThroughEngine(t *testing.T) {
	e := newTestEngine(t, Config{Dir: shippedPolicies})
	if !e.Ready() || len(e.Revision()) != len("sha256:")+12 {
		t.Fatalf("Ready=%v Revision=%q", e.Ready(), e.Revision())
	}
	for _, tc := range []struct {
		name         string
		method, path string
		agent        *identity.Agent
		allowed      bool
		reason, op   string
	}{
		{"payer pays", "POST", "/v1/payments", agentWith(3, "payments:initiate"), true, "allowed", "payments:initiate"},
		{"L2 payer refused", "POST", "/v1/payments", agentWith(2, "payments:initiate"), false, "insufficient_trust_level", "payments:initiate"},
		{"reader reads", "GET", "/v1/payments/p-1?expand=1", agentWith(1, "payments:read"), true, "allowed", "payments:read"},
		{"reader cannot write", "POST", "/v1/payments", agentWith(1, "payments:read"), false, "insufficient_trust_level", "payments:initiate"},
		{"repay", "POST", "/v1/loans/l-1/repayments", agentWith(3, "loans:repay"), true, "allowed", "loans:repay"},
		{"screen", "POST", "/v1/sanctions/screenings", agentWith(1, "sanctions:screen"), true, "allowed", "sanctions:screen"},
		{"screener cannot pay", "POST", "/v1/payments", agentWith(1, "sanctions:screen"), false, "insufficient_trust_level", "payments:initiate"},
		{"onboard", "POST", "/v1/merchants", agentWith(2, "merchants:onboard"), true, "allowed", "merchants:onboard"},
		{"unknown route", "DELETE", "/v1/payments/p-1", agentWith(4, "payments:read"), false, "unknown_operation", ""},
		{"traversal", "GET", "/v1/payments/../admin", agentWith(4, "payments:read"), false, "unknown_operation", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := e.Eval(context.Background(), sampleRequest(tc.method, tc.path, "", ""), tc.agent)
			if err != nil {
				t.Fatal(err)
			}
			if r.Allowed != tc.allowed || r.Reason != tc.reason || r.Operation != tc.op || r.Revision != e.Revision() {
				t.Fatalf("got %+v, want allowed=%v reason=%s op=%s", r, tc.allowed, tc.reason, tc.op)
			}
			if tc.allowed && (len(r.Headers) != 1 || r.Headers[0] != (Header{"x-agent-operation", tc.op})) {
				t.Fatalf("headers %v", r.Headers)
			}
		})
	}
	if op := e.Operation("POST", "/v1/loans/x/repayments"); op != "loans:repay" {
		t.Errorf("Operation = %q", op)
	}
}

func TestRestrictionUsesInjectedClock(t *testing.T) {
	dir := t.TempDir()
	pol, err := os.ReadFile(filepath.Join(shippedPolicies, "authz.rego"))
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(shippedPolicies, "data.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d map[string]any
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatal(err)
	}
	d["agentauthz"].(map[string]any)["restrictions"] = map[string]any{
		"spiffe://dev.agentauthz.local/agent/payments-bot": map[string]any{"quarantined": true, "until": "2026-02-01T00:00:00Z"},
	}
	data, _ = json.Marshal(d)
	writeFiles(t, dir, map[string]string{"authz.rego": string(pol), "data.json": string(data)})
	now := time.Date(2026, 1, 15, 0, 0, 0, 0, time.UTC)
	e := newTestEngine(t, Config{Dir: dir, Now: func() time.Time { return now }})
	req := sampleRequest("POST", "/v1/payments", "", "")
	r, err := e.Eval(context.Background(), req, agentWith(3, "payments:initiate"))
	if err != nil || r.Allowed || r.Reason != "agent_quarantined" {
		t.Fatalf("during quarantine: %+v, %v", r, err)
	}
	now = time.Date(2026, 2, 2, 0, 0, 0, 0, time.UTC)
	r, err = e.Eval(context.Background(), req, agentWith(3, "payments:initiate"))
	if err != nil || !r.Allowed {
		t.Fatalf("after quarantine: %+v, %v", r, err)
	}
}

const envoyBoolPolicy = `package envoy.authz

default allow := false

allow if {
	input.attributes.request.http.method == "GET"
	input.parsed_path[0] == "v1"
	input.parsed_path[1] == "payments"
}
`

const envoyObjectPolicy = `package envoy.authz

default allow := {
	"allowed": false,
	"http_status": 401,
	"body": "Unauthorized Request",
	"headers": {"x-ext-auth-allow": "no"},
}

allow := {
	"allowed": true,
	"headers": {"x-ext-auth-allow": "yes", "x-multi": ["a", "b"]},
	"request_headers_to_remove": ["x-secret"],
	"response_headers_to_add": [{"x-resp": "1"}],
	"query_parameters_to_set": {"q": ["1", "2"], "r": "3"},
	"query_parameters_to_remove": ["debug"],
	"dynamic_metadata": {"checked": true, "n": 2, "list": [1, {"x": 0.5}]},
} if {
	input.attributes.request.http.method == "GET"
	input.parsed_path == ["v1", "payments", "p-1"]
	input.parsed_query.expand == ["true"]
}
`

func TestEnvoyPluginBooleanPolicy(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"policy.rego": envoyBoolPolicy})
	e := newTestEngine(t, Config{Dir: dir, Path: "envoy/authz/allow"})
	r, err := e.Eval(context.Background(), sampleRequest("GET", "/v1/payments/p-1", "", ""), nil)
	if err != nil || !r.Allowed {
		t.Fatalf("GET: %+v, %v", r, err)
	}
	r, err = e.Eval(context.Background(), sampleRequest("POST", "/v1/payments", "", ""), testAgent())
	if err != nil || r.Allowed {
		t.Fatalf("POST: %+v, %v", r, err)
	}
}

func TestEnvoyPluginObjectPolicy(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"policy.rego": envoyObjectPolicy})
	e := newTestEngine(t, Config{Dir: dir, Path: "/envoy/authz/allow"})
	r, err := e.Eval(context.Background(), sampleRequest("GET", "/v1/payments/p-1?expand=true", "", ""), nil)
	if err != nil || !r.Allowed {
		t.Fatalf("allowed: %+v, %v", r, err)
	}
	wantHeaders := []Header{{"x-ext-auth-allow", "yes"}, {"x-multi", "a"}, {"x-multi", "b"}}
	if !equalHeaders(r.Headers, wantHeaders) || !equalHeaders(r.ResponseHeadersToAdd, []Header{{"x-resp", "1"}}) ||
		!equalHeaders(r.QueryParametersToSet, []Header{{"q", "1"}, {"q", "2"}, {"r", "3"}}) ||
		len(r.RequestHeadersToRemove) != 1 || len(r.QueryParametersToRemove) != 1 ||
		r.DynamicMetadata["checked"] != true || r.DynamicMetadata["n"] != 2.0 {
		t.Fatalf("allowed result %+v", r)
	}
	if _, err := structpb.NewStruct(r.DynamicMetadata); err != nil {
		t.Fatalf("dynamic metadata not convertible to a Struct: %v", err)
	}
	r, err = e.Eval(context.Background(), sampleRequest("GET", "/v1/payments/p-2", "", ""), nil)
	if err != nil || r.Allowed || r.HTTPStatus != 401 || !r.HasBody || r.Body != "Unauthorized Request" ||
		!equalHeaders(r.Headers, []Header{{"x-ext-auth-allow", "no"}}) {
		t.Fatalf("denied result %+v, %v", r, err)
	}
}

func equalHeaders(a, b []Header) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestInvalidDecisions(t *testing.T) {
	for name, rule := range map[string]string{
		"undefined":           `decision if { input.parsed_path[0] == "never" }`,
		"number":              `decision := 3 if input.parsed_path[0] == "bad"`,
		"missing allowed":     `decision := {"reason": "x"} if input.parsed_path[0] == "bad"`,
		"allowed not bool":    `decision := {"allowed": "yes"} if input.parsed_path[0] == "bad"`,
		"reason not string":   `decision := {"allowed": false, "reason": 1} if input.parsed_path[0] == "bad"`,
		"bad status":          `decision := {"allowed": false, "http_status": 999} if input.parsed_path[0] == "bad"`,
		"status not number":   `decision := {"allowed": false, "http_status": "403"} if input.parsed_path[0] == "bad"`,
		"header value number": `decision := {"allowed": true, "headers": {"a": 1}} if input.parsed_path[0] == "bad"`,
		"header array of num": `decision := {"allowed": true, "headers": {"a": [1]}} if input.parsed_path[0] == "bad"`,
		"headers string":      `decision := {"allowed": true, "headers": "a"} if input.parsed_path[0] == "bad"`,
		"remove not array":    `decision := {"allowed": true, "request_headers_to_remove": "a"} if input.parsed_path[0] == "bad"`,
		"body not string":     `decision := {"allowed": false, "body": {}} if input.parsed_path[0] == "bad"`,
		"metadata not object": `decision := {"allowed": true, "dynamic_metadata": []} if input.parsed_path[0] == "bad"`,
		"query set not obj":   `decision := {"allowed": true, "query_parameters_to_set": ["a"]} if input.parsed_path[0] == "bad"`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			// The bad decision only for /bad: the smoke inputs see a valid one,
			// so the policy loads and the error shows at request time.
			writeFiles(t, dir, map[string]string{"p.rego": "package agentauthz.authz\n\n" +
				"decision := {\"allowed\": false} if input.parsed_path[0] != \"bad\"\n\n" + rule + "\n"})
			e := newTestEngine(t, Config{Dir: dir})
			r, err := e.Eval(context.Background(), sampleRequest("GET", "/bad", "", ""), testAgent())
			if err == nil {
				t.Fatalf("Eval = %+v, want error", r)
			}
			if name == "undefined" && !errors.Is(err, ErrUndefined) {
				t.Fatalf("err = %v, want ErrUndefined", err)
			}
			if name != "undefined" && !errors.Is(err, ErrInvalidResult) {
				t.Fatalf("err = %v, want ErrInvalidResult", err)
			}
			if r == nil || r.Revision != e.Revision() {
				t.Fatalf("partial result %+v should carry the revision", r)
			}
		})
	}
}

func TestEvalTimeout(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"p.rego": `package agentauthz.authz

default decision := false

decision if {
	input.parsed_path[0] == "slow"
	some i in numbers.range(1, 100000)
	some j in numbers.range(1, 100000)
	i * j == -1
}
`})
	e := newTestEngine(t, Config{Dir: dir, EvalTimeout: 20 * time.Millisecond})
	_, err := e.Eval(context.Background(), sampleRequest("GET", "/slow", "", ""), nil)
	if !errors.Is(err, ErrEvalTimeout) {
		t.Fatalf("err = %v, want ErrEvalTimeout", err)
	}
}

func TestBadPolicyChangeRefused(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"policy.rego": envoyBoolPolicy})
	reg := prometheus.NewRegistry()
	e := newTestEngine(t, Config{Dir: dir, Path: "envoy/authz/allow", Registerer: reg})
	good := e.Revision()
	check := func() {
		t.Helper()
		if e.Revision() != good {
			t.Fatalf("revision changed to %q", e.Revision())
		}
		r, err := e.Eval(context.Background(), sampleRequest("GET", "/v1/payments/p-1", "", ""), nil)
		if err != nil || !r.Allowed {
			t.Fatalf("previous policy not serving: %+v, %v", r, err)
		}
	}
	for i, bad := range []string{
		"package envoy.authz\n\nallow if {\n",                                                               // syntax error
		"package envoy.authz\n\nallow if count(1) > 0\n",                                                    // type error
		"package envoy.authz\n\nallow := true if count(input.parsed_path) >= 0\n\nallow := false if true\n", // eval-time conflict
		"package envoy.authz\n\nallow := 1 / 0\n",                                                           // fine: error at eval is undefined, not strict
	} {
		writeFiles(t, dir, map[string]string{"policy.rego": bad})
		err := e.Reload()
		if i == 3 {
			// Division by zero is a builtin error, which non-strict OPA treats as
			// undefined: the policy loads (and denies at request time).
			if err != nil {
				t.Fatalf("Reload(%d) = %v", i, err)
			}
			break
		}
		if !errors.Is(err, ErrPolicyRejected) {
			t.Fatalf("Reload(%d) = %v, want ErrPolicyRejected", i, err)
		}
		if i == 2 && !strings.Contains(err.Error(), "eval_conflict_error") {
			t.Fatalf("conflict refused for another reason: %v", err)
		}
		check()
		if got := testutil.ToFloat64(e.metrics.reloads.WithLabelValues("failure")); got != float64(i+1) {
			t.Fatalf("failure count %v, want %d", got, i+1)
		}
		if got := testutil.ToFloat64(e.metrics.revision.WithLabelValues(good)); got != 1 {
			t.Fatalf("revision info for %s = %v", good, got)
		}
	}
	n, err := testutil.GatherAndCount(reg, "agentauthz_policy_reload_total", "agentauthz_policy_revision_info")
	if err != nil || n != 3 {
		t.Fatalf("gathered %d series, %v", n, err)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"p.rego": "package x\n\nallow if {\n"})
	for name, cfg := range map[string]Config{
		"nothing":    {},
		"both":       {Dir: dir, Bundle: "x.tar.gz"},
		"bad policy": {Dir: dir},
		"no dir":     {Dir: filepath.Join(dir, "missing")},
		"empty dir":  {Dir: t.TempDir()},
		"bad path":   {Dir: dir, Path: "a//b"},
		"bad routes": {Dir: writeDir(t, map[string]string{"p.rego": "package agentauthz.authz\n\ndecision := true\n", "data.json": `{"agentauthz": {"routes": [{"method": "get", "path": "/", "operation": "x:y"}]}}`})},
		"decision of the wrong type on a smoke input": {Dir: writeDir(t, map[string]string{"p.rego": "package agentauthz.authz\n\ndecision := 3\n"})},
		"bad agents": {Dir: writeDir(t, map[string]string{"p.rego": "package agentauthz.authz\n\ndecision := true\n", "data.json": `{"agentauthz": {"agents": {"spiffe://a/b": {"trust_level": "L9"}}}}`})},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
}

func writeDir(t *testing.T, files map[string]string) string {
	dir := t.TempDir()
	writeFiles(t, dir, files)
	return dir
}

func TestLookupAgent(t *testing.T) {
	e := newTestEngine(t, Config{Dir: shippedPolicies})
	rec, ok := e.LookupAgent("spiffe://dev.agentauthz.local/ns/payments/sa/ledger-reader")
	if !ok || rec.TrustLevel != 1 || len(rec.Scopes) != 1 || rec.Scopes[0] != "payments:read" || rec.Owner != "team-payments" {
		t.Fatalf("LookupAgent = %+v, %v", rec, ok)
	}
	if _, ok := e.LookupAgent("spiffe://dev.agentauthz.local/agent/unknown"); ok {
		t.Fatal("unknown SPIFFE ID found")
	}
}

func TestWatchReloadsOnChange(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"policy.rego": envoyBoolPolicy})
	testWatchReloads(t, dir, dir)
}

// TestWatchFollowsSymlinkedRoot: --policies may be a symbolic link to the
// directory (as deployment tooling often makes it).
func TestWatchFollowsSymlinkedRoot(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"policy.rego": envoyBoolPolicy})
	link := filepath.Join(t.TempDir(), "policies")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	testWatchReloads(t, link, dir)
}

func testWatchReloads(t *testing.T, configured, dir string) {
	e := newTestEngine(t, Config{Dir: configured, Path: "envoy/authz/allow"})
	first := e.Revision()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	changed := envoyBoolPolicy + "\nallow if input.attributes.request.http.method == \"POST\"\n"
	deadline := time.Now().Add(15 * time.Second)
	// Rewrite until the watcher (started concurrently) has seen a change.
	for e.Revision() == first {
		if time.Now().After(deadline) {
			t.Fatal("policy change not picked up")
		}
		writeFiles(t, dir, map[string]string{"policy.rego": changed})
		// Longer than the debounce, so that the rewrite does not postpone
		// the reload it should trigger.
		time.Sleep(3 * reloadDebounce)
	}
	r, err := e.Eval(context.Background(), sampleRequest("POST", "/x", "", ""), nil)
	if err != nil || !r.Allowed {
		t.Fatalf("new policy not serving: %+v, %v", r, err)
	}
}

func BenchmarkEval(b *testing.B) {
	e, err := New(Config{Dir: shippedPolicies})
	if err != nil {
		b.Fatal(err)
	}
	req, agent := sampleRequest("POST", "/v1/payments", "", ""), testAgent()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		r, err := e.Eval(ctx, req, agent)
		if err != nil || !r.Allowed {
			b.Fatal(r, err)
		}
	}
}
