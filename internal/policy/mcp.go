package policy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"unsafe"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/agentauthz/agentauthz/internal/identity"
	"github.com/agentauthz/agentauthz/internal/mcp"
)

// MCP endpoints (data.agentauthz.mcp): a POST to a declared endpoint is read
// as JSON-RPC and each message resolves to an operation, by method, by tool
// name (tools/call) or by resource URI (resources/read, subscribe,
// unsubscribe), instead of by the route table. docs/mcp.md has the schema.

// Bounds on data.agentauthz.mcp.
const (
	maxMCPEndpoints = 64
	maxMCPTools     = 256 // tools/list names them all in one header
	maxMCPResources = 1000
	maxMCPMethods   = 1000
	maxToolName     = 128
	maxURIStars     = 8 // globMatch backtracks: bound its work
	maxMCPBodyBytes = MaxBodyBytes
)

// mcpTable is the parsed data.agentauthz.mcp; nil when no endpoint is
// declared, so that other requests pay one nil check.
type mcpTable struct {
	endpoints []mcpEndpoint
	methods   map[string]string // exact method → operation
	prefixes  []mcpRule         // "notifications/*" → operation, in order
	tools     map[string]string
	toolNames []string  // sorted keys of tools
	resources []mcpRule // URI patterns, first match wins
	responses string    // operation of a JSON-RPC response the client sends
	maxBody   int
}

type mcpEndpoint struct {
	host string // lower case, no port; "*" matches every host
	path string
}

type mcpRule struct {
	pattern   string
	operation string
}

// endpoint reports whether a request to host (the :authority, port
// allowed) and path (query allowed) is one to a declared MCP endpoint.
func (t *mcpTable) endpoint(host, target string) bool {
	if t == nil {
		return false
	}
	path, _ := cutTarget(target)
	for _, e := range t.endpoints {
		if path == e.path && (e.host == "*" || strings.EqualFold(hostOnly(host), e.host)) {
			return true
		}
	}
	return false
}

// hostOnly drops a port from an authority ("h:443", "[::1]:443").
func hostOnly(h string) string {
	if i := strings.LastIndexByte(h, ':'); i >= 0 && strings.IndexByte(h[i:], ']') < 0 {
		return h[:i]
	}
	return h
}

// operation resolves one message; "" means no operation (denied as
// unknown_operation by the shipped policy).
func (t *mcpTable) operation(m *mcp.Message) string {
	switch {
	case m.Kind == mcp.Response:
		return t.responses
	case m.Method == mcp.MethodToolsCall:
		return t.tools[m.Tool]
	case mcp.HasURI(m.Method):
		for _, r := range t.resources {
			if globMatch(r.pattern, m.URI) {
				return r.operation
			}
		}
		return ""
	}
	if op, ok := t.methods[m.Method]; ok {
		return op
	}
	for _, r := range t.prefixes {
		if strings.HasPrefix(m.Method, r.pattern) {
			return r.operation
		}
	}
	return ""
}

// globMatch matches a URI against a pattern in which "*" stands for any
// run of characters other than "/" (one path segment, or part of one).
func globMatch(pattern, s string) bool {
	for {
		i := strings.IndexByte(pattern, '*')
		if i < 0 {
			return pattern == s
		}
		if !strings.HasPrefix(s, pattern[:i]) {
			return false
		}
		s, pattern = s[i:], pattern[i+1:]
		// The star takes the shortest run that lets the rest match; it
		// never crosses a "/".
		for j := 0; ; j++ {
			if globMatch(pattern, s[j:]) {
				return true
			}
			if j == len(s) || s[j] == '/' {
				return false
			}
		}
	}
}

// parseMCP validates data.agentauthz.mcp (raw is nil when absent). ops is
// the set of operation names (nil when data.agentauthz.operations is
// absent: then any name is accepted, as for routes); routes must not claim
// an endpoint's path, or a POST there could be authorized without reading
// the call.
func parseMCP(raw any, ops map[string]bool, routes *routeTable) (*mcpTable, error) {
	if raw == nil {
		return nil, nil
	}
	m, ok := raw.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("want object, got %s", typeName(raw))
	}
	t := &mcpTable{methods: map[string]string{}, tools: map[string]string{}, maxBody: mcp.DefaultMaxBodyBytes}
	opName := func(v any) (string, error) {
		s, ok := v.(string)
		if !ok {
			return "", fmt.Errorf("want an operation name, got %s", describe(v))
		}
		if ops != nil && !ops[s] {
			return "", fmt.Errorf("%q is not in data.agentauthz.operations", s)
		}
		if err := checkName(s); err != nil {
			return "", err
		}
		return s, nil
	}
	for _, k := range sortedKeys(m) {
		v := m[k]
		var err error
		switch k {
		case "endpoints":
			t.endpoints, err = parseMCPEndpoints(v, routes)
		case "methods":
			err = parseMCPMethods(t, v, opName)
		case "tools":
			err = parseMCPTools(t, v, opName)
		case "resources":
			t.resources, err = parseMCPResources(v, opName)
		case "responses":
			t.responses, err = opName(v)
		case "max_body_bytes":
			n, ok := intValue(v)
			if !ok || n < 1 || n > maxMCPBodyBytes {
				err = fmt.Errorf("want an integer 1..%d, got %s", maxMCPBodyBytes, describe(v))
			}
			t.maxBody = n
		default:
			err = errors.New("unknown field (known: endpoints, max_body_bytes, methods, resources, responses, tools)")
		}
		if err != nil {
			return nil, at("."+k, err)
		}
	}
	if len(t.endpoints) == 0 {
		return nil, at(".endpoints", errors.New("missing: declare at least one {\"host\", \"path\"} (without endpoints no call is read as MCP)"))
	}
	return t, nil
}

func parseMCPEndpoints(v any, routes *routeTable) ([]mcpEndpoint, error) {
	arr, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("want array, got %s", typeName(v))
	}
	if len(arr) > maxMCPEndpoints {
		return nil, fmt.Errorf("more than %d", maxMCPEndpoints)
	}
	out := make([]mcpEndpoint, 0, len(arr))
	for i, e := range arr {
		idx := "[" + strconv.Itoa(i) + "]"
		o, ok := e.(map[string]any)
		if !ok {
			return nil, at(idx, fmt.Errorf("want object, got %s", typeName(e)))
		}
		var ep mcpEndpoint
		for _, k := range sortedKeys(o) {
			s, ok := o[k].(string)
			if !ok {
				return nil, at(idx+"."+k, fmt.Errorf("want string, got %s", typeName(o[k])))
			}
			switch k {
			case "host":
				ep.host = s
			case "path":
				ep.path = s
			default:
				return nil, at(idx+"."+k, errors.New("unknown field (known: host, path)"))
			}
		}
		if ep.host == "" || len(ep.host) > maxNameBytes || ep.host != strings.ToLower(ep.host) ||
			strings.ContainsAny(ep.host, ":/ ") || strings.Contains(ep.host, "*") && ep.host != "*" {
			return nil, at(idx+".host", fmt.Errorf("want a lower-case host name without port, or \"*\" for any host; got %s", describe(ep.host)))
		}
		if _, ok := splitPattern(ep.path); !ok || strings.Contains(ep.path, "*") {
			return nil, at(idx+".path", fmt.Errorf("want an absolute path without wildcards, query or escapes; got %s", describe(ep.path)))
		}
		if op := routes.Match("POST", ep.path); op != "" {
			return nil, at(idx+".path", fmt.Errorf("data.agentauthz.routes also maps POST %s (to %q): remove that route, MCP calls are authorized per message", ep.path, op))
		}
		out = append(out, ep)
	}
	return out, nil
}

func parseMCPMethods(t *mcpTable, v any, opName func(any) (string, error)) error {
	m, ok := v.(map[string]any)
	if !ok {
		return fmt.Errorf("want object, got %s", typeName(v))
	}
	if len(m) > maxMCPMethods {
		return fmt.Errorf("more than %d", maxMCPMethods)
	}
	for _, method := range sortedKeys(m) {
		switch {
		case method == mcp.MethodToolsCall:
			return at(key(method), errors.New("tools/call resolves by tool name: map it in data.agentauthz.mcp.tools"))
		case mcp.HasURI(method):
			return at(key(method), fmt.Errorf("%s resolves by resource URI: map it in data.agentauthz.mcp.resources", method))
		case method == "" || len(method) > maxNameBytes || method == "*" || strings.Contains(strings.TrimSuffix(method, "/*"), "*"):
			return at(key(method), errors.New("want a method name, or a prefix ending in \"/*\" (\"notifications/*\")"))
		}
		op, err := opName(m[method])
		if err != nil {
			return at(key(method), err)
		}
		if p, ok := strings.CutSuffix(method, "*"); ok {
			t.prefixes = append(t.prefixes, mcpRule{p, op})
		} else {
			t.methods[method] = op
		}
	}
	return nil
}

func parseMCPTools(t *mcpTable, v any, opName func(any) (string, error)) error {
	m, ok := v.(map[string]any)
	if !ok {
		return fmt.Errorf("want object, got %s", typeName(v))
	}
	if len(m) > maxMCPTools {
		return fmt.Errorf("more than %d", maxMCPTools)
	}
	for _, name := range sortedKeys(m) {
		if !validToolName(name) {
			return at(key(name), fmt.Errorf("a tool name is 1..%d of A-Z a-z 0-9 _ - . /", maxToolName))
		}
		op, err := opName(m[name])
		if err != nil {
			return at(key(name), err)
		}
		t.tools[name] = op
		t.toolNames = append(t.toolNames, name)
	}
	sort.Strings(t.toolNames)
	return nil
}

// validToolName follows MCP's tool naming guidance; it also keeps names
// safe to list in a header (no spaces or commas).
func validToolName(s string) bool {
	if s == "" || len(s) > maxToolName {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.' || c == '/') {
			return false
		}
	}
	return true
}

func parseMCPResources(v any, opName func(any) (string, error)) ([]mcpRule, error) {
	arr, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("want array, got %s", typeName(v))
	}
	if len(arr) > maxMCPResources {
		return nil, fmt.Errorf("more than %d", maxMCPResources)
	}
	out := make([]mcpRule, 0, len(arr))
	for i, e := range arr {
		idx := "[" + strconv.Itoa(i) + "]"
		o, ok := e.(map[string]any)
		if !ok {
			return nil, at(idx, fmt.Errorf("want object, got %s", typeName(e)))
		}
		var r mcpRule
		for _, k := range sortedKeys(o) {
			var err error
			switch k {
			case "uri":
				s, ok := o[k].(string)
				if !ok || s == "" || len(s) > 1024 || strings.Contains(s, "**") || strings.Count(s, "*") > maxURIStars {
					err = fmt.Errorf("want a URI pattern (at most %d \"*\", each matching within one segment), got %s", maxURIStars, describe(o[k]))
				}
				r.pattern = s
			case "operation":
				r.operation, err = opName(o[k])
			default:
				err = errors.New("unknown field (known: operation, uri)")
			}
			if err != nil {
				return nil, at(idx+"."+k, err)
			}
		}
		if r.pattern == "" || r.operation == "" {
			return nil, at(idx, errors.New("want both uri and operation"))
		}
		out = append(out, r)
	}
	return out, nil
}

// intValue accepts an integer as JSON decoding or Go code gives it.
func intValue(v any) (int, bool) {
	switch n := v.(type) {
	case int:
		return n, true
	case float64:
		if n == float64(int(n)) {
			return int(n), true
		}
	case interface{ Int64() (int64, error) }:
		i, err := n.Int64()
		return int(i), err == nil
	}
	return 0, false
}

// MCPResult is how an MCP call was decided.
type MCPResult struct {
	Call *mcp.Call // nil when the body could not be read
	// Operations holds each message's operation ("" for none).
	Operations []string
	// Decisive is the message whose decision is the call's: the first one
	// denied, or 0 when every one was allowed.
	Decisive int
	// Tools, for an allowed call with a tools/list request, lists the tools
	// the agent may call (sorted; empty when none); nil otherwise.
	Tools []string
}

var (
	keyMCP             = ast.StringTerm("mcp")
	keyMCPMethod       = ast.StringTerm("method")
	keyMCPKind         = ast.StringTerm("kind")
	keyMCPTool         = ast.StringTerm("tool")
	keyMCPURI          = ast.StringTerm("uri")
	keyMCPRequestID    = ast.StringTerm("request_id")
	keyMCPSessionID    = ast.StringTerm("session_id")
	keyMCPProtocol     = ast.StringTerm("protocol_version")
	keyMCPBatch        = ast.StringTerm("batch")
	keyMCPArgumentsSum = ast.StringTerm("arguments_sha256")
	mcpKindTerms       = [...]*ast.Term{mcp.Request: ast.StringTerm("request"), mcp.Notification: ast.StringTerm("notification"), mcp.Response: ast.StringTerm("response")}
)

// mcpTerm is input.mcp for message m of c (docs/mcp.md, "Policy input").
// Absent values are left out, so that a policy tests them with `not`.
func mcpTerm(c *mcp.Call, m *mcp.Message) *ast.Term {
	kv := make([][2]*ast.Term, 0, 9)
	kv = append(kv, ast.Item(keyMCPKind, mcpKindTerms[m.Kind]))
	batch := falseTerm
	if c.Batch {
		batch = trueTerm
	}
	kv = append(kv, ast.Item(keyMCPBatch, batch))
	str := func(k *ast.Term, v string) {
		if v != "" {
			kv = append(kv, ast.Item(k, ast.StringTerm(v)))
		}
	}
	str(keyMCPMethod, m.Method)
	str(keyMCPTool, m.Tool)
	str(keyMCPURI, m.URI)
	str(keyMCPArgumentsSum, m.ArgumentsSHA256)
	str(keyMCPSessionID, c.SessionID)
	str(keyMCPProtocol, c.ProtocolVersion)
	if m.ID != "" {
		var id *ast.Term
		if m.ID[0] == '"' {
			var s string
			_ = json.Unmarshal([]byte(m.ID), &s) // the parser checked it is a JSON string
			id = ast.StringTerm(s)
		} else {
			id = ast.NumberTerm(json.Number(m.ID))
		}
		kv = append(kv, ast.Item(keyMCPRequestID, id))
	}
	return ast.NewTerm(ast.NewObject(kv...))
}

// ErrMCPInvalid wraps a refused MCP body: the caller denies with
// invalid_jsonrpc, not policy_error.
var ErrMCPInvalid = mcp.ErrInvalid

// evalMCP decides a POST to an MCP endpoint: every message of the call,
// each as its own operation, must be allowed. The first denial decides.
func (e *Engine) evalMCP(ctx context.Context, s *state, req *authv3.CheckRequest, agent *identity.Agent) (*Result, error) {
	h := req.GetAttributes().GetRequest().GetHttp()
	res := &MCPResult{}
	partial := &Result{Revision: s.revision, MCP: res}
	body := requestBody(h)
	if err := checkWholeBody(h.GetHeaders(), len(body)); err != nil {
		return partial, err
	}
	c, err := mcp.Parse(body, h.GetHeaders(), s.mcp.maxBody)
	if err != nil {
		return partial, err
	}
	res.Call = c
	res.Operations = make([]string, len(c.Messages))
	var first *Result
	listsTools := false
	for i := range c.Messages {
		m := &c.Messages[i]
		op := s.mcp.operation(m)
		res.Operations[i], res.Decisive = op, i
		partial.Operation = op
		r, err := e.evalOp(ctx, s, req, agent, op, mcpTerm(c, m))
		if err != nil {
			return partial, err
		}
		if !r.Allowed {
			out := *r
			out.MCP = res
			return &out, nil
		}
		if first == nil {
			first = r
		}
		listsTools = listsTools || m.Kind == mcp.Request && m.Method == mcp.MethodToolsList
	}
	res.Decisive = 0
	out := *first
	out.Operation = res.Operations[0]
	out.MCP = res
	if listsTools {
		res.Tools = e.allowedTools(ctx, s, req, agent, c)
	}
	return &out, nil
}

// allowedTools asks the policy, tool by tool, which of the declared tools
// the agent may call now. An error counts as no (fail closed).
func (e *Engine) allowedTools(ctx context.Context, s *state, req *authv3.CheckRequest, agent *identity.Agent, c *mcp.Call) []string {
	tools := make([]string, 0, len(s.mcp.toolNames))
	probe := &mcp.Call{SessionID: c.SessionID, ProtocolVersion: c.ProtocolVersion}
	for _, name := range s.mcp.toolNames {
		m := mcp.Message{Kind: mcp.Request, Method: mcp.MethodToolsCall, Tool: name}
		r, err := e.evalOp(ctx, s, req, agent, s.mcp.tools[name], mcpTerm(probe, &m))
		if err == nil && r.Allowed {
			tools = append(tools, name)
		}
	}
	return tools
}

// requestBody is the body Envoy sent: body, or raw_body with pack_as_bytes.
// The bytes of body are shared, not copied: the parser only reads them.
func requestBody(h *authv3.AttributeContext_HttpRequest) []byte {
	if b := h.GetBody(); b != "" {
		return unsafe.Slice(unsafe.StringData(b), len(b)) //nolint:gosec // G103: read only, the parser never writes to it
	}
	return h.GetRawBody()
}

// checkWholeBody refuses a body Envoy cut short: a call is authorized on
// all of it or not at all (allow_partial_message: false).
func checkWholeBody(headers map[string]string, n int) error {
	if headers["x-envoy-auth-partial-body"] == "true" {
		return fmt.Errorf("%w: body truncated by Envoy (set with_request_body.allow_partial_message: false)", ErrMCPInvalid)
	}
	if cl, ok := headers["content-length"]; ok {
		l, err := strconv.ParseInt(cl, 10, 64)
		if err != nil || l < 0 {
			return fmt.Errorf("%w: content-length %q", ErrMCPInvalid, clipValue(cl))
		}
		if l != int64(n) {
			return fmt.Errorf("%w: body of %d bytes, content-length %d (Envoy sends the whole body only up to max_request_bytes)", ErrMCPInvalid, n, l)
		}
	}
	return nil
}

func clipValue(s string) string {
	if len(s) > 32 {
		return s[:32] + "…"
	}
	return s
}
