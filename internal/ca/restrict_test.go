package ca

import (
	"encoding/json"
	"errors"
	"testing"
	"time"
)

func TestRestrictValidation(t *testing.T) { eachBackend(t, testRestrictValidation) }

func testRestrictValidation(t *testing.T, be backend) {
	a, clk := newTestAuthorityOn(t, be)
	if _, err := a.Issue(issueReq("bot")); err != nil {
		t.Fatal(err)
	}
	gen0, _ := a.RevocationGeneration()
	two, five := 2, 5
	past := clk.t.Add(-time.Minute)
	for _, tc := range []struct {
		name string
		req  RestrictRequest
		want error
	}{
		{"unknown agent", RestrictRequest{AgentID: "ghost", Quarantine: true}, ErrNotFound},
		{"no reason", RestrictRequest{AgentID: "bot", Quarantine: true, Reason: " "}, ErrInvalid},
		{"nothing to restrict", RestrictRequest{AgentID: "bot"}, ErrInvalid},
		{"until in the past", RestrictRequest{AgentID: "bot", Quarantine: true, Until: &past}, ErrInvalid},
		{"max trust above the certificate's", RestrictRequest{AgentID: "bot", MaxTrust: &five}, ErrInvalid},
		{"scope not held", RestrictRequest{AgentID: "bot", RemoveScopes: []string{"admin:delete"}}, ErrInvalid},
		{"reason with a control character", RestrictRequest{AgentID: "bot", Quarantine: true, Reason: "a\x1b[2Jb"}, ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.TrustDomain, tc.req.Operator = td, "alice"
			if tc.req.Reason == "" {
				tc.req.Reason = "INC-7"
			}
			if _, err := a.Restrict(tc.req); !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
	if gen, _ := a.RevocationGeneration(); gen != gen0 {
		t.Errorf("refused restrictions changed the generation: %d → %d", gen0, gen)
	}
	// A valid one is stored, replaces the previous, reaches the push JSON
	// and the events, and bumps the generation.
	until := clk.t.Add(2 * time.Hour)
	if _, err := a.Restrict(RestrictRequest{TrustDomain: td, AgentID: "bot", MaxTrust: &two, RemoveScopes: []string{"payments:initiate"},
		Until: &until, Reason: "INC-7", Operator: "alice"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Restrict(RestrictRequest{TrustDomain: td, AgentID: "bot", Quarantine: true, Reason: "INC-7 worse", Operator: "bob"}); err != nil {
		t.Fatal(err)
	}
	js, err := a.PushRestrictions(td)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]map[string]any
	if err := json.Unmarshal(js, &m); err != nil {
		t.Fatal(err)
	}
	if e := m["bot"]; e["quarantined"] != true || e["max_trust"] != nil || len(m) != 1 {
		t.Errorf("push restrictions %s", js)
	}
	if gen, _ := a.RevocationGeneration(); gen != gen0+2 {
		t.Errorf("generation %d, want %d", gen, gen0+2)
	}
	if err := a.Lift(td, "bot", "INC-7 closed", "carol"); err != nil {
		t.Fatal(err)
	}
	if err := a.Lift(td, "bot", "again", "carol"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second lift: %v", err)
	}
	d, err := a.Show(td, "bot")
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, e := range d.Events {
		kinds = append(kinds, e.Event+"/"+e.Operator)
	}
	if d.Restriction != nil || len(kinds) < 4 || kinds[len(kinds)-3] != "restrict/alice" || kinds[len(kinds)-1] != "lift/carol" {
		t.Errorf("history %v, restriction %+v", kinds, d.Restriction)
	}
	// An expired restriction is not pushed.
	soon := clk.t.Add(time.Minute)
	if _, err := a.Restrict(RestrictRequest{TrustDomain: td, AgentID: "bot", Quarantine: true, Until: &soon, Reason: "brief", Operator: "alice"}); err != nil {
		t.Fatal(err)
	}
	clk.t = clk.t.Add(2 * time.Minute)
	if js, _ := a.PushRestrictions(td); string(js) != "{}" {
		t.Errorf("expired restriction pushed: %s", js)
	}
}

func TestParseUntil(t *testing.T) {
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	if u, err := ParseUntil("2h", now); err != nil || !u.Equal(now.Add(2*time.Hour)) {
		t.Errorf("2h: %v %v", u, err)
	}
	if u, err := ParseUntil("2026-11-02T00:00:00Z", now); err != nil || u.Day() != 2 {
		t.Errorf("rfc3339: %v %v", u, err)
	}
	for _, bad := range []string{"-1h", "0s", "2026-10-01T00:00:00Z", "tomorrow", ""} {
		if _, err := ParseUntil(bad, now); !errors.Is(err, ErrInvalid) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}
