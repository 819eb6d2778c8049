package mcp

import (
	"errors"
	"strings"
	"testing"
)

func TestFilterToolsList(t *testing.T) {
	list := `{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"get_payment","description":"read"},{"name":"initiate_payment","description":"pay"}],"nextCursor":"c"}}`
	allowed := []string{"get_payment"}
	split := strings.Index(list, `{"tools"`)
	for _, tc := range []struct {
		name, ctype, body string
		changed           bool
		want              []string // substrings of the output
		not               []string
	}{
		{"json", "application/json", list, true, []string{`"get_payment"`, `"nextCursor":"c"`}, []string{"initiate_payment"}},
		{"batch", "application/json; charset=utf-8", "[" + list + `,{"jsonrpc":"2.0","id":2,"result":{}}]`, true, []string{`"get_payment"`, `"id":2`}, []string{"initiate_payment"}},
		{"sse, data over two lines", "text/event-stream", "id: 7\nevent: message\ndata: " + list[:split] + "\ndata: " + list[split:] + "\n\n", true,
			[]string{"id: 7\nevent: message\ndata: {", `"get_payment"`}, []string{"initiate_payment"}},
		{"sse with CRLF and a ping", "text/event-stream", ": keep-alive\r\n\r\ndata: " + list + "\r\n\r\n", true, []string{": keep-alive", `"get_payment"`}, []string{"initiate_payment"}},
		{"nothing to remove", "application/json", `{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"get_payment"}]}}`, false, []string{"get_payment"}, nil},
		{"not a tools answer", "application/json", `{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"initiate_payment"}]}}`, false, []string{"initiate_payment"}, nil},
		{"an error answer", "application/json", `{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"x"}}`, false, nil, nil},
		{"tool without a name is dropped", "application/json", `{"jsonrpc":"2.0","id":1,"result":{"tools":[{"title":"initiate_payment"}]}}`, true, []string{`"tools":[]`}, []string{"initiate_payment"}},
		{"empty", "application/json", "", false, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, changed, err := FilterToolsList([]byte(tc.body), tc.ctype, allowed)
			if err != nil {
				t.Fatal(err)
			}
			if changed != tc.changed {
				t.Fatalf("changed = %v: %s", changed, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("output lacks %q: %s", w, out)
				}
			}
			for _, n := range tc.not {
				if strings.Contains(string(out), n) {
					t.Errorf("output still has %q: %s", n, out)
				}
			}
		})
	}
	for _, bad := range []struct{ ctype, body string }{
		{"application/json", `{"jsonrpc":"2.0","result":{"tools":[`},
		{"application/json", `{"a":1} {"b":2}`},
		{"text/event-stream", "data: {\"tools\"\n\n"},
	} {
		if _, _, err := FilterToolsList([]byte(bad.body), bad.ctype, allowed); !errors.Is(err, ErrUnfilterable) {
			t.Errorf("%q: err %v, want ErrUnfilterable", bad.body, err)
		}
	}
	if _, err := ParseToolsHeader(`["a","b"]`); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{`a,b`, `null`, `[1]`, `{}`} {
		if _, err := ParseToolsHeader(bad); err == nil {
			t.Errorf("ParseToolsHeader(%q) accepted", bad)
		}
	}
}
