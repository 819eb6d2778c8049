package policy

import (
	"testing"

	"github.com/open-policy-agent/opa/v1/util"
)

// FuzzParseDecision feeds arbitrary JSON decisions (as OPA would return them)
// to the result parser: it must never panic, and a decision it accepts must
// have had a boolean "allowed" (or been a boolean).
func FuzzParseDecision(f *testing.F) {
	for _, s := range []string{
		`true`, `false`, `{"allowed": true}`, `{"allowed": false, "reason": "scope_missing", "http_status": 403}`,
		`{"allowed": true, "headers": {"a": "1", "b": ["2", "3"]}, "response_headers_to_add": [{"c": "4"}]}`,
		`{"allowed": true, "query_parameters_to_set": {"q": ["1"]}, "query_parameters_to_remove": ["x"]}`,
		`{"allowed": false, "body": "no", "dynamic_metadata": {"n": [1, 2.5, {"m": 1e3}]}}`,
		`{"allowed": "yes"}`, `3`, `null`, `{"allowed": true, "http_status": 99}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var v any
		if err := util.UnmarshalJSON(data, &v); err != nil {
			t.Skip()
		}
		r, err := parseDecision(v)
		if err != nil {
			return
		}
		switch d := v.(type) {
		case bool:
			if r.Allowed != d {
				t.Fatalf("boolean %v parsed as allowed=%v", d, r.Allowed)
			}
		case map[string]any:
			if a, ok := d["allowed"].(bool); !ok || a != r.Allowed {
				t.Fatalf("accepted %s with allowed=%v", data, r.Allowed)
			}
		default:
			t.Fatalf("accepted a %T decision", v)
		}
		if r.HTTPStatus != 0 && (r.HTTPStatus < 100 || r.HTTPStatus > 599) {
			t.Fatalf("status %d accepted", r.HTTPStatus)
		}
	})
}
