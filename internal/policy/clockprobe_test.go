package policy

import (
	"context"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/identity"
)

// The probe sees the clock read exactly when an evaluation reaches
// time.now_ns (here: only for a restricted agent, whose "until" is
// compared with it), and under a probe the decision cache is bypassed so
// that every evaluation is seen.
func TestClockProbe(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"p.rego": `package agentauthz.authz

decision := {"allowed": false, "reason": "agent_quarantined"} if {
	r := data.agentauthz.restrictions[input.agent.spiffe_id]
	time.now_ns() < time.parse_rfc3339_ns(r.until)
} else := {"allowed": true}
`,
		"data.json": `{"agentauthz": {"restrictions": {"spiffe://dev.agentauthz.local/agent/held": {"until": "2026-12-01T10:00:00Z"}}}}`,
	})
	now := time.Date(2026, 12, 1, 9, 59, 59, 500_000_000, time.UTC)
	e := newTestEngine(t, Config{Dir: dir, DecisionCache: 100, Now: func() time.Time { return now }})
	free, held := agentWith(3), agentWith(3)
	held.ID, held.SPIFFEID = "held", "spiffe://dev.agentauthz.local/agent/held"
	req := sampleRequest("GET", "/v1/payments", "", "")
	var p ClockProbe
	ctx := WithClockProbe(context.Background(), &p)
	for round := range 2 { // the second round would hit the cache without the probe
		for _, tc := range []struct {
			agent     *identity.Agent
			allowed   bool
			readClock bool
		}{{free, true, false}, {held, false, true}} {
			p.Reset()
			r, err := e.Eval(ctx, req, tc.agent)
			if err != nil {
				t.Fatal(err)
			}
			if r.Allowed != tc.allowed || p.Read() != tc.readClock {
				t.Fatalf("round %d, %s: allowed %v, clock read %v; want %v, %v", round, tc.agent.ID, r.Allowed, p.Read(), tc.allowed, tc.readClock)
			}
		}
	}
	// The policy sees the start of the second, as in serving.
	if got := e.PolicyTime(now); !got.Equal(now.Truncate(time.Second)) {
		t.Fatalf("PolicyTime(%v) = %v", now, got)
	}
	if got := newTestEngine(t, Config{Dir: dir}).PolicyTime(now); !got.Equal(now) {
		t.Fatalf("PolicyTime without a decision cache = %v, want the clock itself", got)
	}
}
