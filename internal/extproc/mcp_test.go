package extproc

import (
	"strconv"
	"strings"
	"testing"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"

	"github.com/agentauthz/agentauthz/internal/httpsig"
)

const toolsAnswer = `{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"get_payment","inputSchema":{"type":"object"}},` +
	`{"name":"initiate_payment","inputSchema":{"type":"object"}}]}}`

// An allowed tools/list answer reaches the agent with only the tools
// ext_authz listed in x-agent-mcp-tools, and the signature and the record
// cover the filtered body the agent saw (#22.3).
func TestMCPToolsListFiltered(t *testing.T) {
	f := newFixture(t, 4<<20)
	for _, ctype := range []string{"application/json", "text/event-stream"} {
		body := []byte(toolsAnswer)
		if ctype == "text/event-stream" {
			body = []byte("event: message\nid: 1\ndata: " + toolsAnswer + "\n\n")
		}
		id := testID("dec-" + ctype)
		e := f.open(filterv3.ProcessingMode_BUFFERED)
		h := f.decide(id, "POST", "tools.internal", "/mcp")
		h["x-agent-mcp-tools"] = `["get_payment","list_payments"]`
		if r := e.requestHeaders(mapHeaders(h)); r.GetRequestHeaders() == nil {
			t.Fatalf("request headers: %v", r)
		}
		e.responseHeaders(headerMap(":status", "200", "content-type", ctype, "content-length", strconv.Itoa(len(body))), false)
		r := e.responseBody(body, true)
		cr := r.GetResponseBody().GetResponse()
		got := cr.GetBodyMutation().GetBody()
		e.close()
		if strings.Contains(string(got), "initiate_payment") || !strings.Contains(string(got), `"get_payment"`) {
			t.Fatalf("%s: filtered body %q", ctype, got)
		}
		m := &httpsig.Message{Status: 200, Body: got, Header: []httpsig.Field{{Name: "content-type", Value: ctype}, {Name: "content-length", Value: "1"}},
			Request: &httpsig.Message{Method: "POST", Authority: "tools.internal", Path: "/mcp"}}
		apply(m, cr.GetHeaderMutation())
		if _, ok := m.Get("content-length"); ok {
			t.Fatalf("%s: stale content-length kept", ctype)
		}
		if res, err := f.verify(m); err != nil || !res.BodyCovered {
			t.Fatalf("%s: signature over the filtered body: %+v %v", ctype, res, err)
		}
	}
	if f.count("mcp_tools_filtered") != 2 {
		t.Fatalf("mcp_tools_filtered = %v", f.count("mcp_tools_filtered"))
	}

	// An answer that cannot be filtered never reaches the agent.
	e := f.open(filterv3.ProcessingMode_BUFFERED)
	h := f.decide(testID("dec-bad"), "POST", "tools.internal", "/mcp")
	h["x-agent-mcp-tools"] = `["get_payment"]`
	e.requestHeaders(mapHeaders(h))
	e.responseHeaders(headerMap(":status", "200", "content-type", "application/json"), false)
	immediate(t, e.responseBody([]byte(`{"jsonrpc":"2.0","id":1,"result":{"tools":[`), true), 502, "mcp_unfilterable")

	// Nor one streamed past the processor.
	e = f.open(filterv3.ProcessingMode_STREAMED)
	h = f.decide(testID("dec-streamed"), "POST", "tools.internal", "/mcp")
	h["x-agent-mcp-tools"] = `["get_payment"]`
	e.requestHeaders(mapHeaders(h))
	immediate(t, e.responseHeaders(headerMap(":status", "200", "content-type", "application/json"), false), 502, "mcp_unfilterable")

	// A malformed list is refused at the request.
	e = f.open(filterv3.ProcessingMode_BUFFERED)
	h = f.decide(testID("dec-malformed"), "POST", "tools.internal", "/mcp")
	h["x-agent-mcp-tools"] = `get_payment`
	immediate(t, e.requestHeaders(mapHeaders(h)), 500, "protocol_error")
}
