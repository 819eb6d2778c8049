package policy

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// shippedWithRestrictions writes the shipped policy with local restrictions.
func shippedWithRestrictions(t *testing.T, local map[string]any) string {
	t.Helper()
	dir := t.TempDir()
	pol, err := os.ReadFile(filepath.Join(shippedPolicies, "authz.rego"))
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(shippedPolicies, "data.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d map[string]any
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatal(err)
	}
	d["agentauthz"].(map[string]any)["restrictions"] = local
	data, _ = json.Marshal(d)
	writeFiles(t, dir, map[string]string{"authz.rego": string(pol), "data.json": string(data)})
	return dir
}

func TestSetRestrictionsReachesPolicy(t *testing.T) {
	now := time.Date(2026, 1, 15, 0, 0, 0, 0, time.UTC)
	e := newTestEngine(t, Config{Dir: shippedWithRestrictions(t, map[string]any{}), Now: func() time.Time { return now }, DecisionCache: 100})
	req := sampleRequest("POST", "/v1/payments", "", "")
	agent := agentWith(3, "payments:initiate", "payments:read")
	eval := func() *Result {
		t.Helper()
		r, err := e.Eval(context.Background(), req, agent)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := eval(); !r.Allowed {
		t.Fatalf("before: %+v", r)
	}
	base := e.Revision()
	if err := e.SetRestrictions("dev.agentauthz.local", json.RawMessage(`{"payments-bot":{"quarantined":true,"removed_scopes":[],"note":"INC-1"}}`)); err != nil {
		t.Fatal(err)
	}
	if r := eval(); r.Allowed || r.Reason != "agent_quarantined" {
		t.Fatalf("quarantined: %+v", r)
	}
	if rev := e.Revision(); !strings.HasPrefix(rev, base+"+restrictions:") {
		t.Errorf("revision %q does not name the overlay on %q", rev, base)
	}
	// Another tenant's entries do not replace this tenant's.
	if err := e.SetRestrictions("other.example", json.RawMessage(`{}`)); err != nil {
		t.Fatal(err)
	}
	if r := eval(); r.Allowed {
		t.Fatalf("other tenant cleared the quarantine: %+v", r)
	}
	if err := e.SetRestrictions("dev.agentauthz.local", json.RawMessage(`{}`)); err != nil {
		t.Fatal(err)
	}
	if r := eval(); !r.Allowed {
		t.Fatalf("lifted: %+v", r)
	}
	if e.Revision() != base {
		t.Errorf("revision %q after lift, want %q", e.Revision(), base)
	}
	for _, bad := range []string{`[1]`, `{"payments-bot":{"max_trust":"L1"}}`, `{"payments-bot":{"quarantined":"true"}}`, `{"Bad Id":{"quarantined":true}}`} {
		if err := e.SetRestrictions("dev.agentauthz.local", json.RawMessage(bad)); err == nil {
			t.Errorf("%s was accepted", bad)
		}
	}
}

func TestOverlayMergesStricterWins(t *testing.T) {
	now := time.Date(2026, 1, 15, 0, 0, 0, 0, time.UTC)
	local := map[string]any{
		"spiffe://dev.agentauthz.local/agent/payments-bot": map[string]any{"max_trust": 2, "removed_scopes": []any{"payments:read"}},
	}
	e := newTestEngine(t, Config{Dir: shippedWithRestrictions(t, local), Now: func() time.Time { return now }})
	req := sampleRequest("POST", "/v1/payments", "", "")
	agent := agentWith(3, "payments:initiate", "payments:read")
	r, err := e.Eval(context.Background(), req, agent)
	if err != nil || r.Allowed || r.Reason != "insufficient_trust_level" {
		t.Fatalf("local max_trust: %+v %v", r, err)
	}
	// A pushed max_trust above the local one does not raise it.
	if err := e.SetRestrictions("dev.agentauthz.local", json.RawMessage(`{"payments-bot":{"quarantined":false,"max_trust":3,"removed_scopes":["payments:initiate"]}}`)); err != nil {
		t.Fatal(err)
	}
	got := e.cur.Load().base.data // the base stays unmerged
	if js(got["agentauthz"].(map[string]any)["restrictions"]) != js(local) {
		t.Errorf("base data changed: %v", got["agentauthz"])
	}
	merged, _, _ := e.withOverlay(got, "r")
	entry := merged["agentauthz"].(map[string]any)["restrictions"].(map[string]any)["spiffe://dev.agentauthz.local/agent/payments-bot"]
	want := map[string]any{"quarantined": false, "max_trust": 2, "removed_scopes": []any{"payments:initiate", "payments:read"}}
	if js(entry) != js(want) {
		t.Errorf("merged entry %#v, want %#v", entry, want)
	}
	r, err = e.Eval(context.Background(), sampleRequest("GET", "/v1/payments/p1", "", ""), agent)
	if err != nil || r.Allowed {
		t.Fatalf("payments:read was removed locally: %+v %v", r, err)
	}
}

func TestMergeRestriction(t *testing.T) {
	t1, t2 := "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"
	at1, _ := time.Parse(time.RFC3339, t1)
	for _, tc := range []struct {
		name string
		a, b map[string]any
		want map[string]any
		at   time.Time
	}{
		{"quarantine wins", map[string]any{"quarantined": false}, map[string]any{"quarantined": true},
			map[string]any{"quarantined": true}, time.Time{}},
		{"quarantine kept", map[string]any{"quarantined": true}, map[string]any{"quarantined": false},
			map[string]any{"quarantined": true}, time.Time{}},
		{"lower trust", map[string]any{"max_trust": 3.0}, map[string]any{"max_trust": 1},
			map[string]any{"max_trust": 1.0}, time.Time{}},
		{"higher trust ignored", map[string]any{"max_trust": 1.0}, map[string]any{"max_trust": 3},
			map[string]any{"max_trust": 1.0}, time.Time{}},
		{"scopes union", map[string]any{"removed_scopes": []any{"b:x"}}, map[string]any{"removed_scopes": []any{"a:x", "b:x"}},
			map[string]any{"removed_scopes": []any{"a:x", "b:x"}}, time.Time{}},
		{"later until, remerge at the earlier", map[string]any{"until": t1}, map[string]any{"until": t2},
			map[string]any{"until": t2}, at1},
		{"no until wins", map[string]any{"until": t1}, map[string]any{},
			map[string]any{}, at1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, at := mergeRestriction(tc.a, tc.b)
			if !reflect.DeepEqual(got, tc.want) || !at.Equal(tc.at) {
				t.Errorf("merge(%v, %v) = %v at %v, want %v at %v", tc.a, tc.b, got, at, tc.want, tc.at)
			}
		})
	}
}

func js(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
