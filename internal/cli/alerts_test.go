package cli

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/checkreq"
)

// probe sends the three requests of a scope-probing burst as payments-agent
// (three operations it has no scope for) to the replica.
func (f *controlFleet) probe(t *testing.T, r *replica) {
	t.Helper()
	var pemData []byte
	var err error
	for _, a := range f.env.Agents {
		if a.ID == "payments-agent" {
			pemData, err = os.ReadFile(a.CertPath)
		}
	}
	if err != nil || pemData == nil {
		t.Fatalf("payments-agent's certificate: %v", err)
	}
	for _, path := range []string{"/v1/sanctions/screenings", "/v1/merchants", "/v1/loans/7/repayments"} {
		req, err := checkreq.Build(checkreq.Request{Method: "POST", Path: path, CertPEM: pemData, Via: checkreq.ViaPeer})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := r.client.Check(ctx, req)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(resp.GetDeniedResponse().GetBody(), "scope_missing") {
			t.Fatalf("probe %s: %v", path, resp)
		}
	}
}

// serverArgs are the --server flags for an operator certificate of the fleet.
func (f *controlFleet) serverArgs(name string) []string {
	return []string{"--server", f.url, "--cert", filepath.Join(f.certs, name+".pem"), "--key", filepath.Join(f.certs, name+".key"),
		"--server-ca", filepath.Join(f.cpDir, "operator", "ca.pem")}
}

// awaitAlert polls alerts list --server until an alert of rule is listed
// and returns its id.
func (f *controlFleet) awaitAlert(t *testing.T, rule string, start time.Time) string {
	t.Helper()
	for {
		out := cli(t, append([]string{"alerts", "list", "--rule", rule}, f.serverArgs("audrey")...)...)
		for _, line := range strings.Split(out, "\n")[1:] {
			if fields := strings.Fields(line); len(fields) > 2 && fields[2] == rule {
				t.Logf("%s alert listed %v after the burst", rule, time.Since(start).Round(time.Millisecond))
				return fields[0]
			}
		}
		if time.Since(start) > 30*time.Second {
			t.Fatalf("no %s alert 30 s after the burst:\n%s", rule, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAnomalyAutoQuarantine: a scope-probing burst shipped by a replica
// raises an alert in the control plane whose rule responds auto: the agent's
// next Check on the replica is denied agent_quarantined within seconds; the
// alert, its response and the responder's review are in the change log.
func TestAnomalyAutoQuarantine(t *testing.T) {
	f := startFleet(t, 1, 1, "", "--respond", "scope_probing=auto:quarantine:30m")
	r := f.replicas[0]
	for _, c := range [][2]string{{"audrey", "auditor"}, {"alice", "responder"}} {
		cli(t, "operator", "issue", c[0], "--role", c[1], "--data-dir", f.cpDir, "--out-dir", f.certs)
	}
	if got := f.check(t, r, "payments-agent"); got != "allowed" {
		t.Fatalf("before the burst: %s", got)
	}
	start := time.Now()
	f.probe(t, r)
	took := f.awaitAll(t, "payments-agent", "agent_quarantined", start)
	t.Logf("quarantined on the replica %v after the burst", took.Round(time.Millisecond))
	id := f.awaitAlert(t, "scope_probing", start)

	out := cli(t, append([]string{"alerts", "show", id}, f.serverArgs("audrey")...)...)
	for _, want := range []string{"scope_probing", "baseline:", "observed:", "decisions:", "response:  auto applied: quarantine for 30m0s"} {
		if !strings.Contains(out, want) {
			t.Errorf("alerts show lacks %q:\n%s", want, out)
		}
	}
	// An auditor reads but may not decide.
	if e := cliFails(t, append([]string{"alerts", "approve", id, "--reason", "ok"}, f.serverArgs("audrey")...)...); !strings.Contains(e, "wrong_role") {
		t.Errorf("auditor approve: %s", e)
	}
	out = cli(t, append([]string{"alerts", "approve", id, "--reason", "probing confirmed, keep it"}, f.serverArgs("alice")...)...)
	if !strings.Contains(out, "auto reviewed") {
		t.Errorf("approve: %s", out)
	}
	if got := f.check(t, r, "payments-agent"); got != "agent_quarantined" {
		t.Errorf("after the review: %s", got)
	}
	cli(t, append([]string{"alerts", "ack", id, "--note", "INC-9 opened"}, f.serverArgs("alice")...)...)
	if out := cli(t, append([]string{"alerts", "list", "--open"}, f.serverArgs("audrey")...)...); strings.Contains(out, id) {
		t.Errorf("reviewed alert still open:\n%s", out)
	}
	out = cli(t, "agent", "show", "payments-agent", "--data-dir", f.cpDir)
	for _, want := range []string{"alert ", "alert_applied", "restrict", "alert_approve", "alice (responder)", "alert_ack", id} {
		if !strings.Contains(out, want) {
			t.Errorf("agent show lacks %q:\n%s", want, out)
		}
	}
	var v struct{ Problem any }
	if err := json.Unmarshal([]byte(cli(t, "audit", "verify", "--changelog", f.cpDir, "--json")), &v); err != nil || v.Problem != nil {
		t.Errorf("change log: %v %v", v.Problem, err)
	}
}

// TestAnomalyProposeWaitsForApproval: with propose, the alert changes
// nothing on the replica until a responder approves it; then the agent is
// quarantined.
func TestAnomalyProposeWaitsForApproval(t *testing.T) {
	f := startFleet(t, 1, 1, "", "--respond", "scope_probing=propose:quarantine:30m")
	r := f.replicas[0]
	for _, c := range [][2]string{{"audrey", "auditor"}, {"alice", "responder"}} {
		cli(t, "operator", "issue", c[0], "--role", c[1], "--data-dir", f.cpDir, "--out-dir", f.certs)
	}
	start := time.Now()
	f.probe(t, r)
	id := f.awaitAlert(t, "scope_probing", start)
	// Longer than a restriction takes to reach the replica (docs/control-plane.md).
	time.Sleep(time.Second)
	if got := f.check(t, r, "payments-agent"); got != "allowed" {
		t.Fatalf("a proposal changed the replica's answer: %s", got)
	}
	if out := cli(t, append([]string{"alerts", "list", "--open"}, f.serverArgs("audrey")...)...); !strings.Contains(out, "propose pending") {
		t.Errorf("the proposal is not listed as open:\n%s", out)
	}
	approved := time.Now()
	cli(t, append([]string{"alerts", "approve", id, "--reason", "owner confirms the agent is compromised"}, f.serverArgs("alice")...)...)
	took := f.awaitAll(t, "payments-agent", "agent_quarantined", approved)
	t.Logf("quarantined on the replica %v after the approval", took.Round(time.Millisecond))
	if e := cliFails(t, append([]string{"alerts", "dismiss", id, "--reason", "too late"}, f.serverArgs("alice")...)...); !strings.Contains(e, "already decided") {
		t.Errorf("dismiss after approve: %s", e)
	}
}
