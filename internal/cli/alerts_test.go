package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
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
	// The control plane's metrics count the alert and both steps of its response.
	caPEM, err := os.ReadFile(filepath.Join(f.cpDir, "operator", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	resp, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}).Get(f.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`agentauthz_anomaly_alerts_total{rule="scope_probing"} 1`, `agentauthz_anomaly_responses_total{mode="auto",state="applied"} 1`,
		`agentauthz_anomaly_responses_total{mode="auto",state="reviewed"} 1`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
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

// startDevServeIn is startDevServe on a given data directory (for a restart).
func startDevServeIn(t *testing.T, dataDir string) *devServe {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &devServe{dataDir: dataDir, done: make(chan int, 1), cancel: cancel}
	go func() {
		s.done <- Run(ctx, []string{"serve", "--dev", "--data-dir", s.dataDir,
			"--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--log-format", "json"},
			nil, &s.stderr, &s.stderr)
	}()
	return s
}

// TestDevAnomalyAlerts: serve --dev's in-process control plane runs the
// detector on what its replica ships: a scope-probing burst sent with
// agentauthz check is an alert that alerts list --server shows; after a
// restart the alert and its acknowledgement are still there, once.
func TestDevAnomalyAlerts(t *testing.T) {
	s := startDevServeIn(t, filepath.Join(t.TempDir(), "data"))
	lineRE := regexp.MustCompile(`(?m)^\s+allowed:\s+\S+ (check .*)$`)
	urlRE := regexp.MustCompile(`--server (https://[^\s"]+)`)
	var check []string
	var server string
	s.waitFor(t, "dev hints", 60*time.Second, func(log string) bool {
		m, u := lineRE.FindStringSubmatch(log), urlRE.FindStringSubmatch(log)
		if m == nil || u == nil {
			return false
		}
		check, server = strings.Fields(m[1]), u[1]
		return true
	})
	certs := filepath.Join(t.TempDir(), "certs")
	for _, c := range [][2]string{{"audrey", "auditor"}, {"alice", "responder"}} {
		cli(t, "operator", "issue", c[0], "--role", c[1], "--data-dir", s.dataDir, "--out-dir", certs)
	}
	as := func(name string, args ...string) []string {
		return append(args, "--server", server, "--cert", filepath.Join(certs, name+".pem"), "--key", filepath.Join(certs, name+".key"),
			"--data-dir", s.dataDir)
	}
	i := slices.Index(check, "--path")
	for _, path := range []string{"/v1/sanctions/screenings", "/v1/merchants", "/v1/loans/7/repayments"} {
		args := slices.Clone(check)
		args[i+1] = path
		var out, errOut bytes.Buffer
		if code := Run(context.Background(), args, nil, &out, &errOut); code != ExitNo || !strings.Contains(out.String(), "scope_missing") {
			t.Fatalf("probe %s: exit %d\n%s%s", path, code, out.String(), errOut.String())
		}
	}
	var id string
	for deadline := time.Now().Add(30 * time.Second); id == ""; time.Sleep(100 * time.Millisecond) {
		for _, line := range strings.Split(cli(t, as("audrey", "alerts", "list", "--rule", "scope_probing")...), "\n")[1:] {
			if f := strings.Fields(line); len(f) > 2 {
				id = f[0]
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no scope_probing alert from serve --dev:\n%s", s.stderr.String())
		}
	}
	cli(t, as("alice", "alerts", "ack", id, "--note", "dev probe, expected")...)
	s.stop(t)

	s = startDevServeIn(t, s.dataDir)
	s.waitFor(t, "dev hints", 60*time.Second, func(log string) bool {
		u := urlRE.FindStringSubmatch(log)
		if u != nil {
			server = u[1]
		}
		return u != nil
	})
	// Give the restarted detector time to run (it resumes at its saved
	// cursor; records read again would be recognised by alert id).
	time.Sleep(time.Second)
	out := cli(t, as("audrey", "alerts", "list")...)
	if n := strings.Count(out, "scope_probing"); n != 1 || !strings.Contains(out, id) || !strings.Contains(out, "alice") {
		t.Errorf("after the restart, %d scope_probing alerts (want 1, %s, acknowledged by alice):\n%s", n, id, out)
	}
	s.stop(t)
}
