package simulate

import (
	"context"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/policy"
)

// An MCP call is replayed from its recorded messages: each tool resolves
// to its operation again, so a policy change shows per tool, not as every
// POST /mcp turning into invalid_jsonrpc.
func TestMCPRecordsReplayPerTool(t *testing.T) {
	clock := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	engine, err := policy.New(policy.Config{Dir: "../../policies", Now: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	rp, err := NewReplayer(engine, &clock)
	if err != nil {
		t.Fatal(err)
	}
	rec := func(trust string, scopes []string, msgs ...decisionlog.MCPMessage) *decisionlog.Record {
		return &decisionlog.Record{DecisionID: "d", Time: clock,
			Agent: decisionlog.Agent{ID: "bot", SPIFFEID: "spiffe://acme.example/agent/bot", Tenant: "acme.example", TrustLevel: trust,
				Scopes: scopes, Source: "peer_certificate"},
			Request:  decisionlog.Request{Method: "POST", Host: "api.acme.example", Path: "/mcp", Operation: msgs[0].Operation, MCP: msgs},
			Decision: decisionlog.Decision{Allowed: true, HTTPStatus: 200, Reasons: []string{"allowed"}}}
	}
	pay := decisionlog.MCPMessage{Kind: "request", Method: "tools/call", Tool: "initiate_payment", Operation: "payments:initiate"}
	read := decisionlog.MCPMessage{Kind: "request", Method: "tools/call", Tool: "get_payment", Operation: "payments:read"}
	note := decisionlog.MCPMessage{Kind: "notification", Method: "notifications/initialized", Operation: "mcp:session"}
	for _, tc := range []struct {
		name    string
		rec     *decisionlog.Record
		allowed bool
		op      string
		reason  string
	}{
		{"payer pays", rec("L3", []string{"payments:initiate"}, pay), true, "payments:initiate", ""},
		{"reader refused the payment tool", rec("L1", []string{"payments:read"}, pay), false, "payments:initiate", "insufficient_trust_level"},
		{"batch with a notification", rec("L1", []string{"payments:read"}, read, note), true, "payments:read", ""},
		{"batch: the denied message decides", rec("L1", []string{"payments:read"}, read, pay), false, "payments:initiate", "insufficient_trust_level"},
	} {
		o, err := rp.Replay(context.Background(), tc.rec)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if o.Allowed != tc.allowed || o.Operation != tc.op || o.Reason != tc.reason {
			t.Errorf("%s: %+v", tc.name, o)
		}
	}
	r := rec("L3", []string{"payments:initiate"}, pay)
	r.Truncated = true
	if _, err := rp.Replay(context.Background(), r); err == nil {
		t.Error("a truncated MCP record was replayed")
	}
}
