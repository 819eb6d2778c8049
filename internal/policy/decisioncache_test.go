package policy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/agentauthz/agentauthz/internal/identity"
	"github.com/agentauthz/agentauthz/internal/testenv"
)

func compiledPlan(t *testing.T, rego string) cachePlan {
	t.Helper()
	c := ast.NewCompiler()
	c.Compile(map[string]*ast.Module{"p.rego": ast.MustParseModule(rego)})
	if c.Failed() {
		t.Fatalf("compile: %v", c.Errors)
	}
	return planCache(c.Modules)
}

func TestPlanCache(t *testing.T) {
	shipped, err := os.ReadFile(filepath.Join(shippedPolicies, "authz.rego"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, rego string
		want       string // describe(), or the start of the reason
	}{
		{"shipped policy", string(shipped),
			"keyed on input.agent.scopes, input.agent.spiffe_id, input.agent.tenant, input.agent.trust, input.operation"},
		{"envoy boolean policy", envoyBoolPolicy,
			`keyed on input.attributes.request.http.method, input.parsed_path[0], input.parsed_path[1]`},
		{"dynamic index keys on the constant prefix", `package p
allow if input.attributes.request.http.headers[h] == "x"`,
			"keyed on input.attributes.request.http.headers"},
		{"object.get with a constant path", `package p
t := object.get(input, ["agent", "trust"], 0)
s := object.get(input, "operation", "")`,
			"keyed on input.agent.trust, input.operation"},
		{"a path under another is covered by it", `package p
a if input.agent
b if input.agent.trust > 1`,
			"keyed on input.agent"},
		{"clock is allowed", `package p
allow if time.now_ns() > 0`,
			"keyed on "},
		{"whole input", `package p
x := input`, "off: reads the whole input"},
		{"iteration over input", `package p
allow if { some k, _ in input; k == "a" }`, "off: reads the whole input"},
		{"object.get with a variable path", `package p
f(k) := object.get(input, k, 0)`, "off: reads the whole input"},
		{"input passed to a builtin", `package p
s := json.marshal(input)`, "off: reads the whole input"},
		{"input passed to a function", `package p
f(x) := x.agent
allow if f(input)`, "off: reads the whole input"},
		{"dynamic first element", `package p
allow if input[k] == 1`, "off: reads the whole input"},
		{"with replaces input", `package p
a if input.x
b if a with input as {"x": true}`, "off: replaces input with `with`"},
		{"http.send", `package p
r := http.send({"method": "get", "url": "http://x"})`, "off: calls the nondeterministic builtin http.send"},
		{"rand.intn", `package p
r := rand.intn("x", 10)`, "off: calls the nondeterministic builtin rand.intn"},
		{"nested call term", `package p
r := count([rand.intn("x", 10)])`, "off: calls the nondeterministic builtin rand.intn"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := compiledPlan(t, tc.rego).describe()
			if !strings.HasPrefix(got, tc.want) {
				t.Fatalf("describe() = %q, want prefix %q", got, tc.want)
			}
		})
	}
}

func cachedEngine(t *testing.T, dir string, now func() time.Time) *Engine {
	t.Helper()
	if now == nil {
		// A frozen clock: on a loaded machine a test can cross a
		// time_granularity boundary, and an entry of the previous interval
		// is rightly not used.
		at := time.Now()
		now = func() time.Time { return at }
	}
	return newTestEngine(t, Config{Dir: dir, DecisionCache: 100, Now: now})
}

func cacheCount(t *testing.T, e *Engine, result string) float64 {
	t.Helper()
	return testutil.ToFloat64(e.metrics.cache.WithLabelValues(result))
}

// The cache answers exactly what evaluation answers, for the shipped policy
// over agents and routes, and does answer from memory.
func TestDecisionCacheMatchesEvaluation(t *testing.T) {
	cached := cachedEngine(t, shippedPolicies, nil)
	plain := newTestEngine(t, Config{Dir: shippedPolicies})
	if got := cached.DecisionCache(); !strings.HasPrefix(got, "keyed on input.agent.scopes, input.agent.spiffe_id") {
		t.Fatalf("DecisionCache() = %q", got)
	}
	if got := plain.DecisionCache(); got != "off: disabled in the configuration" {
		t.Fatalf("DecisionCache() without cache = %q", got)
	}
	agents := []*identity.Agent{
		agentWith(3, "payments:initiate"), agentWith(2, "payments:initiate"),
		agentWith(1, "payments:read"), agentWith(4), nil,
	}
	routes := [][2]string{{"POST", "/v1/payments"}, {"GET", "/v1/payments/p-1"}, {"DELETE", "/v1/payments/p-1"}, {"POST", "/v1/merchants"}}
	ctx := context.Background()
	for round := range 3 {
		for _, a := range agents {
			for _, rt := range routes {
				req := sampleRequest(rt[0], rt[1], "", "")
				want, werr := plain.Eval(ctx, req, a)
				got, gerr := cached.Eval(ctx, req, a)
				if (werr == nil) != (gerr == nil) || werr == nil &&
					(got.Allowed != want.Allowed || got.Reason != want.Reason || got.Operation != want.Operation ||
						got.Revision != want.Revision || !equalHeaders(got.Headers, want.Headers)) {
					t.Fatalf("round %d, agent %v, %v: cached %+v, %v; evaluated %+v, %v", round, a, rt, got, gerr, want, werr)
				}
			}
		}
	}
	n := float64(len(agents) * len(routes))
	if hits, misses := cacheCount(t, cached, "hit"), cacheCount(t, cached, "miss"); misses != n || hits != 2*n {
		t.Fatalf("hits %v, misses %v; want %v and %v", hits, misses, 2*n, n)
	}
}

// A request whose input cannot be built is refused even when an entry for
// its agent and operation exists: the cache never skips input validation.
// Every kind of bad input of TestValidateInput is tried, on the operation
// of a cached allow; valid but unusual inputs are still answered from it.
func TestDecisionCacheStillRefusesBadInput(t *testing.T) {
	e := cachedEngine(t, shippedPolicies, nil)
	ctx, agent := context.Background(), agentWith(3, "payments:initiate")
	const op = "payments:initiate"
	good := sampleRequest("POST", "/v1/payments", "application/json", `{"amount": 1}`)
	if r, err := e.Eval(ctx, good, agent); err != nil || !r.Allowed {
		t.Fatalf("good request: %+v, %v", r, err)
	}
	if r, err := e.Eval(ctx, good, agent); err != nil || !r.Allowed || cacheCount(t, e, "hit") != 1 {
		t.Fatalf("good request not answered from the cache: %+v, %v", r, err)
	}
	bad := map[string]*authv3.CheckRequest{
		"malformed JSON body": sampleRequest("POST", "/v1/payments", "application/json", `{"amount":`),
		"oversized body":      sampleRequest("POST", "/v1/payments", "application/json", `"`+strings.Repeat("x", MaxBodyBytes)+`"`),
		"bad path escape":     sampleRequest("POST", "/v1/payments%zz", "", ""), // routes nowhere
		// bad paths that still route to the operation
		"bad escape in the fragment": sampleRequest("POST", "/v1/payments#%zz", "", ""), // "#" routes nowhere
		"bad escape in the query":    sampleRequest("POST", "/v1/payments?x=%zz", "", ""),
		"semicolon in the query":     sampleRequest("POST", "/v1/payments?a=1;b=2", "", ""),
	}
	for _, tc := range validateCases() {
		if tc.ok {
			continue
		}
		c := tc.c
		c.method, c.path = "POST", "/v1/payments"
		req := c.request()
		if _, err := buildInput(req, nil, ""); err == nil {
			continue // the path was the bad part: covered above
		}
		bad[tc.name] = req
	}
	if len(bad) < 35 {
		t.Fatalf("only %d bad inputs", len(bad))
	}
	for name, req := range bad {
		h := req.Attributes.Request.Http
		wantOp := op
		if name == "bad path escape" || name == "bad escape in the fragment" {
			wantOp = ""
		}
		if got := e.Operation(h.Method, h.Path); got != wantOp {
			t.Fatalf("%s: operation %q, want %q", name, got, wantOp)
		}
		r, err := e.Eval(ctx, req, agent)
		if !errors.Is(err, ErrInput) {
			t.Errorf("%s: got %+v, %v; want ErrInput", name, r, err)
			continue
		}
		if r == nil || r.Allowed || r.Operation != wantOp || r.Revision != e.Revision() {
			t.Errorf("%s: result with the error %+v", name, r)
		}
	}
	if hits := cacheCount(t, e, "hit"); hits != 1 {
		t.Fatalf("hits = %v after the bad inputs, want 1", hits)
	}
	truncated := sampleRequest("POST", "/v1/payments", "application/json", `{"amount":`)
	truncated.Attributes.Request.Http.Headers["content-length"] = "100"
	for name, req := range map[string]*authv3.CheckRequest{
		"truncated malformed body":   truncated,
		"malformed text body":        sampleRequest("POST", "/v1/payments", "text/plain", `{"amount":`),
		"CR LF in the query":         sampleRequest("POST", "/v1/payments?x=1\r\nx-injected: 1", "", ""),
		"NUL in the query":           sampleRequest("POST", "/v1/payments?x=\x00", "", ""),
		"huge number, then replaced": sampleRequest("POST", "/v1/payments", "application/json", `{"n": 1e999999, "n": 1}`),
	} {
		if r, err := e.Eval(ctx, req, agent); err != nil || !r.Allowed {
			t.Errorf("%s: %+v, %v; want the cached allow", name, r, err)
		}
	}
	if hits := cacheCount(t, e, "hit"); hits != 6 {
		t.Fatalf("hits = %v, want 6", hits)
	}
}

// A policy that reads a header is keyed on it: a different value is never
// answered from another request's entry.
func TestDecisionCacheKeysOnInputValues(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"p.rego": `package agentauthz.authz
default decision := false
decision if {
	input.attributes.request.http.headers["x-mode"] == "ok"
	input.parsed_path[1] == "payments"
}`})
	e := cachedEngine(t, dir, nil)
	ctx := context.Background()
	withMode := func(path, mode string) bool {
		t.Helper()
		req := sampleRequest("GET", path, "", "")
		req.Attributes.Request.Http.Headers["x-mode"] = mode
		r, err := e.Eval(ctx, req, testAgent())
		if err != nil {
			t.Fatal(err)
		}
		return r.Allowed
	}
	for range 2 {
		if !withMode("/v1/payments", "ok") || withMode("/v1/payments", "no") ||
			withMode("/v1/loans", "ok") || withMode("/v1/payments", `"ok"`) {
			t.Fatal("a cached decision answered a request with different input values")
		}
	}
	if hits := cacheCount(t, e, "hit"); hits != 4 {
		t.Fatalf("hits = %v, want 4", hits)
	}
	// Key values over the bound are evaluated every time, never stored.
	long := strings.Repeat("x", maxCacheKeyBytes)
	for range 2 {
		if withMode("/v1/payments", long) {
			t.Fatal("a long header value was allowed")
		}
	}
	if hits, misses := cacheCount(t, e, "hit"), cacheCount(t, e, "miss"); hits != 4 || misses != 4 {
		t.Fatalf("after long keys: hits %v, misses %v; want 4 and 4", hits, misses)
	}
}

// Time-dependent policies see the clock pinned to the start of the current
// interval, and entries do not outlive it.
func TestDecisionCacheTimeBuckets(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"p.rego": `package agentauthz.authz
until := time.parse_rfc3339_ns("2026-02-01T00:00:00Z")
decision := {"allowed": false, "reason": "agent_quarantined"} if time.now_ns() < until
else := {"allowed": true}`})
	until := time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)
	now := until.Add(-1500 * time.Millisecond)
	e := cachedEngine(t, dir, func() time.Time { return now })
	allowed := func() bool {
		t.Helper()
		r, err := e.Eval(context.Background(), sampleRequest("GET", "/", "", ""), testAgent())
		if err != nil {
			t.Fatal(err)
		}
		return r.Allowed
	}
	if allowed() {
		t.Fatal("allowed 1.5 s before the end of the quarantine")
	}
	now = until.Add(-1100 * time.Millisecond) // same 1 s interval: served from the cache
	if allowed() || cacheCount(t, e, "hit") != 1 {
		t.Fatal("expected a cached denial within the interval")
	}
	now = until.Add(300 * time.Millisecond) // next interval: the clock reads `until`
	if !allowed() {
		t.Fatal("still denied after the quarantine ended: a stale entry was served")
	}
}

// A reload starts from an empty cache.
func TestDecisionCacheReload(t *testing.T) {
	dir := t.TempDir()
	policy := `package agentauthz.authz
decision := input.agent.trust >= %d`
	writeFiles(t, dir, map[string]string{"p.rego": strings.Replace(policy, "%d", "1", 1)})
	e := cachedEngine(t, dir, nil)
	ctx, req, agent := context.Background(), sampleRequest("GET", "/", "", ""), agentWith(2)
	for range 2 {
		if r, err := e.Eval(ctx, req, agent); err != nil || !r.Allowed {
			t.Fatalf("before reload: %+v, %v", r, err)
		}
	}
	writeFiles(t, dir, map[string]string{"p.rego": strings.Replace(policy, "%d", "3", 1)})
	if err := e.Reload(); err != nil {
		t.Fatal(err)
	}
	if r, err := e.Eval(ctx, req, agent); err != nil || r.Allowed {
		t.Fatalf("after reload: %+v, %v", r, err)
	}
}

// The decision cache is keyed on what the policy reads, not on the
// *identity.Agent: an equal agent behind another pointer (the SPIFFE
// profile makes one per request) is a hit, and an agent that differs in
// any attribute the policy reads never gets another agent's decision.
func TestDecisionCacheKeyedOnAgentAttributes(t *testing.T) {
	dir := t.TempDir()
	// Reads the whole of input.agent, and answers with it: a hit for
	// the wrong agent would show in the header.
	writeFiles(t, dir, map[string]string{"p.rego": `package agentauthz.authz
default decision := {"allowed": false, "reason": "no_agent"}
decision := {"allowed": input.agent.trust >= 2, "headers": {"x-agent": json.marshal(input.agent)}}`})
	e := cachedEngine(t, dir, nil)
	plain := newTestEngine(t, Config{Dir: dir})
	ctx, req := context.Background(), sampleRequest("GET", "/", "", "")
	check := func(a *identity.Agent, wantHit bool) {
		t.Helper()
		hits := cacheCount(t, e, "hit")
		got, err := e.Eval(ctx, req, a)
		if err != nil {
			t.Fatal(err)
		}
		want, err := plain.Eval(ctx, req, a)
		if err != nil {
			t.Fatal(err)
		}
		if got.Allowed != want.Allowed || !equalHeaders(got.Headers, want.Headers) {
			t.Fatalf("cached %+v, evaluated %+v", got, want)
		}
		if hit := cacheCount(t, e, "hit") > hits; hit != wantHit {
			t.Fatalf("hit = %v, want %v for %+v", hit, wantHit, a)
		}
	}
	check(testAgent(), false)
	check(testAgent(), true) // another pointer, same agent
	check(nil, false)
	check(nil, true)
	for name, change := range map[string]func(a *identity.Agent){
		"id":          func(a *identity.Agent) { a.ID = "other-bot" },
		"spiffe_id":   func(a *identity.Agent) { a.SPIFFEID += "x" },
		"tenant":      func(a *identity.Agent) { a.Tenant = "other.test" },
		"trust":       func(a *identity.Agent) { a.TrustLevel = 1 },
		"scopes":      func(a *identity.Agent) { a.Scopes = a.Scopes[:1] },
		"scope text":  func(a *identity.Agent) { a.Scopes = []string{"payments:initiatepayments:read"} },
		"owner":       func(a *identity.Agent) { a.Owner = "" },
		"serial":      func(a *identity.Agent) { a.Serial = "1a2c" },
		"cert_sha256": func(a *identity.Agent) { a.CertSHA256 = "ab13" },
		"issuer":      func(a *identity.Agent) { a.Issuer = "CN=other CA" },
		"not_before":  func(a *identity.Agent) { a.NotBefore = a.NotBefore.Add(time.Second) },
		"not_after":   func(a *identity.Agent) { a.NotAfter = time.Time{} },
		"profile":     func(a *identity.Agent) { a.Profile = identity.ProfileSPIFFE },
		"source":      func(a *identity.Agent) { a.Source = identity.SourceXFCC },
	} {
		t.Run(name, func(t *testing.T) {
			a := testAgent()
			change(a)
			check(a, false)
			b := testAgent()
			change(b)
			check(b, true)
		})
	}
	// What input.agent does not carry is not in the key: an equal input
	// is an equal decision.
	for name, change := range map[string]func(a *identity.Agent){
		"issuer id":            func(a *identity.Agent) { a.IssuerID = "issuer-2" },
		"chain":                func(a *identity.Agent) { a.Chain = []identity.ChainCert{{Serial: "9"}} },
		"sub-second not_after": func(a *identity.Agent) { a.NotAfter = a.NotAfter.Add(time.Millisecond) },
	} {
		a := testAgent()
		change(a)
		check(a, true)
		_ = name
	}
}

// With the shipped policy, which reads four attributes of the agent, the
// others are not in the key: a renewed certificate (new serial, digest and
// validity) keeps its agent's entries.
func TestDecisionCacheKeysOnlyWhatThePolicyReads(t *testing.T) {
	e := cachedEngine(t, shippedPolicies, nil)
	ctx, req := context.Background(), sampleRequest("POST", "/v1/payments", "", "")
	for i, a := range []*identity.Agent{agentWith(3, "payments:initiate"), agentWith(3, "payments:initiate")} {
		a.Serial, a.CertSHA256 = fmt.Sprint(i), fmt.Sprint(i)
		a.NotAfter = a.NotAfter.Add(time.Duration(i) * time.Hour)
		if r, err := e.Eval(ctx, req, a); err != nil || !r.Allowed {
			t.Fatalf("%+v, %v", r, err)
		}
	}
	if hits := cacheCount(t, e, "hit"); hits != 1 {
		t.Fatalf("hits = %v, want 1", hits)
	}
	other := agentWith(3, "payments:initiate")
	other.SPIFFEID = "spiffe://dev.agentauthz.local/agent/other-bot"
	if _, err := e.Eval(ctx, req, other); err != nil {
		t.Fatal(err)
	}
	if hits := cacheCount(t, e, "hit"); hits != 1 {
		t.Fatalf("another SPIFFE ID was answered from the cache")
	}
}

// A decision whose evaluation did not read the clock holds in later
// intervals; one that did holds for its interval only.
func TestDecisionCacheTimelessDecisions(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"p.rego": `package agentauthz.authz
import rego.v1
decision := {"allowed": false, "reason": "agent_quarantined"} if {
	input.agent.trust < 2
	time.now_ns() < time.parse_rfc3339_ns("2026-02-01T00:00:00Z")
} else := {"allowed": input.agent.trust >= 1}`})
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	e := cachedEngine(t, dir, func() time.Time { return now })
	ctx, req := context.Background(), sampleRequest("GET", "/", "", "")
	for _, step := range []struct {
		trust   int
		advance time.Duration
		hit     bool
	}{
		{3, 0, false}, {3, 0, true},
		{3, 5 * time.Second, true}, // no clock read: still valid
		{1, 0, false}, {1, 0, true},
		{1, 5 * time.Second, false}, // read the clock: a new interval evaluates again
		{1, 0, true},
	} {
		now = now.Add(step.advance)
		hits := cacheCount(t, e, "hit")
		r, err := e.Eval(ctx, req, agentWith(step.trust))
		if err != nil {
			t.Fatal(err)
		}
		if r.Allowed != (step.trust >= 2) {
			t.Fatalf("trust %d: %+v", step.trust, r)
		}
		if hit := cacheCount(t, e, "hit") > hits; hit != step.hit {
			t.Fatalf("trust %d after %v: hit %v, want %v", step.trust, step.advance, hit, step.hit)
		}
	}
}

// agentFields names every key of input.agent, so that none is left out of
// a key.
func TestAgentFieldsCoverAgentValue(t *testing.T) {
	obj := agentValue(testAgent())
	if obj.Len() != len(agentFields) {
		t.Fatalf("input.agent has %d keys, agentFields %d", obj.Len(), len(agentFields))
	}
	var all agentField
	for _, k := range obj.Keys() {
		f, ok := agentFields[string(k.Value.(ast.String))]
		if !ok {
			t.Fatalf("input.agent.%v is not in agentFields: add it and encode it in keyBuf.agent", k)
		}
		all |= f
	}
	if all != allAgentFields {
		t.Fatalf("fields %b, want %b", all, allAgentFields)
	}
}

// BenchmarkEvalCachedJSON is BenchmarkEvalCached with a small JSON body
// (validated on every request, parsed only on a miss).
func BenchmarkEvalCachedJSON(b *testing.B) {
	e, err := New(Config{Dir: shippedPolicies, DecisionCache: 1000})
	if err != nil {
		b.Fatal(err)
	}
	req := sampleRequest("POST", "/v1/payments", "application/json", `{"amount": 125.5, "currency": "EUR", "reference": "inv-2026-0042"}`)
	agent, ctx := testAgent(), context.Background()
	b.ReportAllocs()
	for b.Loop() {
		r, err := e.Eval(ctx, req, agent)
		if err != nil || !r.Allowed {
			b.Fatal(r, err)
		}
	}
}

func BenchmarkEvalCached(b *testing.B) {
	e, err := New(Config{Dir: shippedPolicies, DecisionCache: 1000})
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

// BenchmarkHitPath is the part of a decision-cache hit that validate.go
// exists for: a hit must still refuse a request whose input cannot be
// built. "validate" is what a hit runs (validateInput); "build" is what it
// would run without validate.go (building the input it then ignores);
// "validate-copy" is validateInput with the body copied, as it would be
// without validate.go's unsafe views of the body.
func BenchmarkHitPath(b *testing.B) {
	e, err := New(Config{Dir: shippedPolicies, DecisionCache: 1000})
	if err != nil {
		b.Fatal(err)
	}
	agent := testAgent()
	for _, tc := range []struct{ name, ct, body string }{
		{"no-body", "", ""},
		{"json", "application/json", `{"amount": 125.5, "currency": "EUR", "reference": "inv-2026-0042"}`},
	} {
		req := sampleRequest("POST", "/v1/payments", tc.ct, tc.body)
		b.Run(tc.name+"/validate", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := validateInput(req); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(tc.name+"/build", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := buildInput(req, e.agents.term(agent), "payments:initiate"); err != nil {
					b.Fatal(err)
				}
			}
		})
		if tc.body == "" {
			continue
		}
		raw := sampleRequest("POST", "/v1/payments", tc.ct, "")
		b.Run(tc.name+"/validate-copy", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				raw.Attributes.Request.Http.RawBody = []byte(tc.body)
				if err := validateInput(raw); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// A hit allocates nothing: the key is encoded on the stack and hashed.
func TestDecisionCacheHitAllocatesNothing(t *testing.T) {
	testenv.SkipAllocsUnderRace(t)
	e := cachedEngine(t, shippedPolicies, nil)
	ctx, req := context.Background(), sampleRequest("POST", "/v1/payments", "", "")
	if r, err := e.Eval(ctx, req, testAgent()); err != nil || !r.Allowed {
		t.Fatalf("%+v, %v", r, err)
	}
	agent := testAgent() // an equal agent behind another pointer
	if n := testing.AllocsPerRun(100, func() {
		if _, err := e.Eval(ctx, req, agent); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("a hit allocates %v times", n)
	}
	if hits := cacheCount(t, e, "hit"); hits < 100 {
		t.Fatalf("hits = %v", hits)
	}
}
