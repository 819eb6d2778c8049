package demo

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
)

const policies = "../../policies"

// want is the decision a request must get, written out here rather than
// taken from the scenario so that the test checks the scenario too.
type want struct {
	agent, method, path string
	allowed             bool
	reason              string // "revoked" accepts agent_revoked or certificate_revoked
}

func TestRun(t *testing.T) {
	dir := t.TempDir()
	var text strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := Run(ctx, &text, Options{DataDir: dir, PoliciesDir: policies})
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, text.String())
	}
	if len(out.Unexpected) != 0 || !out.Kept || out.DataDir != dir {
		t.Errorf("unexpected=%v kept=%v dir=%q", out.Unexpected, out.Kept, out.DataDir)
	}
	// A signed response verifies with the replica's published keys, and a
	// tampered copy does not.
	if r := out.Response; r == nil || !r.Verified || r.Agent != "payments-agent" || r.TrustLevel != "L3" ||
		!strings.Contains(r.TamperError, "content-digest") || !strings.Contains(text.String(), "3b. The API's answer, signed") {
		t.Errorf("signed response: %+v", out.Response)
	}

	checkDecisions(t, "scenario", out.Decisions, []want{
		{"sanctions-screener", "POST", "/v1/sanctions/screenings", true, "allowed"},
		{"sanctions-screener", "POST", "/v1/payments", false, "insufficient_trust_level"},
		{"payments-agent", "POST", "/v1/payments", true, "allowed"},
		{"payments-agent", "GET", "/v1/payments/pay_7Hq2", true, "allowed"},
		{"merchant-onboarder", "POST", "/v1/merchants", true, "allowed"},
		{"merchant-onboarder", "POST", "/v1/payments", false, "insufficient_trust_level"},
		{"loan-servicer", "POST", "/v1/loans/ln_4821/repayments", true, "allowed"},
		{"loan-servicer", "POST", "/v1/payments", false, "scope_missing"},
		{"rogue-agent", "GET", "/v1/payments", true, "allowed"},
		{"rogue-agent", "POST", "/v1/payments", false, "insufficient_trust_level"},
		{"rogue-agent", "POST", "/v1/sanctions/screenings", false, "scope_missing"},
		{"rogue-agent", "POST", "/v1/payments", false, "insufficient_trust_level"},
	})
	checkDecisions(t, "after revocation", out.After, []want{
		{"rogue-agent", "GET", "/v1/payments", false, "revoked"},
		{"rogue-agent", "GET", "/v1/payments", false, "revoked"},
		{"payments-agent", "POST", "/v1/payments", true, "allowed"},
		{"sanctions-screener", "POST", "/v1/sanctions/screenings", true, "allowed"},
		{"merchant-onboarder", "POST", "/v1/merchants", true, "allowed"},
		{"loan-servicer", "POST", "/v1/loans/ln_4821/repayments", true, "allowed"},
	})
	// Both identity paths were exercised, on both replicas, and the forged
	// XFCC element did not change who was decided for.
	vias, replicas := map[string]bool{}, map[string]bool{}
	for _, d := range out.Decisions {
		vias[d.Via], replicas[d.Replica] = true, true
		if d.AgentSeen != d.Agent {
			t.Errorf("%s %s: decided for %q", d.Agent, d.Path, d.AgentSeen)
		}
	}
	if !vias["peer"] || !vias["xfcc"] || len(replicas) != DefaultReplicas {
		t.Errorf("vias %v, replicas %v", vias, replicas)
	}

	// The revocation took effect on every replica.
	rev := out.Revocation
	if rev == nil || rev.RevokedAt.IsZero() || len(rev.Serials) != 1 || len(rev.Replicas) != DefaultReplicas {
		t.Fatalf("revocation = %+v", rev)
	}
	for _, f := range rev.Replicas {
		if f.DecisionID == "" || !revokedReason(f.Reason) || f.After <= 0 {
			t.Errorf("first deny on %s = %+v", f.Replica, f)
		}
	}

	// audit verify passed on every log, and each log holds every decision
	// its replica made.
	perReplica := map[string]uint64{}
	for _, d := range append(append([]Decision{}, out.Decisions...), out.After...) {
		perReplica[d.Replica]++
	}
	for _, f := range rev.Replicas {
		perReplica[f.Replica] += uint64(f.AllowedBefore) + 1
	}
	if out.Response != nil {
		perReplica[out.Response.Replica]++ // the signed response's record
	}
	// The MCP act ran on the first replica: a decision per HTTP request,
	// and a signed-response record per allowed one.
	perReplica[out.Replicas[0].Name] += uint64(out.MCP.Decided + out.MCP.Allowed)
	if len(out.Verify) != DefaultReplicas {
		t.Fatalf("verify = %+v", out.Verify)
	}
	for _, v := range out.Verify {
		if !v.Intact || v.Problem != "" || v.Records != perReplica[v.Replica] || len(v.KeyIDs) != 1 {
			t.Errorf("verify %s = %+v, want %d records intact", v.Replica, v, perReplica[v.Replica])
		}
		// Independently of the demo: the log verifies with the key on disk.
		keys, err := decisionlog.LoadKeySet(filepath.Join(dir, "replicas", v.Replica, "keys"))
		if err != nil {
			t.Fatal(err)
		}
		res, err := decisionlog.Verify(v.LogDir, keys)
		if err != nil || res.Problem != nil {
			t.Errorf("%s: verify with on-disk keys: %v %+v", v.Replica, err, res)
		}
	}

	checkAnswers(t, out)

	// The MCP act: the payments agent is shown and calls initiate_payment;
	// the rogue agent is shown the read tools only and refused the call
	// with a JSON-RPC error naming the decision.
	m := out.MCP
	if m == nil || !slices.Equal(m.PaymentsTools, []string{"get_payment", "initiate_payment", "list_payments"}) ||
		!slices.Equal(m.RogueTools, []string{"get_payment", "list_payments"}) || m.Initiated != 1 ||
		m.RogueRefusal == nil || m.RogueRefusal.Code != 403 || m.RogueRefusal.Reason != "insufficient_trust_level" ||
		m.RogueRefusal.DecisionID == "" || !strings.Contains(m.PaymentsResult, "initiated") || m.Decided <= m.Allowed {
		t.Errorf("MCP act = %+v (refusal %+v)", m, m.RogueRefusal)
	}

	for _, heading := range []string{"1. A CA", "2. Decision service", "3. Agents at work", "3c. MCP", "4. Revoking rogue-agent",
		"5. audit verify", "Q1.", "Q2.", "Q3.", "Q4.", "DECISION ID"} {
		if !strings.Contains(text.String(), heading) {
			t.Errorf("output lacks %q", heading)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "demo", "agents", "payments-agent.pem")); err != nil {
		t.Errorf("agent certificate not kept: %v", err)
	}
}

func checkDecisions(t *testing.T, what string, got []Decision, wants []want) {
	t.Helper()
	if len(got) != len(wants) {
		t.Fatalf("%s: %d decisions, want %d", what, len(got), len(wants))
	}
	for i, w := range wants {
		d := got[i]
		reasonOK := d.Reason == w.reason || (w.reason == "revoked" && revokedReason(d.Reason))
		if d.Agent != w.agent || d.Method != w.method || d.Path != w.path || d.Allowed != w.allowed || !reasonOK || !d.Expected {
			t.Errorf("%s %d: got %s %s %s allowed=%v %s (expected=%v), want %+v", what, i, d.Agent, d.Method, d.Path, d.Allowed, d.Reason, d.Expected, w)
		}
		if d.DecisionID == "" {
			t.Errorf("%s %d: no decision id", what, i)
		}
		if d.Allowed != (d.Receipt != "") {
			t.Errorf("%s %d: allowed=%v but receipt %q", what, i, d.Allowed, d.Receipt)
		}
		wantStatus := 200
		if !w.allowed {
			wantStatus = 403
			if w.reason == "revoked" {
				wantStatus = 401
			}
		}
		if d.Status != wantStatus {
			t.Errorf("%s %d: status %d, want %d", what, i, d.Status, wantStatus)
		}
	}
}

func revokedReason(r string) bool { return r == "agent_revoked" || r == "certificate_revoked" }

func checkAnswers(t *testing.T, out *Outcome) {
	t.Helper()
	a := out.Answers
	payment := out.Decisions[paymentStep]

	w := a.WhoInitiated
	if w == nil {
		t.Fatal("question 1 unanswered")
	}
	if w.DecisionID != payment.DecisionID || w.Log != payment.Replica || w.Agent.ID != "payments-agent" ||
		w.Agent.SPIFFEID != "spiffe://acme.example/agent/payments-agent" || w.Agent.TrustLevel != "L3" ||
		w.Agent.Owner != "payments-team" || strings.Join(w.Agent.Scopes, ",") != "payments:initiate,payments:read" ||
		w.Decision.PolicyRevision == "" || !w.Decision.Allowed || w.Request.Operation != "payments:initiate" || w.Time.IsZero() {
		t.Errorf("question 1 = %+v", w)
	}

	tm := a.NotTampered
	if tm == nil {
		t.Fatal("question 2 unanswered")
	}
	if !tm.ReceiptVerified || !tm.ReceiptInLog || !tm.LogIntact || !tm.TamperedRejected ||
		tm.KeyID == "" || tm.Index != w.Index || tm.ReceiptBytes > 600 || tm.CheckpointSize <= tm.Index {
		t.Errorf("question 2 = %+v", tm)
	}
	// The receipt really is what the log's published key signed.
	ks, err := decisionlog.ParseKeySet(mustReadJWKS(t, out, payment.Replica))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := decisionlog.VerifyReceipt(payment.Receipt, ks); err != nil {
		t.Errorf("receipt does not verify: %v", err)
	}

	lp := a.LeastPrivilege
	if lp == nil {
		t.Fatal("question 3 unanswered")
	}
	byReason := map[string]int{}
	for _, rc := range lp.ByReason {
		byReason[rc.Reason] = rc.Count
	}
	revoked := byReason["agent_revoked"] + byReason["certificate_revoked"]
	// 4 REST requests and the rogue agent's MCP initiate_payment.
	if byReason["insufficient_trust_level"] != 5 || byReason["scope_missing"] != 2 || revoked != 2+DefaultReplicas {
		t.Errorf("question 3 denials = %v", byReason)
	}
	if lp.Denied != 7+revoked || lp.Allowed == 0 {
		t.Errorf("question 3 = %+v", lp)
	}

	r := a.Revocation
	if r == nil {
		t.Fatal("question 4 unanswered")
	}
	if r.Agent != RogueAgent || !r.RevokedAt.Equal(out.Revocation.RevokedAt) || r.Reason != "keyCompromise" ||
		len(r.FirstDenied) != DefaultReplicas || r.DeniedAfter != 2+DefaultReplicas {
		t.Errorf("question 4 = %+v", r)
	}
	firstIDs := map[string]bool{}
	for _, f := range out.Revocation.Replicas {
		firstIDs[f.DecisionID] = true
	}
	for _, f := range r.FirstDenied {
		if !firstIDs[f.DecisionID] || f.Time.Before(r.RevokedAt) || !revokedReason(f.Reason) {
			t.Errorf("first denial in the log %+v is not the one the probe saw (%v)", f, firstIDs)
		}
	}
	for _, ag := range []string{"sanctions-screener", "payments-agent", "merchant-onboarder", "loan-servicer"} {
		if r.OthersAllowedAfter[ag] != 1 {
			t.Errorf("question 4: %s allowed %d times after the revocation, want 1", ag, r.OthersAllowedAfter[ag])
		}
	}
	if _, ok := r.OthersAllowedAfter[RogueAgent]; ok {
		t.Error("question 4 counts the revoked agent among the others")
	}
}

func mustReadJWKS(t *testing.T, out *Outcome, replica string) []byte {
	t.Helper()
	for _, r := range out.Replicas {
		if r.Name == replica {
			ks, err := decisionlog.LoadKeySet(r.KeyDir)
			if err != nil {
				t.Fatal(err)
			}
			return []byte(ks.PEM())
		}
	}
	t.Fatalf("no replica %s", replica)
	return nil
}

// TestRunTemporary runs with one replica in a temporary directory, which is
// removed at the end.
func TestRunTemporary(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	var text strings.Builder
	out, err := Run(context.Background(), &text, Options{PoliciesDir: policies, Replicas: 1})
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, text.String())
	}
	if out.Kept || len(out.Verify) != 1 || !out.Verify[0].Intact || len(out.Revocation.Replicas) != 1 {
		t.Errorf("outcome = %+v", out)
	}
	if _, err := os.Stat(out.DataDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary data dir %s not removed: %v", out.DataDir, err)
	}
}

func TestRunRefusals(t *testing.T) {
	if _, err := Run(context.Background(), &strings.Builder{}, Options{PoliciesDir: t.TempDir()}); !errors.Is(err, ErrNoPolicies) {
		t.Errorf("empty policies dir: %v, want ErrNoPolicies", err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "inventory.db"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Run(context.Background(), &strings.Builder{}, Options{DataDir: dir, PoliciesDir: policies}); !errors.Is(err, ErrDataDirInUse) {
		t.Errorf("used data dir: %v, want ErrDataDirInUse", err)
	}
	if _, err := Run(context.Background(), &strings.Builder{}, Options{PoliciesDir: policies, Replicas: 9}); err == nil {
		t.Error("9 replicas accepted")
	}
}
