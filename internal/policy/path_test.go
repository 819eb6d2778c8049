package policy

import (
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
)

// parsed_path and parsed_query as opa-envoy-plugin computes them
// (envoyauth/request_test.go TestParsedPathAndQuery, plus the absolute
// form, fragments and the spellings a URL parser reads as a host).
func TestParsedPathAndQuery(t *testing.T) {
	for _, tc := range []struct{ target, path, query string }{
		{"/my/test/path", `["my","test","path"]`, `{}`},
		{"/my/test/path?a=1", `["my","test","path"]`, `{"a":["1"]}`},
		{"/my/test/path?a=1&a=2", `["my","test","path"]`, `{"a":["1","2"]}`},
		{"/my/test/path?a=1&b=2", `["my","test","path"]`, `{"a":["1"],"b":["2"]}`},
		{"/my/test/path?a=1&a=new%0aline", `["my","test","path"]`, `{"a":["1","new\nline"]}`},
		{"%2Fmy%2Ftest%2Fpath?a=1&a=new%0aline", `["my","test","path"]`, `{"a":["1","new\nline"]}`},
		{"//x/people", `["x","people"]`, `{}`},
		{"//admin/dashboard", `["admin","dashboard"]`, `{}`},
		{"//api/v1/products", `["api","v1","products"]`, `{}`},
		{"//x/people?a=1", `["x","people"]`, `{"a":["1"]}`},
		{"///admin", `["admin"]`, `{}`},
		{"http://example.com/p/q", `["http:","","example.com","p","q"]`, `{}`},
		{"/p/q?a=1#frag", `["p","q"]`, `{"a":["1#frag"]}`},
		{"/p/q#frag", `["p","q#frag"]`, `{}`},
		{"/", `[""]`, `{}`},
		{"", `[""]`, `{}`},
		{"/v1/payments/", `["v1","payments",""]`, `{}`},
		{"/a%2Fb/%2e%2e", `["a","b",".."]`, `{}`},
		{"/p?a=1?b=2", `["p"]`, `{"a":["1?b=2"]}`},
		{"/p?a+b=c+d&e", `["p"]`, `{"a b":["c d"],"e":[""]}`},
	} {
		p, q, err := parsePathAndQuery(tc.target)
		if err != nil {
			t.Errorf("%q: %v", tc.target, err)
			continue
		}
		if want := ast.MustParseTerm(tc.path); !p.Equal(want) {
			t.Errorf("%q: parsed_path %v, want %v", tc.target, p, want)
		}
		if want := ast.MustParseTerm(tc.query); !q.Equal(want) {
			t.Errorf("%q: parsed_query %v, want %v", tc.target, q, want)
		}
	}
	for _, bad := range []string{"/p?a=%zz&b=1", "/p?a=1;b=2", "/p%zz", "/p?%zz=1"} {
		if _, _, err := parsePathAndQuery(bad); err == nil {
			t.Errorf("%q: parsed, want an error (opa-envoy-plugin refuses it)", bad)
		}
	}
}
