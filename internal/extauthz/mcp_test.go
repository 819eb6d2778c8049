package extauthz

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc/codes"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/mcp"
	"github.com/agentauthz/agentauthz/internal/reason"
)

func mcpCall(t *testing.T, body string) *mcp.Call {
	t.Helper()
	c, err := mcp.Parse([]byte(body), nil, mcp.DefaultMaxBodyBytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

type rpcAnswer struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Error   struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
		Data    struct {
			Reason     string `json:"reason"`
			DecisionID string `json:"decision_id"`
		} `json:"data"`
	} `json:"error"`
}

// A denied MCP call is answered with HTTP 403 and a JSON-RPC error that
// carries the request's id, the reason and the decision id.
func TestMCPDenialIsAJSONRPCError(t *testing.T) {
	call := mcpCall(t, `{"jsonrpc":"2.0","id":"req-9","method":"tools/call","params":{"name":"initiate_payment","arguments":{"amount":5}}}`)
	pol := fakePolicy{v: Verdict{Reason: "insufficient_trust_level", Operation: "payments:initiate",
		MCP: &MCPVerdict{Call: call, Operations: []string{"payments:initiate"}}}}
	log := &fakeLog{}
	s, _ := newService(t, fakeIdent{agent: agent}, fakeRevocation{}, pol, log)
	resp, err := s.Check(context.Background(), request(map[string]string{}))
	if err != nil {
		t.Fatal(err)
	}
	d := resp.GetDeniedResponse()
	if d == nil || d.GetStatus().GetCode() != 403 || resp.GetStatus().GetCode() != int32(codes.PermissionDenied) {
		t.Fatalf("answer %v", resp)
	}
	var a rpcAnswer
	if err := json.Unmarshal([]byte(d.GetBody()), &a); err != nil {
		t.Fatalf("body %q: %v", d.GetBody(), err)
	}
	id := resp.GetDynamicMetadata().GetFields()["decision_id"].GetStringValue()
	if a.JSONRPC != "2.0" || string(a.ID) != `"req-9"` || a.Error.Code != mcp.CodeForbidden ||
		a.Error.Data.Reason != "insufficient_trust_level" || a.Error.Data.DecisionID != id || id == "" ||
		a.Error.Message != `agentauthz denied tool "initiate_payment": insufficient_trust_level` {
		t.Fatalf("answer %+v", a)
	}
	md := resp.GetDynamicMetadata().GetFields()
	if md["mcp_method"].GetStringValue() != "tools/call" || md["mcp_tool"].GetStringValue() != "initiate_payment" {
		t.Fatalf("metadata %v", md)
	}
	if ct := headerValue(d.GetHeaders(), "content-type"); ct != "application/json" {
		t.Fatalf("content-type %q", ct)
	}
	// The record names the tool and the digest of its arguments, never
	// the arguments.
	rec := log.recs[0]
	want := decisionlog.MCPMessage{Kind: "request", Method: "tools/call", Tool: "initiate_payment", Operation: "payments:initiate"}
	sum := sha256.Sum256([]byte(`{"amount":5}`))
	want.ArgumentsSHA256 = hex.EncodeToString(sum[:])
	if len(rec.Request.MCP) != 1 || rec.Request.MCP[0] != want || rec.Request.Operation != "payments:initiate" {
		t.Fatalf("record %+v", rec.Request)
	}
	b, _ := json.Marshal(rec)
	if strings.Contains(string(b), "amount") {
		t.Fatalf("arguments recorded: %s", b)
	}
}

// A body that is not JSON-RPC is invalid_jsonrpc: 400 with a JSON-RPC
// "Invalid Request" error and id null.
func TestMCPInvalidBody(t *testing.T) {
	pol := fakePolicy{v: Verdict{MCP: &MCPVerdict{}}, err: fmt.Errorf("%w: %w", ErrInvalidJSONRPC, mcp.ErrInvalid)}
	s, _ := newService(t, fakeIdent{agent: agent}, fakeRevocation{}, pol, &fakeLog{})
	resp, _ := s.Check(context.Background(), request(map[string]string{}))
	d := resp.GetDeniedResponse()
	if d.GetStatus().GetCode() != 400 {
		t.Fatalf("status %v", d.GetStatus())
	}
	var a rpcAnswer
	if err := json.Unmarshal([]byte(d.GetBody()), &a); err != nil {
		t.Fatal(err)
	}
	if string(a.ID) != "null" || a.Error.Code != mcp.CodeInvalidRequest || a.Error.Data.Reason != string(reason.InvalidJSONRPC) {
		t.Fatalf("answer %+v", a)
	}
	// Another request-parse failure keeps its own reason.
	pol = fakePolicy{err: fmt.Errorf("%w: x", ErrRequestParse)}
	s, _ = newService(t, fakeIdent{agent: agent}, fakeRevocation{}, pol, &fakeLog{})
	resp, _ = s.Check(context.Background(), request(map[string]string{}))
	if r := resp.GetDynamicMetadata().GetFields()["reason"].GetStringValue(); r != string(reason.RequestParseError) {
		t.Fatalf("reason %q", r)
	}
	if errors.Is(ErrRequestParse, ErrInvalidJSONRPC) {
		t.Fatal("sentinels alias")
	}
}

// An allowed tools/list carries the tools the agent may call; a client
// cannot send its own list.
func TestMCPToolsHeader(t *testing.T) {
	call := mcpCall(t, `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`)
	for _, tc := range []struct {
		tools []string
		want  string
	}{
		{[]string{"get_payment", "list_payments"}, `["get_payment","list_payments"]`},
		{[]string{}, `[]`},
		{nil, ""},
	} {
		pol := fakePolicy{v: Verdict{Allowed: true, Operation: "mcp:discover", MCP: &MCPVerdict{Call: call, Tools: tc.tools}}}
		s, _ := newService(t, fakeIdent{agent: agent}, fakeRevocation{}, pol, &fakeLog{})
		resp, _ := s.Check(context.Background(), request(map[string]string{HeaderMCPTools: `["initiate_payment"]`}))
		ok := resp.GetOkResponse()
		got := headerValue(ok.GetHeaders(), HeaderMCPTools)
		if got != tc.want {
			t.Fatalf("tools %v: header %q, want %q", tc.tools, got, tc.want)
		}
		removed := false
		for _, h := range ok.GetHeadersToRemove() {
			removed = removed || h == HeaderMCPTools
		}
		if tc.want == "" && !removed {
			t.Fatalf("client-sent %s not removed", HeaderMCPTools)
		}
	}
}

func headerValue(hs []*corev3.HeaderValueOption, key string) string {
	for _, h := range hs {
		if h.GetHeader().GetKey() == key {
			return h.GetHeader().GetValue()
		}
	}
	return ""
}
