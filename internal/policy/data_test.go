package policy

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// shippedData returns policies/data.json with edit applied to data.agentauthz.
func shippedData(t *testing.T, edit func(root map[string]any)) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(shippedPolicies, "data.json"))
	if err != nil {
		t.Fatal(err)
	}
	d := decodeJSON(t, string(raw)).(map[string]any)
	edit(d["agentauthz"].(map[string]any))
	out, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func decodeJSON(t *testing.T, s string) any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("%s: %v", s, err)
	}
	return v
}

const payerSPIFFE = "spiffe://dev.agentauthz.local/agent/payments-bot"

// TestMalformedDataRefused: data.agentauthz that the shipped policy used to
// read as "no restriction" or "no minimum" (issue 15.5) is refused at load,
// with an error naming the value, a metric, and the previous policy and data
// serving on. Each row allowed an L3 (or L0) agent to move money before.
func TestMalformedDataRefused(t *testing.T) {
	pol, err := os.ReadFile(filepath.Join(shippedPolicies, "authz.rego"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"authz.rego": string(pol), "data.json": shippedData(t, func(map[string]any) {})})
	e := newTestEngine(t, Config{Dir: dir})
	good := e.Revision()
	restrict := func(r string) func(map[string]any) {
		return func(root map[string]any) { root["restrictions"] = decodeJSON(t, r) }
	}
	setOp := func(name, op string) func(map[string]any) {
		return func(root map[string]any) { root["operations"].(map[string]any)[name] = decodeJSON(t, op) }
	}
	for i, tc := range []struct {
		name, wantErr string
		edit          func(map[string]any)
	}{
		{"max_trust as a string", `restrictions["spiffe://dev.agentauthz.local/agent/payments-bot"].max_trust: want an integer 0..4, got string "L1"`,
			restrict(`{"` + payerSPIFFE + `": {"max_trust": "L1"}}`)},
		{"max_trust out of range", `.max_trust: want an integer 0..4, got number 5`, restrict(`{"` + payerSPIFFE + `": {"max_trust": 5}}`)},
		{"max_trust fractional", `.max_trust: want an integer 0..4`, restrict(`{"` + payerSPIFFE + `": {"max_trust": 1.5}}`)},
		{"quarantined as a string", `.quarantined: want true or false, got string "true"`, restrict(`{"` + payerSPIFFE + `": {"quarantined": "true"}}`)},
		{"removed_scopes as a string", `.removed_scopes: want an array of strings, got string "payments:initiate"`,
			restrict(`{"` + payerSPIFFE + `": {"removed_scopes": "payments:initiate"}}`)},
		{"removed_scopes with a number", `.removed_scopes[0]: want string, got number`, restrict(`{"` + payerSPIFFE + `": {"removed_scopes": [1]}}`)},
		{"unparsable until", `.until: want an RFC 3339 time, got "next tuesday"`, restrict(`{"` + payerSPIFFE + `": {"quarantined": true, "until": "next tuesday"}}`)},
		{"misspelt restriction field", `.quarantine: unknown field`, restrict(`{"` + payerSPIFFE + `": {"quarantine": true}}`)},
		{"restriction not an object", `"]: want object, got boolean`, restrict(`{"` + payerSPIFFE + `": true}`)},
		{"restrictions not an object", `data.agentauthz.restrictions: want object, got array`, restrict(`[]`)},
		{"restriction keyed by bare agent id", `restrictions["payments-bot"]: a restriction is keyed by the agent's SPIFFE ID`,
			restrict(`{"payments-bot": {"quarantined": true}}`)},
		{"misspelt min_trust", `operations["payments:initiate"].min_trust: missing`,
			setOp("payments:initiate", `{"min-trust": 3, "scope": "payments:initiate"}`)},
		{"min_trust as a string", `operations["payments:initiate"].min_trust: want an integer 0..4, got string "L3"`,
			setOp("payments:initiate", `{"min_trust": "L3", "scope": "payments:initiate"}`)},
		{"missing scope", `operations["payments:initiate"].scope: missing`, setOp("payments:initiate", `{"min_trust": 3}`)},
		{"scope not a scope", `.scope: want "<resource>:<action>", got boolean true`, setOp("payments:initiate", `{"min_trust": 3, "scope": true}`)},
		{"tenants as a string", `.tenants: want an array of strings, got string "acme.example"`,
			setOp("payments:initiate", `{"min_trust": 3, "scope": "payments:initiate", "tenants": "acme.example"}`)},
		{"operation not an object", `operations["payments:initiate"]: want object, got number`, setOp("payments:initiate", `3`)},
		{"route to an unknown operation", `routes[8].operation: "payments:refund" is not in data.agentauthz.operations`, func(root map[string]any) {
			root["routes"] = append(root["routes"].([]any), decodeJSON(t, `{"method": "POST", "path": "/v1/refunds", "operation": "payments:refund"}`))
		}},
		{"misspelt route field", `routes[8].operaton: unknown field`, func(root map[string]any) {
			root["routes"] = append(root["routes"].([]any), decodeJSON(t, `{"method": "POST", "path": "/v1/refunds", "operaton": "payments:read"}`))
		}},
		{"misspelt document", `data.agentauthz["restriction"]: unknown document`, func(root map[string]any) {
			root["restriction"] = decodeJSON(t, `{"`+payerSPIFFE+`": {"quarantined": true}}`)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			writeFiles(t, dir, map[string]string{"data.json": shippedData(t, tc.edit)})
			err := e.Reload()
			if !errors.Is(err, ErrInvalidData) || !errors.Is(err, ErrPolicyRejected) {
				t.Fatalf("Reload = %v, want ErrInvalidData", err)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %q does not say %q", err, tc.wantErr)
			}
			if e.Revision() != good {
				t.Fatalf("revision %q replaced %q", e.Revision(), good)
			}
			if got := testutil.ToFloat64(e.metrics.dataRefused); got != float64(i+1) {
				t.Fatalf("agentauthz_policy_data_refused_total = %v, want %d", got, i+1)
			}
			// The previous data keeps serving: the L3 payer still pays, an L0 agent does not.
			r, err := e.Eval(context.Background(), sampleRequest("POST", "/v1/payments", "", ""), agentWith(3, "payments:initiate"))
			if err != nil || !r.Allowed {
				t.Fatalf("previous data not serving: %+v, %v", r, err)
			}
			r, err = e.Eval(context.Background(), sampleRequest("POST", "/v1/payments", "", ""), agentWith(0, "payments:initiate"))
			if err != nil || r.Allowed || r.Reason != "insufficient_trust_level" {
				t.Fatalf("L0 agent: %+v, %v", r, err)
			}
		})
	}
}

// TestWellFormedRestrictionsLoad: every documented field, keyed by SPIFFE ID,
// loads, and the restriction applies to that agent of that tenant only.
func TestWellFormedRestrictionsLoad(t *testing.T) {
	pol, err := os.ReadFile(filepath.Join(shippedPolicies, "authz.rego"))
	if err != nil {
		t.Fatal(err)
	}
	restrictions := `{
		"spiffe://dev.agentauthz.local/agent/payments-bot": {"quarantined": false, "max_trust": 2, "removed_scopes": ["loans:repay"], "until": "2999-01-01T00:00:00Z", "note": "INC-42"},
		"spiffe://acme.example/agent/payments-bot": {"quarantined": true}
	}`
	dir := writeDir(t, map[string]string{"authz.rego": string(pol), "data.json": shippedData(t, func(root map[string]any) {
		root["restrictions"] = decodeJSON(t, restrictions)
	})})
	e := newTestEngine(t, Config{Dir: dir})
	ctx := context.Background()
	r, err := e.Eval(ctx, sampleRequest("POST", "/v1/payments", "", ""), agentWith(3, "payments:initiate"))
	if err != nil || r.Allowed || r.Reason != "insufficient_trust_level" {
		t.Fatalf("max_trust 2 not applied: %+v, %v", r, err)
	}
	r, err = e.Eval(ctx, sampleRequest("GET", "/v1/payments", "", ""), agentWith(3, "payments:read"))
	if err != nil || !r.Allowed {
		t.Fatalf("read under max_trust 2: %+v, %v", r, err)
	}
	acme := agentWith(3, "payments:read")
	acme.SPIFFEID, acme.Tenant = "spiffe://acme.example/agent/payments-bot", "acme.example"
	r, err = e.Eval(ctx, sampleRequest("GET", "/v1/payments", "", ""), acme)
	if err != nil || r.Allowed || r.Reason != "agent_quarantined" {
		t.Fatalf("acme's payments-bot: %+v, %v", r, err)
	}
	if err := ValidateRestrictions(decodeJSON(t, restrictions)); err != nil {
		t.Fatal(err)
	}
}

func TestValidateRestrictions(t *testing.T) {
	for _, ok := range []any{
		map[string]any{},
		map[string]any{payerSPIFFE: map[string]any{"max_trust": 1}},   // Go ints
		map[string]any{payerSPIFFE: map[string]any{"max_trust": 1.0}}, // encoding/json without UseNumber
		map[string]any{payerSPIFFE: map[string]any{"removed_scopes": []any{}}},
	} {
		if err := ValidateRestrictions(ok); err != nil {
			t.Errorf("ValidateRestrictions(%v) = %v", ok, err)
		}
	}
	for _, bad := range []any{
		nil,
		[]any{},
		map[string]any{payerSPIFFE: map[string]any{"max_trust": 4.5}},
		map[string]any{payerSPIFFE: map[string]any{"max_trust": -1}},
		map[string]any{payerSPIFFE: map[string]any{"note": strings.Repeat("x", maxNoteBytes+1)}},
		map[string]any{"spiffe://": map[string]any{}},
		map[string]any{"dev.agentauthz.local/payments-bot": map[string]any{}},
	} {
		if err := ValidateRestrictions(bad); !errors.Is(err, ErrInvalidData) {
			t.Errorf("ValidateRestrictions(%v) = %v, want ErrInvalidData", bad, err)
		}
	}
}
