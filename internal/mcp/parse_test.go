package mcp

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/agentauthz/agentauthz/internal/testenv"
)

func sum(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

func TestParseMessages(t *testing.T) {
	args := `{"amount": 100, "currency": "EUR", "to": "DE89"}`
	for _, tc := range []struct {
		name    string
		body    string
		headers map[string]string
		want    Call
	}{
		{"tools/call", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"initiate_payment","arguments":` + args + `}}`, nil,
			Call{Messages: []Message{{Kind: Request, Method: "tools/call", ID: "7", Tool: "initiate_payment", ArgumentsSHA256: sum(args)}}}},
		{"params before method, string id, _meta", `{"params":{"_meta":{"progressToken":1},"arguments":{},"name":"get_payment"},"method":"tools/call","id":"a-1","jsonrpc":"2.0"}`, nil,
			Call{Messages: []Message{{Kind: Request, Method: "tools/call", ID: `"a-1"`, Tool: "get_payment", ArgumentsSHA256: sum(`{}`)}}}},
		{"tools/call without arguments", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_payments"}}`, nil,
			Call{Messages: []Message{{Kind: Request, Method: "tools/call", ID: "1", Tool: "list_payments"}}}},
		{"escaped names", `{"jsonrpc":"2.0","id":1,"met\u0068od":"tools\/call","params":{"name":"initiate\u005fpayment"}}`, nil,
			Call{Messages: []Message{{Kind: Request, Method: "tools/call", ID: "1", Tool: "initiate_payment"}}}},
		{"initialize with headers", `{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}`,
			map[string]string{HeaderSessionID: "s-1.A_b", HeaderProtocolVersion: "2025-06-18"},
			Call{SessionID: "s-1.A_b", ProtocolVersion: "2025-06-18", Messages: []Message{{Kind: Request, Method: "initialize", ID: "0"}}}},
		{"ping", `{"jsonrpc":"2.0","id":-3,"method":"ping"}`, nil, Call{Messages: []Message{{Kind: Request, Method: "ping", ID: "-3"}}}},
		{"notification", `{"jsonrpc":"2.0","method":"notifications/initialized"}`, nil,
			Call{Messages: []Message{{Kind: Notification, Method: "notifications/initialized"}}}},
		{"response", `{"jsonrpc":"2.0","id":"s1","result":{"roots":[]}}`, nil, Call{Messages: []Message{{Kind: Response, ID: `"s1"`}}}},
		{"error response", `{"jsonrpc":"2.0","id":4,"error":{"code":-1,"message":"no"}}`, nil, Call{Messages: []Message{{Kind: Response, ID: "4"}}}},
		{"resources/read", `{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"payments://payments/p-1"}}`, nil,
			Call{Messages: []Message{{Kind: Request, Method: "resources/read", ID: "2", URI: "payments://payments/p-1"}}}},
		{"unknown members are ignored", `{"jsonrpc":"2.0","id":1,"method":"tools/list","extra":{"method":"tools/call"}}`, nil,
			Call{Messages: []Message{{Kind: Request, Method: "tools/list", ID: "1"}}}},
		{"batch", " [ {\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"get_payment\"}} ,\n{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"} ] ",
			map[string]string{HeaderProtocolVersion: "2025-03-26"},
			Call{Batch: true, ProtocolVersion: "2025-03-26", Messages: []Message{
				{Kind: Request, Method: "tools/call", ID: "1", Tool: "get_payment"},
				{Kind: Notification, Method: "notifications/progress"},
			}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.body), tc.headers, DefaultMaxBodyBytes)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			got, _ := json.Marshal(c)
			want, _ := json.Marshal(tc.want)
			if string(got) != string(want) {
				t.Fatalf("got  %s\nwant %s", got, want)
			}
		})
	}
}

func TestParseRefuses(t *testing.T) {
	big := `{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"` + strings.Repeat("x", 100) + `"}}`
	batch := make([]string, MaxBatch+1)
	for i := range batch {
		batch[i] = `{"jsonrpc":"2.0","method":"notifications/x"}`
	}
	for _, tc := range []struct {
		name, body, want string
		headers          map[string]string
	}{
		{"empty", ``, "empty body", nil},
		{"not JSON", `{"jsonrpc":"2.0",`, "not JSON", nil},
		{"trailing garbage", `{"jsonrpc":"2.0","id":1,"method":"ping"} x`, "not JSON", nil},
		{"not UTF-8", "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"p\xffng\"}", "not UTF-8", nil},
		{"scalar", `"tools/call"`, "neither an object nor an array", nil},
		{"too large", big, "exceeds 64", nil},
		{"no jsonrpc", `{"id":1,"method":"ping"}`, `jsonrpc "2.0" missing`, nil},
		{"jsonrpc 1.0", `{"jsonrpc":"1.0","id":1,"method":"ping"}`, `jsonrpc is not "2.0"`, nil},
		{"no method", `{"jsonrpc":"2.0","id":1}`, "method missing", nil},
		{"method not a string", `{"jsonrpc":"2.0","id":1,"method":7}`, "method is not a string", nil},
		{"null id", `{"jsonrpc":"2.0","id":null,"method":"ping"}`, "id must be", nil},
		{"fractional id", `{"jsonrpc":"2.0","id":1.5,"method":"ping"}`, "id must be", nil},
		{"object id", `{"jsonrpc":"2.0","id":{},"method":"ping"}`, "id must be", nil},
		{"params an array", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["initiate_payment"]}`, "params is not an object", nil},
		{"tools/call without name", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{}}}`, "without params.name", nil},
		{"tools/call without params", `{"jsonrpc":"2.0","id":1,"method":"tools/call"}`, "without params.name", nil},
		{"tool name not a string", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":["a"]}}`, "params.name is not a string", nil},
		{"arguments an array", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":[1]}}`, "arguments is not an object", nil},
		{"resources/read without uri", `{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{}}`, "without params.uri", nil},
		// Readers disagree on duplicates and case variants: refused.
		{"duplicate method", `{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"x"}}`, `"method" appears twice`, nil},
		{"duplicate tool name", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_payment","name":"initiate_payment"}}`, `"name" appears twice`, nil},
		{"upper-case method", `{"jsonrpc":"2.0","id":1,"method":"tools/list","Method":"tools/call"}`, `case variant of "method"`, nil},
		{"escaped duplicate", `{"jsonrpc":"2.0","id":1,"method":"tools/list","\u006dethod":"tools/call"}`, `"method" appears twice`, nil},
		{"Unicode fold of params", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_payment"},"paramſ":{"name":"initiate_payment"}}`, `case variant of "params"`, nil},
		{"upper-case name", "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"a\",\"NAME\":\"b\"}}", `case variant of "name"`, nil},
		{"request with result", `{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}`, "a response has", nil},
		{"response without id", `{"jsonrpc":"2.0","result":{}}`, "a response has", nil},
		{"response with both", `{"jsonrpc":"2.0","id":1,"result":{},"error":{}}`, "a response has", nil},
		{"empty batch", `[]`, "empty batch", nil},
		{"batch of scalars", `[1]`, "not an object", nil},
		{"initialize in a batch", `[{"jsonrpc":"2.0","id":1,"method":"initialize"}]`, "initialize in a batch", nil},
		{"bad element in a batch", `[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2}]`, "batch element 1", nil},
		{"batch too long", "[" + strings.Join(batch, ",") + "]", "more than 32", nil},
		{"batch in 2025-06-18", `[{"jsonrpc":"2.0","id":1,"method":"ping"}]`, "batches ended with 2025-03-26", map[string]string{HeaderProtocolVersion: "2025-06-18"}},
		{"bad protocol version", `{"jsonrpc":"2.0","id":1,"method":"ping"}`, "not a revision date", map[string]string{HeaderProtocolVersion: "latest"}},
		{"session id with a space", `{"jsonrpc":"2.0","id":1,"method":"ping"}`, "outside visible ASCII", map[string]string{HeaderSessionID: "a b"}},
		{"empty session id", `{"jsonrpc":"2.0","id":1,"method":"ping"}`, "mcp-session-id of 0 bytes", map[string]string{HeaderSessionID: ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			max := DefaultMaxBodyBytes
			if tc.name == "too large" {
				max = 64
			}
			c, err := Parse([]byte(tc.body), tc.headers, max)
			if err == nil {
				t.Fatalf("accepted: %+v", c)
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want ErrInvalid saying %q", err, tc.want)
			}
		})
	}
}

func TestErrorBody(t *testing.T) {
	data := ErrorData{Reason: "scope_missing", DecisionID: "d-1"}
	single, _ := Parse([]byte(`{"jsonrpc":"2.0","id":"x","method":"tools/call","params":{"name":"t"}}`), nil, DefaultMaxBodyBytes)
	batch, _ := Parse([]byte(`[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/x"},{"jsonrpc":"2.0","id":2,"method":"ping"}]`), nil, DefaultMaxBodyBytes)
	notes, _ := Parse([]byte(`{"jsonrpc":"2.0","method":"notifications/x"}`), nil, DefaultMaxBodyBytes)
	for _, tc := range []struct {
		name string
		c    *Call
		want string
	}{
		{"single", single, `{"jsonrpc":"2.0","id":"x","error":{"code":403,"message":"m","data":{"reason":"scope_missing","decision_id":"d-1"}}}`},
		{"batch: one error per request", batch, `[{"jsonrpc":"2.0","id":1,"error":{"code":403,"message":"m","data":{"reason":"scope_missing","decision_id":"d-1"}}},` +
			`{"jsonrpc":"2.0","id":2,"error":{"code":403,"message":"m","data":{"reason":"scope_missing","decision_id":"d-1"}}}]`},
		{"notification", notes, `{"jsonrpc":"2.0","id":null,"error":{"code":403,"message":"m","data":{"reason":"scope_missing","decision_id":"d-1"}}}`},
		{"unreadable", nil, `{"jsonrpc":"2.0","id":null,"error":{"code":403,"message":"m","data":{"reason":"scope_missing","decision_id":"d-1"}}}`},
	} {
		if got := string(ErrorBody(tc.c, CodeForbidden, "m", data)); got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, tc.want)
		}
	}
	if got := DenialMessage("scope_missing", &single.Messages[0]); got != `agentauthz denied tool "t": scope_missing` {
		t.Errorf("DenialMessage = %q", got)
	}
}

// FuzzParse: Parse never panics, and what it accepts agrees with
// encoding/json on every member it reads (a reader of the accepted body
// sees the same method, id, tool and resource), and hashes exactly the
// arguments bytes.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"initiate_payment","arguments":{"amount":1}}}`,
		`[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/initialized"}]`,
		`{"jsonrpc":"2.0","id":"s","result":{}}`,
		`{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"payments://payments/p-1"}}`,
		`{"jsonrpc":"2.0","id":1,"met\u0068od":"tools/call","params":{"name":"a\"b"}}`,
		`{"jsonrpc":"2.0","id":1,"method":"tools/list","Method":"tools/call"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		c, err := Parse(body, nil, DefaultMaxBodyBytes)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error not ErrInvalid: %v", err)
			}
			return
		}
		var raw []json.RawMessage
		if c.Batch {
			if err := json.Unmarshal(body, &raw); err != nil {
				t.Fatalf("accepted batch does not decode: %v", err)
			}
		} else {
			raw = []json.RawMessage{body}
		}
		if len(raw) != len(c.Messages) {
			t.Fatalf("%d messages, encoding/json sees %d", len(c.Messages), len(raw))
		}
		for i, r := range raw {
			var ref struct {
				ID     json.RawMessage `json:"id"`
				Method string          `json:"method"`
				Params struct {
					Name      string          `json:"name"`
					URI       string          `json:"uri"`
					Arguments json.RawMessage `json:"arguments"`
				} `json:"params"`
			}
			if err := json.Unmarshal(r, &ref); err != nil {
				t.Fatalf("accepted message does not decode: %v", err)
			}
			m := c.Messages[i]
			if ref.Method != m.Method || string(ref.ID) != m.ID {
				t.Fatalf("method/id %q %q, encoding/json reads %q %s", m.Method, m.ID, ref.Method, ref.ID)
			}
			if m.Method == MethodToolsCall && ref.Params.Name != m.Tool || HasURI(m.Method) && ref.Params.URI != m.URI {
				t.Fatalf("tool/uri %q %q, encoding/json reads %q %q", m.Tool, m.URI, ref.Params.Name, ref.Params.URI)
			}
			if m.Method == MethodToolsCall && len(ref.Params.Arguments) > 0 && sum(string(ref.Params.Arguments)) != m.ArgumentsSHA256 {
				t.Fatalf("arguments digest differs from the raw arguments'")
			}
		}
	})
}

func BenchmarkParse2KB(b *testing.B) {
	body := []byte(`{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"initiate_payment","arguments":{"amount":125000,"currency":"EUR","creditor":{"name":"ACME GmbH","iban":"DE89370400440532013000"},"memo":"` +
		strings.Repeat("invoice 2026-0042 ", 100) + `"}}}`)
	headers := map[string]string{HeaderSessionID: "3f1c2a", HeaderProtocolVersion: "2025-06-18", "content-type": "application/json"}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	cpu := testenv.CPUTime()
	for b.Loop() {
		if _, err := Parse(body, headers, DefaultMaxBodyBytes); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(testenv.CPUTime()-cpu)/float64(b.N), "cpu-ns/op")
}

// FuzzValidJSON: validJSON agrees with json.Valid, except that it refuses
// nesting deeper than maxDepth.
func FuzzValidJSON(f *testing.F) {
	for _, s := range []string{`{}`, `[]`, `{"a":[1,-0.5e+3,"\u00e9\n",true,false,null]}`, `01`, `1.`, `"\x01"`, `{"a" 1}`, `[1,]`, `"\ud800"`, ` 7 `, `-`, `1e`, `{"a":1}}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, want := validJSON(b), json.Valid(b)
		if got != want && !(want && strings.Count(string(b), "[")+strings.Count(string(b), "{") > maxDepth) {
			t.Fatalf("validJSON(%q) = %v, json.Valid = %v", b, got, want)
		}
	})
}
