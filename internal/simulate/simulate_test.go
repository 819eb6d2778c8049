package simulate

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/extauthz"
	"github.com/agentauthz/agentauthz/internal/identity"
	"github.com/agentauthz/agentauthz/internal/policy"
	"github.com/agentauthz/agentauthz/internal/reason"
	"github.com/agentauthz/agentauthz/internal/server"
)

// The policy the history is recorded under: an operation needs its scope and
// a minimum trust level, both from data.
const testPolicy = `package agentauthz.authz

decision := {"allowed": false, "reason": "unknown_operation"} if {
	not rule
} else := {"allowed": false, "reason": "insufficient_trust_level"} if {
	input.agent.trust < rule.min_trust
} else := {"allowed": false, "reason": "scope_missing"} if {
	rule.scope
	not rule.scope in input.agent.scopes
} else := {"allowed": true}

rule := data.agentauthz.operations[input.operation]
`

// data builds data.json: routes for reads and payments, the payments rule
// with the given minimum trust and required scope.
func data(payTrust int, payScope string) string {
	scope := `"scope": "` + payScope + `"`
	return `{"agentauthz": {
  "operations": {
    "payments:read": {"min_trust": 1, "scope": "payments:read"},
    "payments:initiate": {"min_trust": ` + string(rune('0'+payTrust)) + `, ` + scope + `}
  },
  "routes": [
    {"method": "GET", "path": "/v1/payments", "operation": "payments:read"},
    {"method": "POST", "path": "/v1/payments", "operation": "payments:initiate"}
  ]
}}`
}

func writePolicy(t testing.TB, rego, dataJSON string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "authz.rego"), []byte(rego), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "data.json"), []byte(dataJSON), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

type agentIdent struct{ agent *identity.Agent }

func (a *agentIdent) Identify(*authv3.AttributeContext) (*identity.Agent, *identity.Error) {
	if a.agent == nil {
		return nil, &identity.Error{Reason: reason.NoClientCertificate}
	}
	return a.agent, nil
}

type revokedIDs map[string]bool

func (r revokedIDs) Check(_ string, _ []identity.ChainCert, id string) reason.Code {
	if r[id] {
		return reason.AgentRevoked
	}
	return ""
}

var (
	payer  = &identity.Agent{ID: "payer", SPIFFEID: "spiffe://acme.example/agent/payer", Tenant: "acme.example", TrustLevel: 3, Scopes: []string{"payments:initiate", "payments:read"}, Source: identity.SourcePeerCertificate}
	clerk  = &identity.Agent{ID: "clerk", SPIFFEID: "spiffe://acme.example/agent/clerk", Tenant: "acme.example", TrustLevel: 2, Scopes: []string{"payments:initiate", "payments:read"}, Source: identity.SourcePeerCertificate}
	reader = &identity.Agent{ID: "reader", SPIFFEID: "spiffe://acme.example/agent/reader", Tenant: "acme.example", TrustLevel: 3, Scopes: []string{"payments:read"}, Source: identity.SourceXFCC}
	rogue  = &identity.Agent{ID: "rogue", SPIFFEID: "spiffe://acme.example/agent/rogue", Tenant: "acme.example", TrustLevel: 4, Scopes: []string{"payments:initiate"}, Source: identity.SourcePeerCertificate}
)

// record runs the real decision path under the base policy (payments need
// L3 and the payments:initiate scope) into a real signed log, and returns
// the log directory.
func record(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	l, err := decisionlog.Open(decisionlog.Options{Dir: filepath.Join(dir, "log"), KeyDir: filepath.Join(dir, "keys"), Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	now := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	engine, err := policy.New(policy.Config{Dir: writePolicy(t, testPolicy, data(3, "payments:initiate")), Path: "agentauthz/authz/decision", Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	ident := &agentIdent{}
	svc, err := extauthz.New(extauthz.Options{
		Identifier: ident, Revocation: revokedIDs{"rogue": true}, Policy: server.PolicyAdapter(engine), Recorder: l,
		Logger: hclog.NewNullLogger(), Metrics: extauthz.NewMetrics(prometheus.NewRegistry()), Now: func() time.Time { return now },
	})
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		agent        *identity.Agent
		method, path string
		n            int
	}{
		{payer, "POST", "/v1/payments", 3},   // allowed
		{clerk, "POST", "/v1/payments", 2},   // insufficient_trust_level
		{reader, "POST", "/v1/payments", 4},  // scope_missing
		{reader, "GET", "/v1/payments", 2},   // allowed
		{payer, "GET", "/v1/payments", 1},    // allowed
		{rogue, "POST", "/v1/payments", 1},   // agent_revoked: before policy
		{nil, "POST", "/v1/payments", 1},     // no identity: before policy
		{payer, "DELETE", "/v1/payments", 1}, // unknown_operation
	}
	for _, s := range steps {
		for range s.n {
			ident.agent = s.agent
			now = now.Add(time.Minute)
			req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: s.method, Path: s.path, Host: "api.acme.example",
				Headers: map[string]string{":method": s.method, ":path": s.path, ":authority": "api.acme.example", "x-request-id": "r"},
			}}}}
			if _, err := svc.Check(context.Background(), req); err != nil {
				t.Fatal(err)
			}
		}
	}
	return filepath.Join(dir, "log")
}

func simulateDir(t *testing.T, logDir, policyDir string, from, to time.Time) *Report {
	t.Helper()
	var clock time.Time
	engine, err := policy.New(policy.Config{Dir: policyDir, Path: "agentauthz/authz/decision", Now: func() time.Time { return clock }, DecisionCache: 100})
	if err != nil {
		t.Fatal(err)
	}
	rp, err := NewReplayer(engine, &clock)
	if err != nil {
		t.Fatal(err)
	}
	acc := NewAccumulator(engine.Revision(), from, to, Gaps(engine.InputReads()))
	r := NewLogSource(logDir)
	defer r.Close()
	if err := Run(context.Background(), r, rp, acc, from, to); err != nil {
		t.Fatal(err)
	}
	return acc.Report()
}

func TestUnchangedPolicyReportsNothing(t *testing.T) {
	logDir := record(t)
	rep := simulateDir(t, logDir, writePolicy(t, testPolicy, data(3, "payments:initiate")), time.Time{}, time.Time{})
	if rep.Read != 15 || rep.Replayed != 13 || rep.Unchanged != 13 {
		t.Fatalf("read %d, replayed %d, unchanged %d; want 15, 13, 13", rep.Read, rep.Replayed, rep.Unchanged)
	}
	if n := Count(rep.NewlyAllowed) + Count(rep.NewlyDenied) + Count(rep.Changed); n != 0 {
		t.Fatalf("%d changes under the same policy: %+v %+v %+v", n, rep.NewlyAllowed, rep.NewlyDenied, rep.Changed)
	}
	// The two decisions the policy never saw are reported, with why.
	if Count(rep.NotReplayed) != 2 {
		t.Fatalf("not replayed %+v, want the revoked agent's and the anonymous request", rep.NotReplayed)
	}
	whys := rep.NotReplayed[0].After + "|" + rep.NotReplayed[1].After
	if !strings.Contains(whys, "agent_revoked") || !strings.Contains(whys, "identity was refused") {
		t.Fatalf("not-replayed reasons %q", whys)
	}
	if len(rep.Gaps) != 0 {
		t.Fatalf("gaps %v for a policy that reads only the agent and the operation", rep.Gaps)
	}
}

func TestLoosenedScopeRequirementIsNewlyAllowed(t *testing.T) {
	logDir := record(t)
	// Payments need only payments:read: reader (L3) may now pay.
	rep := simulateDir(t, logDir, writePolicy(t, testPolicy, data(3, "payments:read")), time.Time{}, time.Time{})
	if len(rep.NewlyAllowed) != 1 {
		t.Fatalf("newly allowed %+v, want one group", rep.NewlyAllowed)
	}
	g := rep.NewlyAllowed[0]
	if g.Agent != "reader" || g.Operation != "payments:initiate" || g.Count != 4 || g.Before != "deny 403 scope_missing" || g.After != "allow" || len(g.Examples) != 4 {
		t.Fatalf("newly allowed group %+v", g)
	}
	if len(rep.Gaining) != 1 || rep.Gaining[0].Agent != "reader" || rep.Gaining[0].Operation != "payments:initiate" {
		t.Fatalf("gaining %+v", rep.Gaining)
	}
	if Count(rep.NewlyDenied) != 0 || len(rep.Losing) != 0 {
		t.Fatalf("nothing may be newly denied: %+v %+v", rep.NewlyDenied, rep.Losing)
	}
}

func TestTightenedTrustIsNewlyDeniedPerAgent(t *testing.T) {
	logDir := record(t)
	rep := simulateDir(t, logDir, writePolicy(t, testPolicy, data(4, "payments:initiate")), time.Time{}, time.Time{})
	if Count(rep.NewlyAllowed) != 0 {
		t.Fatalf("newly allowed %+v", rep.NewlyAllowed)
	}
	if len(rep.NewlyDenied) != 1 {
		t.Fatalf("newly denied %+v, want payer's payments only", rep.NewlyDenied)
	}
	g := rep.NewlyDenied[0]
	if g.Agent != "payer" || g.Count != 3 || g.After != "deny 403 insufficient_trust_level" {
		t.Fatalf("newly denied group %+v", g)
	}
	// reader's scope_missing becomes insufficient_trust_level: still denied,
	// reported as otherwise changed.
	if len(rep.Changed) != 1 || rep.Changed[0].Agent != "reader" || rep.Changed[0].Count != 4 {
		t.Fatalf("changed %+v", rep.Changed)
	}
	if len(rep.Losing) != 1 || rep.Losing[0].Agent != "payer" || rep.Losing[0].Operation != "payments:initiate" || rep.Losing[0].Count != 3 {
		t.Fatalf("losing %+v", rep.Losing)
	}
}

func TestTimeRangeAndRecordTime(t *testing.T) {
	logDir := record(t)
	// A policy that allows payments only before 09:03 on the day: the
	// replay must see each record's own time, not the time of the run.
	timed := strings.Replace(testPolicy, `} else := {"allowed": true}`, `} else := {"allowed": false, "reason": "too_late"} if {
	time.now_ns() >= time.parse_rfc3339_ns("2026-12-01T09:03:00Z")
	input.operation == "payments:initiate"
} else := {"allowed": true}`, 1)
	rep := simulateDir(t, logDir, writePolicy(t, timed, data(3, "payments:initiate")), time.Time{}, time.Time{})
	// payer's payments were recorded at 09:01, 09:02, 09:03: the last turns.
	if len(rep.NewlyDenied) != 1 || rep.NewlyDenied[0].Count != 1 || rep.NewlyDenied[0].After != "deny 403 too_late" {
		t.Fatalf("newly denied %+v", rep.NewlyDenied)
	}
	// Only 09:04..09:06 (clerk's two and reader's first): nothing is read
	// outside the range.
	from := time.Date(2026, 12, 1, 9, 4, 0, 0, time.UTC)
	to := time.Date(2026, 12, 1, 9, 6, 0, 0, time.UTC)
	rep = simulateDir(t, logDir, writePolicy(t, testPolicy, data(3, "payments:initiate")), from, to)
	if rep.Read != 3 {
		t.Fatalf("read %d records in [09:04, 09:06], want 3", rep.Read)
	}
}

func TestPolicyReadingWhatRecordsLackIsUncertain(t *testing.T) {
	logDir := record(t)
	hdr := strings.Replace(testPolicy, `} else := {"allowed": true}`, `} else := {"allowed": false, "reason": "no_ticket"} if {
	not input.attributes.request.http.headers["x-ticket"]
} else := {"allowed": true}`, 1)
	rep := simulateDir(t, logDir, writePolicy(t, hdr, data(3, "payments:initiate")), time.Time{}, time.Time{})
	if !rep.Uncertain() || !strings.Contains(strings.Join(rep.Gaps, " "), "x-ticket") {
		t.Fatalf("gaps %v: the header the policy reads is not in records", rep.Gaps)
	}
	var md bytes.Buffer
	if err := rep.WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(md.String(), "**Uncertain:**") {
		t.Fatalf("markdown does not flag the gap:\n%s", md.String())
	}
}

func TestMalformedLinesAreCounted(t *testing.T) {
	logDir := record(t)
	segs, err := filepath.Glob(filepath.Join(logDir, "*.log"))
	if err != nil || len(segs) == 0 {
		t.Fatalf("segments %v %v", segs, err)
	}
	b, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	// Break the first line (a record's JSON); the reader reports it malformed.
	b[0] = 'x'
	if err := os.WriteFile(segs[0], b, 0o644); err != nil {
		t.Fatal(err)
	}
	rep := simulateDir(t, logDir, writePolicy(t, testPolicy, data(3, "payments:initiate")), time.Time{}, time.Time{})
	if rep.Malformed != 1 || rep.Read != 15 {
		t.Fatalf("malformed %d of %d read; want 1 of 15", rep.Malformed, rep.Read)
	}
	var js bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || back["malformed_lines"].(float64) != 1 {
		t.Fatalf("json %s: %v", js.String(), err)
	}
}
