package cli

import (
	"bytes"
	"context"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/agentauthz/agentauthz/internal/anomaly"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
)

// TestAnomalyReplayAndAlerts writes generated traffic with incidents into a
// real decision log, replays it with the CLI into an alerts file, and lists,
// shows and acknowledges an alert.
func TestAnomalyReplayAndAlerts(t *testing.T) {
	dir := t.TempDir()
	l, err := decisionlog.Open(decisionlog.Options{Dir: filepath.Join(dir, "log"), KeyDir: filepath.Join(dir, "keys"), Name: "replica-a", Mode: decisionlog.Async})
	if err != nil {
		t.Fatal(err)
	}
	tr := anomaly.Generate(anomaly.TrafficConfig{Seed: 3, Agents: 12, Days: 9, RateScale: 0.15, PerKind: 1})
	for _, e := range tr.Events {
		rec := &decisionlog.Record{DecisionID: e.DecisionID, Time: e.Time,
			Agent:    decisionlog.Agent{ID: e.AgentID, SPIFFEID: e.Agent, Tenant: e.Tenant, TrustLevel: "L2", CertSHA256: e.CertSHA256, Source: e.Source},
			Request:  decisionlog.Request{Method: strings.Fields(e.Route + " X")[0], Path: "/v1/x", Operation: e.Operation, Source: strings.TrimSuffix(e.Network, ".0/24") + ".7:4000"},
			Decision: decisionlog.Decision{Allowed: e.Allowed, HTTPStatus: 200, Reasons: []string{e.Reason}},
		}
		if !e.Allowed {
			rec.Decision.HTTPStatus = 403
		}
		if _, err := l.Append(context.Background(), rec); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, string, int) {
		var out, errb bytes.Buffer
		code := Run(context.Background(), args, strings.NewReader(""), &out, &errb)
		return out.String(), errb.String(), code
	}
	alerts := filepath.Join(dir, "alerts.jsonl")
	state := filepath.Join(dir, "state.json")
	out, stderr, code := run("anomaly", "replay", "--log", filepath.Join(dir, "log"), "--alerts", alerts, "--state", state)
	if code != 0 {
		t.Fatalf("replay exit %d: %s", code, stderr)
	}
	for _, rule := range []string{anomaly.RuleScopeProbing, anomaly.RuleNewNetwork, anomaly.RuleIdentityFailures} {
		if !strings.Contains(out, "  "+rule+"  ") {
			t.Errorf("replay printed no %s alert:\n%s", rule, out)
		}
	}
	if !strings.Contains(out, "baseline:") || !strings.Contains(out, "decisions: sim-") {
		t.Fatalf("alerts are not explained:\n%s", out)
	}
	list, _, code := run("alerts", "list", "--file", alerts, "--rule", anomaly.RuleScopeProbing)
	id := regexp.MustCompile(`(?m)^([0-9a-f]{12}) `).FindStringSubmatch(list)
	if code != 0 || id == nil {
		t.Fatalf("alerts list (exit %d):\n%s", code, list)
	}
	if _, stderr, code := run("alerts", "ack", id[1], "--file", alerts, "--by", "responder-1"); code == 0 || !strings.Contains(stderr, "--note is required") {
		t.Fatalf("ack without a note: exit %d %s", code, stderr)
	}
	if out, stderr, code := run("alerts", "ack", id[1], "--file", alerts, "--by", "responder-1", "--note", "expected: a test"); code != 0 || !strings.Contains(out, "acknowledged "+id[1]) {
		t.Fatalf("ack: exit %d %s %s", code, out, stderr)
	}
	if _, stderr, code := run("alerts", "ack", id[1], "--file", alerts, "--by", "responder-2", "--note", "again"); code == 0 || !strings.Contains(stderr, "was acknowledged by responder-1") {
		t.Fatalf("second ack: exit %d %s", code, stderr)
	}
	show, _, _ := run("alerts", "show", id[1], "--file", alerts)
	if !strings.Contains(show, "acknowledged by responder-1") || !strings.Contains(show, anomaly.RuleScopeProbing) {
		t.Fatalf("show:\n%s", show)
	}
	open, _, _ := run("alerts", "list", "--file", alerts, "--open")
	if strings.Contains(open, id[1]) {
		t.Fatalf("an acknowledged alert is listed as open:\n%s", open)
	}
	// A second replay with the saved state reads the same records again: the
	// decision ids were seen, so it raises nothing new.
	out, stderr, code = run("anomaly", "replay", "--log", filepath.Join(dir, "log"), "--state", state)
	if code != 0 || strings.TrimSpace(out) != "" {
		t.Fatalf("second replay with state: exit %d, printed %q (%s)", code, out, stderr)
	}
}
