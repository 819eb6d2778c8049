package policy

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/agentauthz/agentauthz/internal/identity"
	"github.com/agentauthz/agentauthz/internal/mcp"
	"github.com/agentauthz/agentauthz/internal/testenv"
)

// mcpRequest is a POST to /mcp as Envoy sends it with with_request_body.
func mcpRequest(body string, headers ...string) *authv3.CheckRequest {
	r := sampleRequest("POST", "/mcp", "application/json", body)
	h := r.Attributes.Request.Http
	h.Headers["content-length"] = strconv.Itoa(len(body))
	h.Headers["accept"] = "application/json, text/event-stream"
	for i := 0; i+1 < len(headers); i += 2 {
		h.Headers[headers[i]] = headers[i+1]
	}
	return r
}

func toolCall(id int, tool string) string {
	return `{"jsonrpc":"2.0","id":` + strconv.Itoa(id) + `,"method":"tools/call","params":{"name":"` + tool + `","arguments":{"payment_id":"p-1"}}}`
}

func rpc(id int, method string) string {
	return `{"jsonrpc":"2.0","id":` + strconv.Itoa(id) + `,"method":"` + method + `"}`
}

func TestMCPThroughShippedPolicy(t *testing.T) {
	e := newTestEngine(t, Config{Dir: shippedPolicies})
	reader, payer, nobody := agentWith(1, "payments:read"), agentWith(3, "payments:initiate", "payments:read"), agentWith(0)
	for _, tc := range []struct {
		name      string
		req       *authv3.CheckRequest
		agent     *identity.Agent
		allowed   bool
		reason    string
		op        string
		decisive  int
		tools     []string
		firstTool string
	}{
		{"payer initiates a payment", mcpRequest(toolCall(1, "initiate_payment")), payer, true, "allowed", "payments:initiate", 0, nil, "initiate_payment"},
		{"reader reads a payment", mcpRequest(toolCall(1, "get_payment")), reader, true, "allowed", "payments:read", 0, nil, "get_payment"},
		{"reader refused initiate_payment", mcpRequest(toolCall(1, "initiate_payment")), reader, false, "insufficient_trust_level", "payments:initiate", 0, nil, "initiate_payment"},
		{"unknown tool", mcpRequest(toolCall(1, "drop_tables")), payer, false, "unknown_operation", "", 0, nil, "drop_tables"},
		{"unknown method", mcpRequest(rpc(1, "admin/shutdown")), payer, false, "unknown_operation", "", 0, nil, ""},
		{"reader lists tools", mcpRequest(rpc(1, "tools/list")), reader, true, "allowed", "mcp:discover", 0, []string{"get_payment", "list_payments"}, ""},
		{"payer lists tools", mcpRequest(rpc(1, "tools/list")), payer, true, "allowed", "mcp:discover", 0, []string{"get_payment", "initiate_payment", "list_payments"}, ""},
		{"L0 agent lists no tools", mcpRequest(rpc(1, "tools/list")), nobody, true, "allowed", "mcp:discover", 0, []string{}, ""},
		{"L0 agent initializes", mcpRequest(`{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"x","version":"1"}}}`),
			nobody, true, "allowed", "mcp:session", 0, nil, ""},
		{"L0 agent pings", mcpRequest(rpc(9, "ping"), mcp.HeaderSessionID, "s-1"), nobody, true, "allowed", "mcp:session", 0, nil, ""},
		{"notification", mcpRequest(`{"jsonrpc":"2.0","method":"notifications/initialized"}`), nobody, true, "allowed", "mcp:session", 0, nil, ""},
		{"response to the server", mcpRequest(`{"jsonrpc":"2.0","id":"srv-1","result":{"roots":[]}}`), nobody, true, "allowed", "mcp:session", 0, nil, ""},
		{"resource by URI", mcpRequest(`{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"payments://payments/p-1"}}`), reader, true, "allowed", "payments:read", 0, nil, ""},
		{"resource URI the pattern does not match", mcpRequest(`{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"payments://payments/p-1/../../admin"}}`), reader, false, "unknown_operation", "", 0, nil, ""},
		{"batch: every request allowed", mcpRequest("[" + toolCall(1, "get_payment") + "," + toolCall(2, "initiate_payment") + "]"), payer, true, "allowed", "payments:read", 0, nil, "get_payment"},
		{"batch: one denial denies all", mcpRequest("[" + toolCall(1, "get_payment") + "," + `{"jsonrpc":"2.0","method":"notifications/progress"}` + "," + toolCall(3, "initiate_payment") + "]"),
			reader, false, "insufficient_trust_level", "payments:initiate", 2, nil, "get_payment"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := e.Eval(context.Background(), tc.req, tc.agent)
			if err != nil {
				t.Fatal(err)
			}
			if r.Allowed != tc.allowed || r.Reason != tc.reason || r.Operation != tc.op {
				t.Fatalf("got allowed=%v reason=%q op=%q, want %v %q %q", r.Allowed, r.Reason, r.Operation, tc.allowed, tc.reason, tc.op)
			}
			if r.MCP == nil || r.MCP.Call == nil || r.MCP.Decisive != tc.decisive {
				t.Fatalf("MCP result %+v", r.MCP)
			}
			if tc.firstTool != "" && r.MCP.Call.Messages[0].Tool != tc.firstTool {
				t.Fatalf("tool %q", r.MCP.Call.Messages[0].Tool)
			}
			if (tc.tools == nil) != (r.MCP.Tools == nil) || !slices.Equal(tc.tools, r.MCP.Tools) {
				t.Fatalf("tools %#v, want %#v", r.MCP.Tools, tc.tools)
			}
		})
	}
}

func TestMCPNotReadOutsideEndpoints(t *testing.T) {
	e := newTestEngine(t, Config{Dir: shippedPolicies})
	payer := agentWith(3, "payments:initiate", "payments:read")
	// GET (the server's event stream) and DELETE (end of session) go
	// through the route table: the shipped one maps them to mcp:session.
	for _, m := range []string{"GET", "DELETE"} {
		r, err := e.Eval(context.Background(), sampleRequest(m, "/mcp", "", ""), agentWith(0))
		if err != nil || r.MCP != nil || !r.Allowed || r.Operation != "mcp:session" {
			t.Fatalf("%s /mcp: %+v, %v", m, r, err)
		}
	}
	for _, tc := range []struct{ method, path string }{
		{"PUT", "/mcp"},     // no route
		{"POST", "/mcp/"},   // another path
		{"POST", "//mcp"},   // not canonical
		{"POST", "/MCP"},    // paths are case-sensitive
		{"POST", "/v1/mcp"}, // another path
	} {
		req := sampleRequest(tc.method, tc.path, "application/json", toolCall(1, "initiate_payment"))
		r, err := e.Eval(context.Background(), req, payer)
		if err != nil {
			t.Fatal(err)
		}
		if r.MCP != nil || r.Allowed || r.Reason != "unknown_operation" {
			t.Fatalf("%s %s: %+v", tc.method, tc.path, r)
		}
	}
	// With the query, still the endpoint.
	r, err := e.Eval(context.Background(), mcpRequest(toolCall(1, "get_payment")), payer)
	if err != nil || r.MCP == nil || !r.Allowed {
		t.Fatalf("POST /mcp: %+v, %v", r, err)
	}
}

func TestMCPInvalidBodies(t *testing.T) {
	e := newTestEngine(t, Config{Dir: shippedPolicies})
	payer := agentWith(3, "payments:initiate", "payments:read")
	truncated := mcpRequest(toolCall(1, "get_payment"))
	truncated.Attributes.Request.Http.Headers["content-length"] = "900"
	partial := mcpRequest(toolCall(1, "get_payment"), "x-envoy-auth-partial-body", "true")
	raw := mcpRequest("")
	raw.Attributes.Request.Http.RawBody = []byte(toolCall(1, "get_payment"))
	raw.Attributes.Request.Http.Headers["content-length"] = strconv.Itoa(len(raw.Attributes.Request.Http.RawBody))
	r, err := e.Eval(context.Background(), raw, payer)
	if err != nil || !r.Allowed || r.Operation != "payments:read" {
		t.Fatalf("raw_body (pack_as_bytes): %+v, %v", r, err)
	}
	for name, req := range map[string]*authv3.CheckRequest{
		"not JSON":        mcpRequest(`{"jsonrpc":`),
		"no body":         mcpRequest(""),
		"duplicate name":  mcpRequest(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_payment","name":"initiate_payment"}}`),
		"truncated":       truncated,
		"partial flagged": partial,
		"too large":       mcpRequest(`{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"` + strings.Repeat("x", mcp.DefaultMaxBodyBytes) + `"}}`),
	} {
		r, err := e.Eval(context.Background(), req, payer)
		if !errors.Is(err, ErrMCPInvalid) {
			t.Fatalf("%s: err %v, want ErrMCPInvalid", name, err)
		}
		if r == nil || r.MCP == nil || r.Allowed {
			t.Fatalf("%s: partial result %+v", name, r)
		}
	}
}

// TestMCPInput: input.mcp carries method, tool, request id, session id and
// protocol version (and the arguments' digest, never the arguments), and
// a policy can decide on them; the endpoint host matches with any port.
func TestMCPInput(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"p.rego": `package agentauthz.authz
decision := {"allowed": allowed, "reason": "r"}
default allowed := false
allowed if {
	input.operation == "tools:use"
	input.mcp.method == "tools/call"
	input.mcp.tool == "get_payment"
	input.mcp.kind == "request"
	input.mcp.request_id == 7
	input.mcp.session_id == "sess-1"
	input.mcp.protocol_version == "2025-06-18"
	input.mcp.batch == false
	input.mcp.arguments_sha256 == crypto.sha256("{\"payment_id\":\"p-1\"}")
	not input.mcp.arguments
}
allowed if {
	input.mcp.request_id == "s-7"
	input.mcp.tool == "get_payment"
	input.mcp.batch == true
	not input.mcp.session_id
}
`,
		"data.json": `{"agentauthz": {"mcp": {"endpoints": [{"host": "tools.example", "path": "/rpc"}], "tools": {"get_payment": "tools:use"}, "max_body_bytes": 300}}}`,
	})
	e := newTestEngine(t, Config{Dir: dir})
	at := func(host, body string, headers ...string) *authv3.CheckRequest {
		r := mcpRequest(body, headers...)
		h := r.Attributes.Request.Http
		h.Host, h.Path = host, "/rpc?x=1"
		return r
	}
	hdrs := []string{mcp.HeaderSessionID, "sess-1", mcp.HeaderProtocolVersion, "2025-06-18"}
	for _, tc := range []struct {
		name    string
		req     *authv3.CheckRequest
		allowed bool
		mcp     bool
	}{
		{"all fields", at("tools.example:8443", toolCall(7, "get_payment"), hdrs...), true, true},
		{"host in another case", at("TOOLS.example", toolCall(7, "get_payment"), hdrs...), true, true},
		{"other id", at("tools.example", toolCall(8, "get_payment"), hdrs...), false, true},
		{"batch with a string id", at("tools.example", `[{"jsonrpc":"2.0","id":"s-7","method":"tools/call","params":{"name":"get_payment"}}]`), true, true},
		{"another host is not the endpoint", at("other.example", toolCall(7, "get_payment"), hdrs...), false, false},
	} {
		r, err := e.Eval(context.Background(), tc.req, agentWith(1))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if r.Allowed != tc.allowed || (r.MCP != nil) != tc.mcp {
			t.Fatalf("%s: allowed=%v mcp=%v", tc.name, r.Allowed, r.MCP != nil)
		}
	}
	// max_body_bytes from the data.
	_, err := e.Eval(context.Background(), at("tools.example", `{"jsonrpc":"2.0","id":1,"method":"ping","params":{"p":"`+strings.Repeat("x", 300)+`"}}`), agentWith(1))
	if !errors.Is(err, ErrMCPInvalid) || !strings.Contains(err.Error(), "exceeds 300") {
		t.Fatalf("body over max_body_bytes: %v", err)
	}
}

// TestMCPDataRefused: a malformed data.agentauthz.mcp is refused at load
// with an error naming the value.
func TestMCPDataRefused(t *testing.T) {
	pol, err := os.ReadFile(filepath.Join(shippedPolicies, "authz.rego"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"authz.rego": string(pol), "data.json": shippedData(t, func(map[string]any) {})})
	e := newTestEngine(t, Config{Dir: dir})
	good := e.Revision()
	setMCP := func(field, v string) func(map[string]any) {
		return func(root map[string]any) { root["mcp"].(map[string]any)[field] = decodeJSON(t, v) }
	}
	for _, tc := range []struct {
		name, wantErr string
		edit          func(map[string]any)
	}{
		{"not an object", `data.agentauthz.mcp: want object, got array`, func(root map[string]any) { root["mcp"] = decodeJSON(t, `[]`) }},
		{"no endpoints", `mcp.endpoints: missing`, func(root map[string]any) { delete(root["mcp"].(map[string]any), "endpoints") }},
		{"misspelt field", `mcp.tool: unknown field`, setMCP("tool", `{}`)},
		{"endpoint without path", `mcp.endpoints[0].path: want an absolute path`, setMCP("endpoints", `[{"host": "*"}]`)},
		{"endpoint host with port", `mcp.endpoints[0].host: want a lower-case host name without port`, setMCP("endpoints", `[{"host": "a.example:443", "path": "/mcp"}]`)},
		{"endpoint path with wildcard", `mcp.endpoints[0].path: want an absolute path without wildcards`, setMCP("endpoints", `[{"host": "*", "path": "/*"}]`)},
		{"endpoint also a route", `mcp.endpoints[0].path: data.agentauthz.routes also maps POST /v1/payments`, setMCP("endpoints", `[{"host": "*", "path": "/v1/payments"}]`)},
		{"tool to an unknown operation", `mcp.tools["refund"]: "payments:refund" is not in data.agentauthz.operations`, setMCP("tools", `{"refund": "payments:refund"}`)},
		{"tool name with a space", `mcp.tools["pay now"]: a tool name is`, setMCP("tools", `{"pay now": "payments:initiate"}`)},
		{"tool operation not a string", `mcp.tools["pay"]: want an operation name, got number 3`, setMCP("tools", `{"pay": 3}`)},
		{"tools/call as a method", `mcp.methods["tools/call"]: tools/call resolves by tool name`, setMCP("methods", `{"tools/call": "payments:read"}`)},
		{"resources/read as a method", `mcp.methods["resources/read"]: resources/read resolves by resource URI`, setMCP("methods", `{"resources/read": "payments:read"}`)},
		{"wildcard inside a method", `mcp.methods["tools/*/x"]: want a method name, or a prefix`, setMCP("methods", `{"tools/*/x": "payments:read"}`)},
		{"resource without operation", `mcp.resources[0]: want both uri and operation`, setMCP("resources", `[{"uri": "a://*"}]`)},
		{"resource pattern with **", `mcp.resources[0].uri: want a URI pattern`, setMCP("resources", `[{"uri": "a://**", "operation": "payments:read"}]`)},
		{"max_body_bytes too large", `mcp.max_body_bytes: want an integer 1..1048576, got number 2000000`, setMCP("max_body_bytes", `2000000`)},
		{"public operation with a scope", `operations["mcp:discover"].scope: a public operation has no scope`, func(root map[string]any) {
			root["operations"].(map[string]any)["mcp:discover"] = decodeJSON(t, `{"min_trust": 0, "public": true, "scope": "mcp:discover"}`)
		}},
		{"public not a boolean", `operations["mcp:discover"].public: want true or false, got string "yes"`, func(root map[string]any) {
			root["operations"].(map[string]any)["mcp:discover"] = decodeJSON(t, `{"min_trust": 0, "public": "yes", "scope": "a:b"}`)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			writeFiles(t, dir, map[string]string{"data.json": shippedData(t, tc.edit)})
			err := e.Reload()
			if !errors.Is(err, ErrInvalidData) {
				t.Fatalf("Reload = %v, want ErrInvalidData", err)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %q does not say %q", err, tc.wantErr)
			}
			if e.Revision() != good {
				t.Fatalf("revision %q replaced %q", e.Revision(), good)
			}
		})
	}
}

func TestGlobMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, s string
		want       bool
	}{
		{"payments://payments/*", "payments://payments/p-1", true},
		{"payments://payments/*", "payments://payments/", true},
		{"payments://payments/*", "payments://payments/p-1/refunds", false},
		{"payments://payments/*", "payments://payments", false},
		{"a://*/x", "a://b/x", true},
		{"a://*/x", "a://b/c/x", false},
		{"a://p-*-z", "a://p-1-2-z", true},
		{"exact", "exact", true},
		{"exact", "exact2", false},
	} {
		if got := globMatch(tc.pattern, tc.s); got != tc.want {
			t.Errorf("globMatch(%q, %q) = %v", tc.pattern, tc.s, got)
		}
	}
}

// BenchmarkMCPResolve is what an MCP call adds to a Check: the endpoint
// match, the body parse and the tool lookup, for a 2 KB tools/call.
func BenchmarkMCPResolve(b *testing.B) {
	e, err := New(Config{Dir: shippedPolicies})
	if err != nil {
		b.Fatal(err)
	}
	s := e.cur.Load()
	body := `{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"initiate_payment","arguments":{"amount":125000,"currency":"EUR","creditor":{"name":"ACME GmbH","iban":"DE89370400440532013000"},"memo":"` +
		strings.Repeat("invoice 2026-0042 ", 100) + `"}}}`
	req := mcpRequest(body, mcp.HeaderSessionID, "3f1c2a", mcp.HeaderProtocolVersion, "2025-06-18")
	h := req.Attributes.Request.Http
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	cpu := testenv.CPUTime()
	defer func() { b.ReportMetric(float64(testenv.CPUTime()-cpu)/float64(b.N), "cpu-ns/op") }()
	for b.Loop() {
		if !s.mcp.endpoint(h.Host, h.Path) {
			b.Fatal("not an endpoint")
		}
		body := requestBody(h)
		if err := checkWholeBody(h.Headers, len(body)); err != nil {
			b.Fatal(err)
		}
		c, err := mcp.Parse(body, h.Headers, s.mcp.maxBody)
		if err != nil {
			b.Fatal(err)
		}
		if s.mcp.operation(&c.Messages[0]) != "payments:initiate" {
			b.Fatal("operation")
		}
		_ = mcpTerm(c, &c.Messages[0])
	}
}
