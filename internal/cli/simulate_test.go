package cli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/simrun"
	"github.com/agentauthz/agentauthz/internal/simulate"
)

// runCLI runs one agentauthz command and returns its exit status and output.
func runCLI(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := Run(context.Background(), args, nil, &out, &errOut)
	return code, out.String(), errOut.String()
}

// proposedPolicies copies the repository's policy with payments needing
// trust level 4 (tighten) or no longer needing the payments scope (loosen).
func proposedPolicies(t *testing.T, loosen bool) string {
	t.Helper()
	dir := t.TempDir()
	rego, err := os.ReadFile(filepath.Join("..", "..", "policies", "authz.rego"))
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join("..", "..", "policies", "data.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]map[string]any
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	ops, _ := doc["agentauthz"]["operations"].(map[string]any)
	pay, _ := ops["payments:initiate"].(map[string]any)
	if pay == nil {
		t.Fatal("policies/data.json has no payments:initiate operation")
	}
	pay["min_trust"] = 4
	if loosen {
		pay["min_trust"], pay["scope"] = 1, "sanctions:screen"
	}
	if data, err = json.Marshal(doc); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"authz.rego": rego, "data.json": data} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestPolicySimulateFromServerAndRecorded: a replica ships its decisions to
// a real control plane; policy simulate --server replays what the control
// plane stores (role policy) and reports exactly what it reports from the
// replica's log directory; --record appends the run to the signed change
// log through the API (with the certificate's name as operator) and on the
// data directory, and the row names the report's digest. An auditor may
// not record, the policy role may not restrict; a loosening change fails
// the gate.
func TestPolicySimulateFromServerAndRecorded(t *testing.T) {
	f := startControlFleet(t, 1)
	cli(t, "operator", "issue", "ci", "--role", "policy", "--data-dir", f.cpDir, "--out-dir", f.certs)
	cli(t, "operator", "issue", "audrey", "--role", "auditor", "--data-dir", f.cpDir, "--out-dir", f.certs)
	r := f.replicas[0]
	for i := range 9 {
		f.check(t, r, []string{"payments-agent", "sanctions-screener", "payments-agent"}[i%3])
	}
	as := func(name string) []string {
		return []string{"--server", f.url, "--data-dir", f.cpDir, "--cert", filepath.Join(f.certs, name+".pem"), "--key", filepath.Join(f.certs, name+".key")}
	}
	want := localRecords(t, r.logDir)
	deadline := time.Now().Add(20 * time.Second)
	for {
		// The policy role reads the stored records.
		out := cli(t, append([]string{"audit", "query", "--json"}, as("ci")...)...)
		if strings.Count(out, "\n") == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the control plane holds %d records, the replica %d", strings.Count(out, "\n"), want)
		}
		time.Sleep(50 * time.Millisecond)
	}

	tight := proposedPolicies(t, false)
	simulateArgs := func(extra ...string) []string {
		return append([]string{"policy", "simulate", "--policies", tight, "--format", "json"}, extra...)
	}
	code, fromServer, errOut := runCLI(simulateArgs(append(as("ci"), "--record")...)...)
	if code != ExitOK {
		t.Fatalf("simulate --server --record: exit %d\n%s%s", code, fromServer, errOut)
	}
	fromLog := cli(t, simulateArgs("--log", r.logDir)...)
	if fromServer != fromLog {
		t.Fatalf("from the control plane:\n%s\nfrom the replica's log:\n%s", fromServer, fromLog)
	}
	var rep simulate.Report
	if err := json.Unmarshal([]byte(fromServer), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Read != want || len(rep.NewlyDenied) != 1 || rep.NewlyDenied[0].Agent != "payments-agent" || rep.NewlyDenied[0].Count != 6 ||
		rep.NewlyDenied[0].After != "deny 403 insufficient_trust_level" {
		t.Fatalf("report: %d read of %d, newly denied %+v", rep.Read, want, rep.NewlyDenied)
	}

	// The row, through the API, as the evidence pack reads it.
	sum := sha256.Sum256([]byte(fromServer))
	runs := simulationRuns(t, f.cpDir)
	if len(runs) != 1 {
		t.Fatalf("%d policy_simulation rows, want 1", len(runs))
	}
	if runs[0].ev.Operator != "ci (policy)" || runs[0].run.ReportSHA256 != hex.EncodeToString(sum[:]) || runs[0].run.Revision != rep.Revision ||
		runs[0].run.NewlyDenied != 6 || runs[0].run.Read != int64(want) || runs[0].run.Gate != simrun.GatePass || !runs[0].run.First.Equal(rep.First) {
		t.Fatalf("recorded %+v by %q; report %s digest %x", runs[0].run, runs[0].ev.Operator, rep.Revision, sum)
	}

	// An auditor reads but does not record; nothing is appended.
	code, _, errOut = runCLI(simulateArgs(append(as("audrey"), "--record")...)...)
	if code != ExitError || !strings.Contains(errOut, "wrong_role") {
		t.Fatalf("auditor --record: exit %d, %s", code, errOut)
	}

	// The policy role has no power over agents.
	if got := cliFails(t, append([]string{"agent", "restrict", "payments-agent", "--quarantine", "--reason", "x", "--trust-domain", f.env.TrustDomain}, as("ci")...)...); !strings.Contains(got, "(wrong_role)") {
		t.Errorf("policy role restricting: %s", got)
	}

	// On the data directory, a loosening change: the gate fails (exit 1)
	// and the failed run is recorded too, under --operator.
	code, _, errOut = runCLI("policy", "simulate", "--policies", proposedPolicies(t, true), "--log", r.logDir, "--record",
		"--data-dir", f.cpDir, "--operator", "alice")
	if code != ExitNo || !strings.Contains(errOut, "would become allowed") {
		t.Fatalf("loosened policy: exit %d, %s", code, errOut)
	}
	runs = simulationRuns(t, f.cpDir)
	if len(runs) != 2 || runs[1].ev.Operator != "alice" || runs[1].run.Gate != simrun.GateFail || runs[1].run.NewlyAllowed == 0 {
		t.Fatalf("rows after the data-directory run: %+v", runs)
	}
	cli(t, "audit", "verify", "--changelog", f.cpDir)
}

type simulationRun struct {
	ev  ca.Event
	run *simrun.Run
}

// simulationRuns reads the change log's policy_simulation rows.
func simulationRuns(t *testing.T, dataDir string) []simulationRun {
	t.Helper()
	a, err := ca.Open(dataDir, ca.MustExist())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	evs, err := a.Events("", "")
	if err != nil {
		t.Fatal(err)
	}
	var out []simulationRun
	for _, e := range evs {
		if e.Event != simrun.Event {
			continue
		}
		run, err := simrun.Parse(e.Detail)
		if err != nil {
			t.Fatalf("row %+v: %v", e, err)
		}
		out = append(out, simulationRun{e, run})
	}
	return out
}
