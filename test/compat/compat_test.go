package compat

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// echoPolicy allows and hands the whole input back (without input.agent,
// which opa-envoy-plugin does not have) in the x-input header.
const echoPolicy = `package envoy.authz

allow := {"allowed": true, "headers": {"x-input": json.marshal(object.remove(input, ["agent"]))}}
`

// routesData is a route table for the cases that check input.operation.
const routesData = `{"agentauthz": {
  "operations": {"payments:read": {"min_trust": 1, "scope": "payments:read"}},
  "routes": [{"method": "GET", "path": "/v1/payments", "operation": "payments:read"},
             {"method": "GET", "path": "/v1/payments/*", "operation": "payments:read"}]}}`

// compatCase is one policy, one request and the expected answer.
type compatCase struct {
	name string
	// from names where the expectation comes from in opa-envoy-plugin.
	from    string
	policy  string // default echoPolicy
	data    string
	path    string // decision path, default envoy/authz/allow
	method  string // default GET
	target  string // :path, default /
	headers map[string]string
	body    string
	mutate  func(*authv3.CheckRequest)

	// input: with the echo policy, input keys and their expected JSON;
	// absent: keys that must not be in the input.
	input  map[string]string
	absent []string
	// want: the answer. For the echo policy only Allowed is compared.
	want answer
}

// denied is a denial with agentauthz's JSON body.
func denied(status int, reason string) answer {
	return answer{Status: status, Reason: reason, JSON: true}
}

func cases() []compatCase {
	unset := "APPEND_IF_EXISTS_OR_ADD" // append and append_action unset on the wire
	return []compatCase{
		// parsed_path and parsed_query: envoyauth/request.go getParsedPathAndQuery,
		// cases of envoyauth/request_test.go TestParsedPathAndQuery.
		{name: "path", from: "request_test.go TestParsedPathAndQuery", target: "/my/test/path",
			input: map[string]string{"parsed_path": `["my","test","path"]`, "parsed_query": `{}`}},
		{name: "query", from: "request_test.go TestParsedPathAndQuery", target: "/my/test/path?a=1",
			input: map[string]string{"parsed_path": `["my","test","path"]`, "parsed_query": `{"a":["1"]}`}},
		{name: "query repeated", from: "request_test.go TestParsedPathAndQuery", target: "/my/test/path?a=1&a=2",
			input: map[string]string{"parsed_query": `{"a":["1","2"]}`}},
		{name: "query two keys", from: "request_test.go TestParsedPathAndQuery", target: "/my/test/path?a=1&b=2",
			input: map[string]string{"parsed_query": `{"a":["1"],"b":["2"]}`}},
		{name: "query escaped newline", from: "request_test.go TestParsedPathAndQuery", target: "/my/test/path?a=1&a=new%0aline",
			input: map[string]string{"parsed_query": `{"a":["1","new\nline"]}`}},
		{name: "escaped slashes", from: "request_test.go TestParsedPathAndQuery", target: "%2Fmy%2Ftest%2Fpath?a=1",
			input: map[string]string{"parsed_path": `["my","test","path"]`, "parsed_query": `{"a":["1"]}`}},
		{name: "leading double slash", from: "request_test.go TestParsedPathAndQuery (//x/people)", target: "//x/people?a=1",
			input: map[string]string{"parsed_path": `["x","people"]`, "parsed_query": `{"a":["1"]}`}},
		{name: "leading double slash admin", from: "request_test.go TestParsedPathAndQuery (//admin/dashboard)", target: "//admin/dashboard",
			input: map[string]string{"parsed_path": `["admin","dashboard"]`}},
		{name: "leading double slash api", from: "getParsedPathAndQuery: strings.TrimLeft(path, \"/\")", target: "//api/v1/products",
			input: map[string]string{"parsed_path": `["api","v1","products"]`}},
		{name: "first segment policy is not bypassed by //", from: "the parsed_path advisory: a policy on parsed_path[0]",
			policy: "package envoy.authz\n\ndefault allow := false\n\nallow if input.parsed_path[0] != \"admin\"\n",
			target: "//admin/dashboard", want: denied(403, "policy_denied")},
		{name: "absolute form", from: "getParsedPathAndQuery: no URL parsing", target: "http://example.com/p/q",
			input: map[string]string{"parsed_path": `["http:","","example.com","p","q"]`, "parsed_query": `{}`}},
		{name: "fragment after query", from: "getParsedPathAndQuery: cut at the first ?", target: "/p/q?a=1#frag",
			input: map[string]string{"parsed_path": `["p","q"]`, "parsed_query": `{"a":["1#frag"]}`}},
		{name: "fragment without query", from: "getParsedPathAndQuery: cut at the first ?", target: "/p/q#frag",
			input: map[string]string{"parsed_path": `["p","q#frag"]`}},
		{name: "trailing slash", from: "getParsedPathAndQuery: strings.Split", target: "/v1/payments/",
			input: map[string]string{"parsed_path": `["v1","payments",""]`}},
		{name: "root", from: "getParsedPathAndQuery: strings.Split", target: "/",
			input: map[string]string{"parsed_path": `[""]`, "parsed_query": `{}`}},
		{name: "query plus and empty value", from: "url.ParseQuery", target: "/p?a+b=c+d&e",
			input: map[string]string{"parsed_query": `{"a b":["c d"],"e":[""]}`}},

		// A path or query that does not decode: RequestToInput fails and
		// internal.go answers 400 with request_parse_error.
		{name: "query bad escape refused", from: "internal.go check: RequestParseErr, 400", target: "/p?a=%zz&b=1",
			want: denied(400, "request_parse_error")},
		{name: "query semicolon refused", from: "internal.go check: RequestParseErr, 400", target: "/p?a=1;b=2",
			want: denied(400, "request_parse_error")},
		{name: "path bad escape refused", from: "internal.go check: RequestParseErr, 400", target: "/p%zz",
			want: denied(400, "request_parse_error")},

		// Bodies: envoyauth/request.go getParsedBody.
		{name: "partial body header", from: "getParsedBody: x-envoy-auth-partial-body", method: "POST", target: "/p",
			headers: map[string]string{"content-type": "application/json", "x-envoy-auth-partial-body": "true"}, body: `{"a":`,
			input: map[string]string{"parsed_body": `null`, "truncated_body": `true`}},
		{name: "partial body header without content type", from: "getParsedBody: x-envoy-auth-partial-body", method: "POST", target: "/p",
			headers: map[string]string{"x-envoy-auth-partial-body": "true"}, body: `x`,
			input: map[string]string{"parsed_body": `null`, "truncated_body": `true`}},
		{name: "partial body header false", from: "getParsedBody: only \"true\" counts", method: "POST", target: "/p",
			headers: map[string]string{"content-type": "application/json", "x-envoy-auth-partial-body": "false"}, body: `{"a":1}`,
			input: map[string]string{"parsed_body": `{"a":1}`, "truncated_body": `false`}},
		{name: "body shorter than content-length", from: "getParsedBody: checkIfHTTPBodyTruncated", method: "POST", target: "/p",
			headers: map[string]string{"content-type": "application/json", "content-length": "100"}, body: `{"a":`,
			input: map[string]string{"parsed_body": `null`, "truncated_body": `true`}},
		{name: "JSON body", from: "getParsedBody: application/json", method: "POST", target: "/p",
			headers: map[string]string{"content-type": "application/json; charset=utf-8"}, body: `{"firstname": "foo", "n": 1.50}`,
			input: map[string]string{"parsed_body": `{"firstname":"foo","n":1.50}`, "truncated_body": `false`}},
		{name: "JSON raw body", from: "getParsedBody: rawBody when body is empty", method: "POST", target: "/p",
			headers: map[string]string{"content-type": "application/json"},
			mutate:  func(r *authv3.CheckRequest) { r.Attributes.Request.Http.RawBody = []byte(`{"raw":true}`) },
			input:   map[string]string{"parsed_body": `{"raw":true}`, "attributes": ""}},
		{name: "form body", from: "getParsedBody: application/x-www-form-urlencoded", method: "POST", target: "/p",
			headers: map[string]string{"content-type": "application/x-www-form-urlencoded"}, body: "a=1&a=2&b=x+y",
			input: map[string]string{"parsed_body": `{"a":["1","2"],"b":["x y"]}`}},
		{name: "multipart body", from: "getParsedBody: multipart/form-data", method: "POST", target: "/upload",
			headers: map[string]string{"content-type": "multipart/form-data; boundary=XyZ"}, body: multipartBody,
			input: map[string]string{"parsed_body": `{"a":["1","2"],"meta":[{"k":[1,true]}]}`, "truncated_body": `false`}},
		{name: "multipart without boundary", from: "getParsedBody: no boundary, no parsing", method: "POST", target: "/upload",
			headers: map[string]string{"content-type": "multipart/form-data"}, body: multipartBody,
			input: map[string]string{"parsed_body": `null`, "truncated_body": `false`}},
		{name: "malformed multipart refused", from: "getParsedBody: multipart error → RequestParseErr, 400", method: "POST", target: "/upload",
			headers: map[string]string{"content-type": "multipart/form-data; boundary=XyZ"}, body: "--XyZ\r\nno end",
			want: denied(400, "request_parse_error")},
		{name: "text body not parsed", from: "getParsedBody: other content types", method: "POST", target: "/p",
			headers: map[string]string{"content-type": "text/plain"}, body: `{"a":1}`,
			input: map[string]string{"parsed_body": `null`, "truncated_body": `false`}},
		{name: "malformed JSON body refused", from: "getParsedBody error → RequestParseErr, 400", method: "POST", target: "/p",
			headers: map[string]string{"content-type": "application/json"}, body: `{"a":`,
			want: denied(400, "request_parse_error")},

		// Top-level fields: envoyauth/request.go RequestToInput.
		{name: "source principal", from: "RequestToInput: source_principal",
			input: map[string]string{"source_principal": `"spiffe://example.test/agent/compat-bot"`,
				"version": `{"encoding":"protojson","ext_authz":"v3"}`, "truncated_body": `false`, "parsed_body": `null`}},
		{name: "no source principal", from: "RequestToInput: only when not empty",
			mutate: func(r *authv3.CheckRequest) { r.Attributes.Source.Principal = "" },
			absent: []string{"source_principal", "destination_principal"}},

		// Attribute encoding: envoyauth/protomap.go, then ast.InterfaceToValue.
		{name: "time and size", from: "protomap: Timestamp is a message; int64 is a number",
			mutate: func(r *authv3.CheckRequest) {
				r.Attributes.Request.Time = &timestamppb.Timestamp{Seconds: 1767225600, Nanos: 120000000}
				r.Attributes.Request.Http.Size = 1 << 40
			},
			input: map[string]string{"attributes.request.time": `{"seconds":1767225600,"nanos":120000000}`,
				"attributes.request.http.size": `1099511627776`}},
		{name: "time without nanos", from: "protomap: msg.Range skips zero fields",
			mutate: func(r *authv3.CheckRequest) { r.Attributes.Request.Time = &timestamppb.Timestamp{Seconds: 1767225600} },
			input:  map[string]string{"attributes.request.time": `{"seconds":1767225600}`}},
		{name: "enum and port", from: "protomap: enums and uint32 as numbers",
			mutate: func(r *authv3.CheckRequest) {
				r.Attributes.Destination.Address.GetSocketAddress().Protocol = corev3.SocketAddress_UDP
			},
			input: map[string]string{"attributes.destination.address": `{"socketAddress":{"protocol":1,"address":"10.0.0.2","portValue":8443}}`}},
		{name: "metadata struct", from: "protomap: Struct via AsMap (protomap_test.go Test_protomap)",
			mutate: func(r *authv3.CheckRequest) {
				s, _ := structpb.NewStruct(map[string]any{"hello": "world", "count": 1, "ratio": 0.25, "list": []any{true, nil}})
				r.Attributes.MetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"dummy": s}}
				r.Attributes.ContextExtensions = map[string]string{"hello": "world"}
			},
			input: map[string]string{"attributes.metadataContext": `{"filterMetadata":{"dummy":{"hello":"world","count":1,"ratio":0.25,"list":[true,null]}}}`,
				"attributes.contextExtensions": `{"hello":"world"}`}},
		{name: "raw body bytes", from: "protomap: bytes, then base64 by InterfaceToValue", method: "POST", target: "/p",
			mutate: func(r *authv3.CheckRequest) { r.Attributes.Request.Http.RawBody = []byte{0, 1, 0xff} },
			input:  map[string]string{"attributes.request.http.rawBody": `"AAH/"`}},

		// The answer: internal/internal.go check and envoyauth/response.go.
		{name: "boolean allow", from: "README: allow := true", policy: "package envoy.authz\n\ndefault allow := true\n",
			want: answer{Allowed: true}},
		{name: "boolean deny", from: "internal.go: PERMISSION_DENIED; Envoy's default 403",
			policy: "package envoy.authz\n\ndefault allow := false\n", want: denied(403, "policy_denied")},
		{name: "object deny", from: "README: the http_status / body / headers example",
			policy: `package envoy.authz

default allow := {"allowed": false, "http_status": 401, "body": "Unauthorized Request", "headers": {"x-ext-auth-allow": "no"}}
`,
			want: answer{Status: 401, Reason: "policy_denied", Body: "Unauthorized Request", Headers: []header{{"x-ext-auth-allow", "no", unset}}}},
		{name: "object allow with headers", from: "README: headers on allow",
			policy: `package envoy.authz

allow := {"allowed": true, "headers": {"x-ext-auth-allow": "yes", "x-multi": ["a", "b"]}}
`,
			want: answer{Allowed: true, Headers: []header{{"x-ext-auth-allow", "yes", unset}, {"x-multi", "a", unset}, {"x-multi", "b", unset}}}},
		{name: "headers as array of objects", from: "response.go transformAnyInputToHeadersBag",
			policy: `package envoy.authz

allow := {"allowed": true, "headers": [{"x-a": "1"}, {"x-a": "2", "x-b": "3"}]}
`,
			want: answer{Allowed: true, Headers: []header{{"x-a", "1", unset}, {"x-a", "2", unset}, {"x-b", "3", unset}}}},
		{name: "allow with every field", from: "internal.go check: OkHttpResponse fields",
			policy: `package envoy.authz

allow := {"allowed": true, "request_headers_to_remove": ["x-secret"], "response_headers_to_add": {"x-resp": "r"},
  "query_parameters_to_set": {"q": ["1", "2"]}, "query_parameters_to_remove": ["debug"], "dynamic_metadata": {"team": "payments", "n": 2}}
`,
			want: answer{Allowed: true, Remove: []string{"x-secret"}, RespAdd: []header{{"x-resp", "r", unset}},
				QuerySet: []header{{Key: "q", Value: "1"}, {Key: "q", Value: "2"}}, QueryDel: []string{"debug"},
				Metadata: map[string]any{"team": "payments", "n": float64(2)}}},
		{name: "redirect to log in", from: "response.go GetResponseHTTPStatus: any status Envoy knows",
			policy: `package envoy.authz

default allow := {"allowed": false, "http_status": 302, "headers": {"location": "https://login.example/?next=/p"}, "body": ""}
`,
			want: answer{Status: 302, Reason: "policy_denied", Headers: []header{{"location", "https://login.example/?next=/p", unset}}}},
		{name: "denial with status 200", from: "response.go GetResponseHTTPStatus",
			policy: "package envoy.authz\n\ndefault allow := {\"allowed\": false, \"http_status\": 200, \"body\": \"done\"}\n",
			want:   answer{Status: 200, Reason: "policy_denied", Body: "done"}},
		{name: "explicit empty body kept", from: "response.go GetResponseBody",
			policy: "package envoy.authz\n\ndefault allow := {\"allowed\": false, \"body\": \"\"}\n",
			want:   answer{Status: 403, Reason: "policy_denied"}},
		{name: "status Envoy does not know", from: "response.go GetResponseEnvoyHTTPStatus: StatusCode_name",
			policy: "package envoy.authz\n\ndefault allow := false\n\nallow := {\"allowed\": false, \"http_status\": 418} if input.parsed_path[0] == \"teapot\"\n",
			target: "/teapot", want: denied(403, "policy_error")},
		{name: "65 headers", from: "response.go: no bound on headers",
			policy: "package envoy.authz\n\nallow := {\"allowed\": true, \"headers\": {sprintf(\"x-h%03d\", [i]): \"v\" | some i in numbers.range(1, 65)}}\n",
			want:   answer{Allowed: true, Headers: manyHeaders(65, unset)}},
		{name: "header append action chosen by the policy", from: "agentauthz extension: header_append_action",
			policy: `package envoy.authz

allow := {"allowed": true, "header_append_action": "OVERWRITE_IF_EXISTS_OR_ADD", "headers": {"x-tenant": "acme"}}
`,
			want: answer{Allowed: true, Headers: []header{{"x-tenant", "acme", "OVERWRITE_IF_EXISTS_OR_ADD"}}}},
		{name: "policy cannot set identity headers", from: "agentauthz: identity headers are the service's",
			policy: `package envoy.authz

allow := {"allowed": true, "headers": {"x-agent-id": "admin", "x-other": "1"}}
`,
			want: answer{Allowed: true, Headers: []header{{"x-other", "1", unset}},
				Upstream: map[string]header{"x-agent-id": {"x-agent-id", "compat-bot", "OVERWRITE_IF_EXISTS_OR_ADD"}}}},
		{name: "policy metadata beside the service's", from: "internal.go: decision_id added to the policy's dynamic_metadata",
			policy: `package envoy.authz

default allow := {"allowed": false, "dynamic_metadata": {"reason": "mine", "agent_id": "x", "team": "t"}}
`,
			want: answer{Status: 403, Reason: "policy_denied", JSON: true, Metadata: map[string]any{"team": "t", "reason": "policy_denied", "agent_id": "compat-bot"}}},

		// Decision paths: internal.go stringPathToDataRef.
		{name: "decision path with slashes around", from: "internal.go stringPathToRef: empty segments skipped",
			path: "/envoy/authz/allow/", policy: "package envoy.authz\n\ndefault allow := true\n", want: answer{Allowed: true}},
		{name: "decision path with a dotted package", from: "internal_test.go: test/com.foo.envoy.ingress/allow/main",
			path:   "test/com.foo.envoy.ingress/allow/main/",
			policy: "package test[\"com.foo.envoy.ingress\"].allow\n\ndefault main := true\n", want: answer{Allowed: true}},

		// The route table reads the path as parsed_path does.
		{name: "route for a leading double slash", from: "parsed_path of //v1/payments", data: routesData, target: "//v1/payments",
			input: map[string]string{"parsed_path": `["v1","payments"]`, "operation": `"payments:read"`}},
		{name: "no route for an inner double slash", from: "agentauthz: strict route rule", data: routesData, target: "/v1//payments",
			input: map[string]string{"parsed_path": `["v1","","payments"]`}, absent: []string{"operation"}},
		{name: "no route for overlong dots", from: "agentauthz: strict route rule (#15.9)", data: routesData, target: "/v1/payments/%C0%AE%C0%AE",
			input: map[string]string{"parsed_path": `["v1","payments","\ufffd\ufffd\ufffd\ufffd"]`}, absent: []string{"operation"}},
	}
}

// multipartBody has two values for "a", a JSON part and an unnamed part
// (skipped).
const multipartBody = "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n" +
	"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n2\r\n" +
	"--XyZ\r\nContent-Disposition: form-data; name=\"meta\"\r\nContent-Type: application/json\r\n\r\n{\"k\": [1, true]}\r\n" +
	"--XyZ\r\nContent-Disposition: form-data\r\n\r\nunnamed\r\n--XyZ--\r\n"

func manyHeaders(n int, action string) []header {
	out := make([]header, n)
	for i := range out {
		out[i] = header{fmt.Sprintf("x-h%03d", i+1), "v", action}
	}
	return out
}

func TestCompat(t *testing.T) {
	e := newEnv(t)
	cs := cases()
	if len(cs) < 40 {
		t.Fatalf("%d cases; the suite promises at least 40", len(cs))
	}
	for _, c := range cs {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			policy, path, method, target := c.policy, c.path, c.method, c.target
			if policy == "" {
				policy = echoPolicy
			}
			if path == "" {
				path = "envoy/authz/allow"
			}
			if method == "" {
				method = "GET"
			}
			if target == "" {
				target = "/"
			}
			comps := e.service(t, policy, c.data, path)
			req := e.request(t, method, target, c.headers, c.body)
			if c.mutate != nil {
				c.mutate(req)
			}
			got := e.check(t, comps, req)
			if policy == echoPolicy && c.want.Status == 0 {
				checkInput(t, c, got)
				return
			}
			checkAnswer(t, c.want, got)
		})
	}
}

// checkInput compares the echoed input: c.input keys are top-level keys or
// dotted paths into attributes ("" only asks for presence).
func checkInput(t *testing.T, c compatCase, got answer) {
	t.Helper()
	if !got.Allowed {
		t.Fatalf("echo policy denied: status %d reason %s", got.Status, got.Reason)
	}
	in := echoed(t, got)
	for k, want := range c.input {
		v, ok := lookup(t, in, k)
		switch {
		case !ok:
			t.Errorf("input.%s missing", k)
		case want != "" && !sameJSON(t, v, want):
			t.Errorf("input.%s = %s, want %s", k, v, want)
		}
	}
	for _, k := range c.absent {
		if v, ok := in[k]; ok {
			t.Errorf("input.%s = %s, want absent", k, v)
		}
	}
}

func lookup(t *testing.T, in map[string]json.RawMessage, path string) (json.RawMessage, bool) {
	t.Helper()
	parts := strings.Split(path, ".")
	v, ok := in[parts[0]]
	for _, p := range parts[1:] {
		if !ok {
			return nil, false
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(v, &m); err != nil {
			return nil, false
		}
		v, ok = m[p]
	}
	return v, ok
}

func checkAnswer(t *testing.T, want, got answer) {
	t.Helper()
	if got.Allowed != want.Allowed || got.Status != want.Status {
		t.Fatalf("allowed=%v status=%d reason=%s body=%q, want allowed=%v status=%d", got.Allowed, got.Status, got.Reason, got.Body, want.Allowed, want.Status)
	}
	if want.Reason != "" && got.Reason != want.Reason {
		t.Errorf("reason %s, want %s", got.Reason, want.Reason)
	}
	if !want.Allowed {
		if want.JSON {
			// agentauthz's JSON denial body, a deliberate difference.
			var b map[string]string
			if err := json.Unmarshal([]byte(got.Body), &b); err != nil || b["reason"] != got.Reason || len(b) != 3 {
				t.Errorf("denial body %q is not agentauthz's JSON body", got.Body)
			}
			var rest []header
			for _, h := range got.Headers {
				if h != (header{"content-type", "application/json", "OVERWRITE_IF_EXISTS_OR_ADD"}) {
					rest = append(rest, h)
				}
			}
			got.Headers = rest
		} else if got.Body != want.Body {
			t.Errorf("body %q, want %q", got.Body, want.Body)
		}
	}
	if want.Headers != nil || want.Allowed || !want.JSON {
		if !reflect.DeepEqual(got.Headers, want.Headers) {
			t.Errorf("policy headers\n got %v\nwant %v", got.Headers, want.Headers)
		}
	}
	for k, h := range want.Upstream {
		if got.Upstream[k] != h {
			t.Errorf("upstream %s = %v, want %v", k, got.Upstream[k], h)
		}
	}
	if !reflect.DeepEqual(got.Remove, want.Remove) && want.Remove != nil {
		t.Errorf("headers to remove %v, want %v", got.Remove, want.Remove)
	}
	if !reflect.DeepEqual(got.RespAdd, want.RespAdd) && want.RespAdd != nil {
		t.Errorf("response headers %v, want %v", got.RespAdd, want.RespAdd)
	}
	if want.QuerySet != nil && !reflect.DeepEqual(got.QuerySet, want.QuerySet) {
		t.Errorf("query parameters to set %v, want %v", got.QuerySet, want.QuerySet)
	}
	if want.QueryDel != nil && !reflect.DeepEqual(got.QueryDel, want.QueryDel) {
		t.Errorf("query parameters to remove %v, want %v", got.QueryDel, want.QueryDel)
	}
	for k, v := range want.Metadata {
		if !reflect.DeepEqual(got.Metadata[k], v) {
			t.Errorf("dynamic_metadata.%s = %v, want %v", k, got.Metadata[k], v)
		}
	}
	if got.Metadata["decision_id"] == nil {
		t.Error("no decision_id in dynamic_metadata")
	}
}

// TestShippedPolicyReplacesOperationHeader: the shipped policy's
// x-agent-operation replaces a value the client sent (header_append_action),
// where an opa-envoy-plugin style header would be appended beside it.
func TestShippedPolicyReplacesOperationHeader(t *testing.T) {
	e := newEnv(t)
	dir := filepath.Join("..", "..", "policies")
	rego, err := os.ReadFile(filepath.Join(dir, "authz.rego"))
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "data.json"))
	if err != nil {
		t.Fatal(err)
	}
	comps := e.service(t, string(rego), string(data), "agentauthz/authz/decision")
	req := e.request(t, "GET", "/v1/payments/p-1", map[string]string{"x-agent-operation": "admin:all"}, "")
	got := e.check(t, comps, req)
	want := []header{{"x-agent-operation", "payments:read", "OVERWRITE_IF_EXISTS_OR_ADD"}}
	if !got.Allowed || !reflect.DeepEqual(got.Headers, want) {
		t.Fatalf("allowed=%v reason=%s headers %v, want %v", got.Allowed, got.Reason, got.Headers, want)
	}
}
