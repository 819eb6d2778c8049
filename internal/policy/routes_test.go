package policy

import (
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"
)

func shippedRoutes(t testing.TB) *routeTable {
	t.Helper()
	rt, err := newRouteTable([]Route{
		{"POST", "/v1/sanctions/screenings", "sanctions:screen"},
		{"GET", "/v1/payments", "payments:read"},
		{"GET", "/v1/payments/*", "payments:read"},
		{"POST", "/v1/payments", "payments:initiate"},
		{"POST", "/v1/merchants", "merchants:onboard"},
		{"POST", "/v1/loans/*/repayments", "loans:repay"},
		{"GET", "/v1/payments/stats", "payments:stats"},
		{"GET", "/", "root:read"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

func TestRouteMatch(t *testing.T) {
	rt := shippedRoutes(t)
	for _, tc := range []struct{ method, path, want string }{
		{"POST", "/v1/payments", "payments:initiate"},
		{"POST", "/v1/payments?idempotency=1", "payments:initiate"},
		{"POST", "//v1/payments", "payments:initiate"}, // parsed_path ["v1","payments"]
		{"POST", "///v1/payments?a=b", "payments:initiate"},
		{"GET", "/v1/payments/p-1", "payments:read"},
		{"GET", "/v1/payments/p%2D1", "payments:read"},  // decoded "-" is fine
		{"GET", "/v1/payments/stats", "payments:stats"}, // literal beats "*"
		{"GET", "/v1/payments", "payments:read"},
		{"POST", "/v1/loans/l-9/repayments", "loans:repay"},
		{"POST", "/v1/sanctions/screenings", "sanctions:screen"},
		{"GET", "/", "root:read"},
		{"GET", "/?x=1", "root:read"},
		// unknown or wrong method
		{"DELETE", "/v1/payments", ""},
		{"post", "/v1/payments", ""},
		{"GET", "/v1/payments/p-1/refunds", ""},
		{"POST", "/v1/loans/repayments", ""},
		{"GET", "/V1/payments", ""},
		// traversal and non-canonical forms match nothing
		{"POST", "/v1/payments/../admin", ""},
		{"POST", "/v1/admin/../payments", ""},
		{"GET", "/v1/payments/..", ""},
		{"GET", "/v1/payments/.", ""},
		{"GET", "/v1/payments/%2e%2e", ""},
		{"GET", "/v1/payments/%2E%2E", ""},
		{"GET", "/v1/payments/%2e", ""},
		{"POST", "/v1/loans/a%2Fb/repayments", ""},
		{"POST", "/v1/loans/..%2F..%2Fadmin/repayments", ""},
		{"GET", "/v1/payments/a%5Cb", ""},
		{"GET", "/v1/payments/a%00", ""},
		{"GET", "/v1/payments/%zz", ""},
		{"POST", "/v1/payments#x", ""}, // parsed_path ["v1","payments#x"]
		{"GET", "/v1/payments/p-1#frag", ""},
		{"GET", "/v1/payments/%23", ""},
		// overlong and fullwidth dots (#15.9), invalid UTF-8
		{"GET", "/v1/payments/%C0%AE%C0%AE", ""},
		{"GET", "/v1/payments/%C0%AE", ""},
		{"GET", "/v1/payments/%EF%BC%8E%EF%BC%8E", ""},
		{"GET", "/v1/payments/\uff0e\uff0e", ""},
		{"GET", "/v1/payments/%E2%80%A5", ""},
		{"GET", "/v1/payments/%E2%80%A6", ""},
		{"GET", "/v1/payments/a%FFb", ""},
		{"GET", "/v1/payments/caf%C3%A9", "payments:read"}, // valid UTF-8 is fine
		// absolute form: parsed_path ["http:","","example.com",...]
		{"POST", "http://example.com/v1/payments", ""},
		{"POST", "%2Fv1%2Fpayments", ""},
		{"POST", "/v1//payments", ""},
		{"POST", "/v1/payments/", ""},
		{"GET", "/v1/payments//", ""},
		{"POST", "v1/payments", ""},
		{"POST", "", ""},
		{"GET", "/v1/payments/" + strings.Repeat("a", maxRoutePathBytes), ""},
		{"GET", strings.Repeat("/a", maxRouteSegments+1), ""},
	} {
		if got := rt.Match(tc.method, tc.path); got != tc.want {
			t.Errorf("Match(%s %q) = %q, want %q", tc.method, tc.path, got, tc.want)
		}
	}
	var nilTable *routeTable
	if got := nilTable.Match("GET", "/"); got != "" {
		t.Errorf("nil table matched %q", got)
	}
}

func TestRouteTableRejectsBadRoutes(t *testing.T) {
	for _, r := range []Route{
		{"get", "/v1/x", "a:b"},
		{"", "/v1/x", "a:b"},
		{"GET", "v1/x", "a:b"},
		{"GET", "/v1//x", "a:b"},
		{"GET", "/v1/../x", "a:b"},
		{"GET", "/v1/x/", "a:b"},
		{"GET", "/v1/x*", "a:b"},
		{"GET", "/v1/%2e", "a:b"},
		{"GET", "/v1/x?y", "a:b"},
		{"GET", "/v1/x", ""},
	} {
		if _, err := newRouteTable([]Route{r}); err == nil {
			t.Errorf("newRouteTable(%+v) succeeded, want error", r)
		}
	}
	if _, err := newRouteTable([]Route{{"GET", "/a/*", "x:y"}, {"GET", "/a/*", "x:z"}}); err == nil {
		t.Error("conflicting duplicate route accepted")
	}
}

// FuzzRouteMatch checks the normalisation rule: whatever the path, a match
// never involves a dot segment, an empty segment or an encoded separator.
func FuzzRouteMatch(f *testing.F) {
	for _, p := range []string{"/v1/payments", "/v1/payments/p-1", "/v1/loans/x/repayments", "/v1/payments/../admin",
		"/v1/payments/%2e%2e", "//v1/payments", "/v1/loans/a%2Fb/repayments", "/?a=b", "/v1/payments/%zz",
		"/v1/payments/%C0%AE%C0%AE", "/v1/payments/%EF%BC%8E%EF%BC%8E", "/v1/payments/x#y"} {
		f.Add("GET", p)
		f.Add("POST", p)
	}
	rt := shippedRoutes(f)
	f.Fuzz(func(t *testing.T, method, path string) {
		op := rt.Match(method, path)
		if op == "" {
			return
		}
		// The segments are parsed_path's, and none is ambiguous.
		p, _, _ := strings.Cut(path, "?")
		decoded, err := url.PathUnescape(p)
		if err != nil || !strings.HasPrefix(p, "/") {
			t.Fatalf("Match(%q %q) = %q for a path parsed_path refuses", method, path, op)
		}
		if strings.TrimLeft(p, "/") == "" {
			return
		}
		raws := strings.Split(strings.TrimLeft(p, "/"), "/")
		if len(raws) != len(strings.Split(strings.TrimLeft(decoded, "/"), "/")) {
			t.Fatalf("Match(%q %q) = %q: segments differ from parsed_path", method, path, op)
		}
		for _, raw := range raws {
			seg, err := url.PathUnescape(raw)
			if err != nil || strings.Trim(seg, ". \uff0e") == "" || !utf8.ValidString(seg) || strings.ContainsAny(seg, "/\\#;%") {
				t.Fatalf("Match(%q %q) = %q through segment %q", method, path, op, raw)
			}
		}
	})
}

func BenchmarkRouteMatch(b *testing.B) {
	rt := shippedRoutes(b)
	b.ReportAllocs()
	for b.Loop() {
		if rt.Match("POST", "/v1/loans/l-9/repayments?x=1") == "" {
			b.Fatal("no match")
		}
	}
}
