package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/evidence"
)

// TestAuditReportFromServer: two replicas ship their records to a real
// control plane; an agent is revoked there. The evidence pack built from the
// control plane (--server, an auditor certificate) states the same figures
// as the one built from the replicas' log directories and the control
// plane's data directory.
func TestAuditReportFromServer(t *testing.T) {
	f := startControlFleet(t, 2)
	cli(t, "operator", "issue", "audrey", "--role", "auditor", "--data-dir", f.cpDir, "--out-dir", f.certs)
	checks := 0
	check := func(r *replica, agent string) string {
		checks++
		return f.check(t, r, agent)
	}
	for i := range 12 {
		check(f.replicas[i%2], []string{"payments-agent", "sanctions-screener"}[i/2%2])
	}
	cli(t, "agent", "revoke", "payments-agent", "--reason", "keyCompromise", "--data-dir", f.cpDir)
	for i, r := range f.replicas {
		deadline := time.Now().Add(20 * time.Second)
		for check(r, "payments-agent") == "allowed" {
			if time.Now().After(deadline) {
				t.Fatalf("replica %d still allows the revoked agent", i)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	for i := range 6 {
		check(f.replicas[i%2], []string{"payments-agent", "sanctions-screener"}[i/2%2])
	}
	server := []string{"--server", f.url, "--data-dir", f.cpDir, "--cert", filepath.Join(f.certs, "audrey.pem"), "--key", filepath.Join(f.certs, "audrey.key")}
	want := localRecords(t, f.replicas[0].logDir) + localRecords(t, f.replicas[1].logDir)
	deadline := time.Now().Add(20 * time.Second)
	for {
		out := cli(t, append([]string{"audit", "query", "--json"}, server...)...)
		if strings.Count(out, "\n") == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the control plane holds %d records, the replicas %d", strings.Count(out, "\n"), want)
		}
		time.Sleep(50 * time.Millisecond)
	}
	dir := t.TempDir()
	report := func(name string, args ...string) evidence.Report {
		out := filepath.Join(dir, name)
		cli(t, append([]string{"audit", "report", "--format", "json", "--out", out, "--sample", "3"}, args...)...)
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		var r evidence.Report
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	local := report("local.json", "--log", f.replicas[0].logDir, "--log", f.replicas[1].logDir, "--data-dir", f.cpDir)
	remote := report("server.json", server...)

	if len(local.Controls) != 14 || len(remote.Controls) != len(local.Controls) {
		t.Fatalf("%d and %d controls", len(local.Controls), len(remote.Controls))
	}
	for i, lc := range local.Controls {
		rc := remote.Controls[i]
		if lc.ID != rc.ID || lc.Status != rc.Status || lc.Summary != rc.Summary || len(lc.Evidence) != len(rc.Evidence) {
			t.Errorf("%s from the logs: %s: %s (%d facts)\n%s from the server: %s: %s (%d facts)", lc.ID, lc.Status, lc.Summary, len(lc.Evidence), rc.ID, rc.Status, rc.Summary, len(rc.Evidence))
			continue
		}
		for j, lf := range lc.Evidence {
			rf := rc.Evidence[j]
			// A log's label names its directory or the control plane.
			if lf.Value != rf.Value || lf.Label != rf.Label && !strings.HasPrefix(lf.Label, "log ") {
				t.Errorf("%s: %q = %q from the logs, %q = %q from the server", lc.ID, lf.Label, lf.Value, rf.Label, rf.Value)
			}
		}
	}
	if s := local.Controls[0].Evidence[0]; s.Value != strconv.Itoa(checks) {
		t.Errorf("CC6.1 %s = %s, want the %d decisions made", s.Label, s.Value, checks)
	}
	if len(local.Revocations) != 1 || local.Revocations[0].FirstDenied.IsZero() || !reflect.DeepEqual(local.Revocations, remote.Revocations) {
		t.Errorf("revocations from the logs %+v\nfrom the server %+v", local.Revocations, remote.Revocations)
	}
	for i, l := range local.Logs {
		r := remote.Logs[i]
		if l.Name != r.Name || l.Records != r.Records || l.InRange != r.InRange || !l.Verified || !r.Verified || r.Server != f.url {
			t.Errorf("log %d: from the directory %+v, from the server %+v", i, l, r)
		}
	}
	if len(remote.Sample) != 3 || !strings.Contains(strings.Join(remote.Sample[0].Steps, "\n"), "--server "+f.url) {
		t.Errorf("sample from the server: %+v", remote.Sample)
	}
	// Both sources at once is refused; so is a server without a certificate.
	var out, errb bytes.Buffer
	args := append([]string{"audit", "report", "--out", filepath.Join(dir, "x.html"), "--log", f.replicas[0].logDir}, server...)
	if code := Run(context.Background(), args, nil, &out, &errb); code != 2 || !strings.Contains(errb.String(), "--server and --log") {
		t.Errorf("--server with --log: exit %d %s", code, errb.String())
	}
}
