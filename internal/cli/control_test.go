package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/checkreq"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/testenv"
)

// proc is an agentauthz command running in this process.
type proc struct {
	out, err syncBuffer
	done     chan int
}

func startProc(ctx context.Context, args ...string) *proc {
	p := &proc{done: make(chan int, 1)}
	go func() { p.done <- Run(ctx, args, nil, &p.out, &p.err) }()
	return p
}

// waitLog polls the process's stdout+stderr until re matches, returning the
// first submatch.
func (p *proc) waitLog(t *testing.T, re *regexp.Regexp, limit time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		if m := re.FindStringSubmatch(p.out.String() + p.err.String()); m != nil {
			return m[1]
		}
		select {
		case code := <-p.done:
			p.done <- code
			t.Fatalf("exited with %d:\n%s%s", code, p.out.String(), p.err.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v:\n%s%s", re, limit, p.out.String(), p.err.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// controlFleet is a control plane over a dev CA and two replicas watching it.
type controlFleet struct {
	cpDir    string
	url      string   // the (first) control plane's base URL
	urls     []string // every control plane's
	certs    string   // operator and replica certificates
	env      *ca.DevEnv
	replicas []*replica
	cpStop   []context.CancelFunc // stop one control plane
	cpProcs  []*proc
	ctx      context.Context // the fleet's: cancelled at cleanup
}

type replica struct {
	name   string
	cfg    string // its configuration file
	logDir string
	stop   context.CancelFunc
	proc   *proc
	client authv3.AuthorizationClient
	http   string
}

func startControlFleet(t *testing.T, n int) *controlFleet {
	t.Helper()
	return startFleet(t, n, 1, "")
}

// startFleet starts cps control planes on one data directory (and store,
// "" for the default SQLite one; extra are more control serve flags) and n
// replicas, replica i watching and shipping to control plane i % cps.
func startFleet(t *testing.T, n, cps int, store string, extra ...string) *controlFleet {
	t.Helper()
	policies, err := filepath.Abs(filepath.Join("..", "..", "policies"))
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	f := &controlFleet{cpDir: filepath.Join(root, "control")}
	var devOpts []ca.Option
	if ca.IsPostgres(store) {
		devOpts = append(devOpts, ca.WithStore(store))
	}
	if f.env, err = ca.EnsureDev(f.cpDir, time.Now(), devOpts...); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var cpProcs []*proc
	for i := range cps {
		dir := f.cpDir
		if i > 0 && ca.IsPostgres(store) {
			// Another instance with a data directory of its own: the
			// inventory is in PostgreSQL, the keys are copies of the
			// first instance's files (docs/control-plane.md).
			dir = filepath.Join(root, fmt.Sprintf("control-%d", i))
			for _, sub := range []string{"ca", "changelog", "operator"} {
				testenv.CopyTree(t, filepath.Join(f.cpDir, sub), filepath.Join(dir, sub))
			}
		}
		args := []string{"control", "serve", "--data-dir", dir, "--addr", "127.0.0.1:0"}
		if store != "" {
			args = append(args, "--store", store)
		}
		args = append(args, extra...)
		cpCtx, cpCancel := context.WithCancel(ctx)
		cp := startProc(cpCtx, args...)
		cpProcs = append(cpProcs, cp)
		f.cpStop = append(f.cpStop, cpCancel)
		f.urls = append(f.urls, cp.waitLog(t, regexp.MustCompile(`listening on (https://\S+)`), 30*time.Second))
	}
	t.Cleanup(func() {
		cancel()
		for _, p := range append(f.procs(), cpProcs...) {
			code := <-p.done
			p.done <- code
			if code != ExitOK {
				t.Errorf("exit %d after shutdown:\n%s", code, p.err.String())
			}
		}
	})
	f.url = f.urls[0]
	f.certs = filepath.Join(root, "certs")
	for i := range n {
		name := fmt.Sprintf("replica-%d", i)
		cli(t, "operator", "issue", name, "--role", "replica", "--data-dir", f.cpDir, "--out-dir", f.certs)
		dir := filepath.Join(root, name)
		cfg := fmt.Sprintf(`data_dir: %s
grpc: {addr: "127.0.0.1:0"}
http: {addr: "127.0.0.1:0"}
policy: {dir: %s}
decision_log: {name: %s}
control_plane: {url: %q, ca_file: %s, cert_file: %s, key_file: %s}
trust_bundles:
  - trust_domain: %s
    file: %s
    revocation: {watch_url: "%s/v1/watch"}
`, dir, policies, name, f.urls[i%cps], filepath.Join(f.cpDir, "operator", "ca.pem"), filepath.Join(f.certs, name+".pem"), filepath.Join(f.certs, name+".key"),
			f.env.TrustDomain, f.env.BundlePath, f.urls[i%cps])
		cfgPath := filepath.Join(root, fmt.Sprintf("replica-%d.yaml", i))
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		r := &replica{cfg: cfgPath, logDir: filepath.Join(dir, "log"), name: name}
		f.replicas = append(f.replicas, r)
		r.start(ctx, t)
	}
	f.cpProcs, f.ctx = cpProcs, ctx
	return f
}

// start runs the replica (again) and waits until it serves and is ready.
func (r *replica) start(ctx context.Context, t *testing.T) {
	t.Helper()
	rctx, rcancel := context.WithCancel(ctx)
	p := startProc(rctx, "serve", "--config", r.cfg, "--log-format", "json")
	r.proc, r.stop = p, rcancel
	serving := regexp.MustCompile(`"@message":"serving"[^\n]*"grpc":"([^"]+)"`)
	grpcAddr := p.waitLog(t, serving, 30*time.Second)
	r.http = p.waitLog(t, regexp.MustCompile(`"@message":"serving"[^\n]*"http":"([^"]+)"`), time.Second)
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	r.client = authv3.NewAuthorizationClient(conn)
	p.waitLog(t, regexp.MustCompile(`("readiness changed"[^\n]*"serving":true)`), 30*time.Second)
}

// exit stops p and returns its exit code, leaving it for the fleet's
// cleanup.
func (p *proc) exit(stop context.CancelFunc) int {
	stop()
	code := <-p.done
	p.done <- code
	return code
}

func (f *controlFleet) procs() []*proc {
	var out []*proc
	for _, r := range f.replicas {
		out = append(out, r.proc)
	}
	return out
}

// check asks a replica whether agent may POST /v1/payments; it returns the
// decision's reason ("allowed" when allowed).
func (f *controlFleet) check(t *testing.T, r *replica, agent string) string {
	t.Helper()
	var certPath string
	for _, a := range f.env.Agents {
		if a.ID == agent {
			certPath = a.CertPath
		}
	}
	pemData, err := os.ReadFile(certPath)
	if err != nil {
		t.Fatal(err)
	}
	reason, _ := envoyCheck(t, r, "POST", pemData)
	return reason
}

// envoyCheck sends the replica the Check Envoy sends for method /v1/payments
// by the agent whose certificate certPEM is (the peer certificate of the
// mTLS connection), and returns the decision's reason ("allowed") and id.
func envoyCheck(t *testing.T, r *replica, method string, certPEM []byte) (string, string) {
	t.Helper()
	req, err := checkreq.Build(checkreq.Request{Method: method, Path: "/v1/payments", CertPEM: certPEM, Via: checkreq.ViaPeer,
		RequestID: "req-" + strconv.FormatInt(time.Now().UnixNano(), 36)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := r.client.Check(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetStatus().GetCode() == 0 {
		for _, h := range resp.GetOkResponse().GetResponseHeadersToAdd() {
			if h.GetHeader().GetKey() == "x-decision-id" {
				return "allowed", h.GetHeader().GetValue()
			}
		}
		t.Fatal("an allowed Check without x-decision-id")
	}
	var body struct {
		Reason     string `json:"reason"`
		DecisionID string `json:"decision_id"`
	}
	if err := json.Unmarshal([]byte(resp.GetDeniedResponse().GetBody()), &body); err != nil || body.DecisionID == "" {
		t.Fatalf("denied body %q: %v", resp.GetDeniedResponse().GetBody(), err)
	}
	return body.Reason, body.DecisionID
}

// cli runs one agentauthz command and fails the test unless it exits 0.
func cli(t *testing.T, args ...string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := Run(context.Background(), args, nil, &out, &errOut); code != ExitOK {
		t.Fatalf("%s: exit %d\n%s%s", strings.Join(args, " "), code, out.String(), errOut.String())
	}
	return out.String()
}

// awaitAll polls every replica until each answers want for agent, and
// returns how long after start the last one did.
func (f *controlFleet) awaitAll(t *testing.T, agent, want string, start time.Time) time.Duration {
	t.Helper()
	var last time.Duration
	for i, r := range f.replicas {
		for {
			got := f.check(t, r, agent)
			if got == want {
				last = max(last, time.Since(start))
				break
			}
			if time.Since(start) > 20*time.Second {
				t.Fatalf("replica %d still answers %q 20 s after the change, want %q\n%s", i, got, want, r.proc.err.String())
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	return last
}

// TestRestrictionReachesTwoReplicas: `agent restrict` on the control plane's
// data directory is in force on two replicas shortly after it returns, and
// `agent lift` ends it. AGENTAUTHZ_PROPAGATION_ROUNDS (default 3) sets how
// many restrict/lift rounds run; docs/control-plane.md reports a run of 50.
// The times are logged, never asserted (they depend on the machine).
func TestRestrictionReachesTwoReplicas(t *testing.T) {
	f := startControlFleet(t, 2)
	for i, r := range f.replicas {
		if got := f.check(t, r, "payments-agent"); got != "allowed" {
			t.Fatalf("replica %d before any restriction: %s", i, got)
		}
	}
	rounds := 3
	if s := os.Getenv("AGENTAUTHZ_PROPAGATION_ROUNDS"); s != "" {
		rounds, _ = strconv.Atoi(s)
	}
	var times []time.Duration
	for range rounds {
		cli(t, "agent", "restrict", "payments-agent", "--quarantine", "--reason", "INC-1 test", "--data-dir", f.cpDir)
		times = append(times, f.awaitAll(t, "payments-agent", "agent_quarantined", time.Now()))
		// Other agents are untouched.
		if got := f.check(t, f.replicas[0], "sanctions-screener"); got != "insufficient_trust_level" {
			t.Errorf("sanctions-screener during the quarantine: %s", got)
		}
		cli(t, "agent", "lift", "payments-agent", "--reason", "INC-1 closed", "--data-dir", f.cpDir)
		times = append(times, f.awaitAll(t, "payments-agent", "allowed", time.Now()))
	}
	slices.Sort(times)
	t.Logf("propagation to %d replicas over %d changes: p50 %v p99 %v max %v", len(f.replicas), len(times),
		times[len(times)/2], times[min(len(times)-1, len(times)*99/100)], times[len(times)-1])

	// The readiness page and metrics say the replica is on the signed channel.
	resp, err := http.Get("http://" + f.replicas[0].http + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("readyz %d", resp.StatusCode)
	}
	if m := scrape(t, "http://"+f.replicas[0].http+"/metrics"); !strings.Contains(m, `agentauthz_revocation_push_refused_total{reason="bad_signature",tenant="dev.agentauthz.local"} 0`) {
		t.Errorf("metrics lack the push refusal counter:\n%s", m)
	}
	// agent show has the history.
	out := cli(t, "agent", "show", "payments-agent", "--data-dir", f.cpDir)
	if !strings.Contains(out, "restrict") || !strings.Contains(out, "lift") || !strings.Contains(out, "INC-1 closed") {
		t.Errorf("agent show lacks the restriction history:\n%s", out)
	}
}

// cliFails runs one agentauthz command that must fail and returns its
// stderr.
func cliFails(t *testing.T, args ...string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := Run(context.Background(), args, nil, &out, &errOut); code == ExitOK {
		t.Fatalf("%s: succeeded\n%s", strings.Join(args, " "), out.String())
	}
	return errOut.String()
}

// TestReplicaRestartWithoutControlPlane: a replica restarted while the
// control plane is down keeps the quarantine it last verified (its saved
// push state), is ready, and says on /readyz where its state comes from.
func TestReplicaRestartWithoutControlPlane(t *testing.T) {
	f := startControlFleet(t, 1)
	start := time.Now()
	cli(t, "agent", "restrict", "payments-agent", "--quarantine", "--reason", "INC-8", "--data-dir", f.cpDir)
	f.awaitAll(t, "payments-agent", "agent_quarantined", start)
	if code := f.cpProcs[0].exit(f.cpStop[0]); code != ExitOK {
		t.Fatalf("control plane exit %d", code)
	}
	r := f.replicas[0]
	if code := r.proc.exit(r.stop); code != ExitOK {
		t.Fatalf("replica exit %d", code)
	}
	r.start(f.ctx, t) // the control plane is still down
	if got := f.check(t, r, "payments-agent"); got != "agent_quarantined" {
		t.Fatalf("quarantined agent after a restart without the control plane: %q", got)
	}
	resp, err := http.Get("http://" + r.http + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "saved before the restart") {
		t.Fatalf("/readyz %d: %s", resp.StatusCode, body)
	}
}

// TestControlPlaneAPIRoles: restrictions through the control plane's API
// need an operator certificate of the right role; every refusal is clear
// and counted, and the change log names the operator.
func TestControlPlaneAPIRoles(t *testing.T) {
	f := startControlFleet(t, 1)
	for _, c := range [][2]string{{"alice", "responder"}, {"audrey", "auditor"}} {
		cli(t, "operator", "issue", c[0], "--role", c[1], "--data-dir", f.cpDir, "--out-dir", f.certs)
	}
	cli(t, "operator", "issue", "old", "--role", "responder", "--ttl", "1ms", "--data-dir", f.cpDir, "--out-dir", f.certs)
	as := func(name string, args ...string) []string {
		return append(args, "--server", f.url, "--trust-domain", f.env.TrustDomain, "--data-dir", f.cpDir,
			"--cert", filepath.Join(f.certs, name+".pem"), "--key", filepath.Join(f.certs, name+".key"))
	}
	start := time.Now()
	cli(t, as("alice", "agent", "restrict", "payments-agent", "--max-trust", "L1", "--reason", "INC-9")...)
	f.awaitAll(t, "payments-agent", "insufficient_trust_level", start)

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"auditor may not restrict", as("audrey", "agent", "restrict", "payments-agent", "--quarantine", "--reason", "x"), "(wrong_role)"},
		{"expired certificate", as("old", "agent", "lift", "payments-agent", "--reason", "x"), "(expired)"},
		{"unknown agent", as("alice", "agent", "restrict", "ghost", "--quarantine", "--reason", "x"), "(unknown_agent)"},
		{"max trust above the certificate's", as("alice", "agent", "restrict", "payments-agent", "--max-trust", "L4", "--reason", "x"), "(invalid_input)"},
		{"scope not held", as("alice", "agent", "restrict", "payments-agent", "--remove-scope", "admin:delete", "--reason", "x"), "(invalid_input)"},
		{"until in the past", as("alice", "agent", "restrict", "payments-agent", "--quarantine", "--until", "2020-01-01T00:00:00Z", "--reason", "x"), "not in the future"},
		{"until unparsable", as("alice", "agent", "restrict", "payments-agent", "--quarantine", "--until", "soon", "--reason", "x"), "neither a duration"},
		{"no reason", as("alice", "agent", "restrict", "payments-agent", "--quarantine"), "--reason is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := cliFails(t, tc.args...); !strings.Contains(got, tc.want) || !strings.Contains(got, "agentauthz: hint:") {
				t.Errorf("stderr %q lacks %q or a hint", got, tc.want)
			}
		})
	}
	// Nothing refused changed anything: still max trust L1 only.
	if got := f.check(t, f.replicas[0], "payments-agent"); got != "insufficient_trust_level" {
		t.Errorf("after refusals: %s", got)
	}
	// Without a client certificate the watch stream and the API are
	// refused; CRLs stay public.
	caPEM, err := os.ReadFile(filepath.Join(f.cpDir, "operator", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	anon := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := anon.Get(f.url + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/v1/watch?tenant=" + f.env.TrustDomain); code != http.StatusUnauthorized || !strings.Contains(body, "no_certificate") {
		t.Errorf("anonymous watch: %d %s", code, body)
	}
	if code, _ := get("/v1/crl/" + f.env.TrustDomain); code != http.StatusOK {
		t.Errorf("anonymous CRL: %d", code)
	}
	_, m := get("/metrics")
	for _, want := range []string{
		`agentauthz_control_auth_refused_total{reason="wrong_role"} 1`,
		`agentauthz_control_auth_refused_total{reason="expired"} 1`,
		`agentauthz_control_auth_refused_total{reason="no_certificate"} 1`,
		`agentauthz_control_refused_total{reason="unknown_agent"} 1`,
		`agentauthz_control_refused_total{reason="invalid_input"} 2`,
		`agentauthz_control_changes_total{kind="restrict"} 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("control plane metrics lack %s", want)
		}
	}
	// A responder revokes through the API too; the change log names her.
	if out := cli(t, as("alice", "agent", "revoke", "reader", "--reason", "keyCompromise")...); !strings.Contains(out, "revoked agent spiffe://") {
		t.Errorf("revoke --server: %s", out)
	}
	if out := cli(t, "agent", "show", "reader", "--data-dir", f.cpDir); !strings.Contains(out, "agent_revoke") || !strings.Contains(out, "alice (responder)") {
		t.Errorf("revocation not in the change log:\n%s", out)
	}
	if out := cli(t, "audit", "verify", "--changelog", f.cpDir); !strings.Contains(out, "ok: ") {
		t.Errorf("change log does not verify:\n%s", out)
	}
	// A key rotation is a signed row of the log; the running control plane
	// signs with the new key from then on and the log verifies across it.
	if out := cli(t, "ca", "rotate-changelog-key", "--reason", "drill", "--data-dir", f.cpDir); !strings.Contains(out, "rotated the change-log key") {
		t.Errorf("rotate: %s", out)
	}
	cli(t, as("alice", "agent", "restrict", "payments-agent", "--max-trust", "L1", "--reason", "after the rotation")...)
	if out := cli(t, "audit", "verify", "--changelog", f.cpDir); !strings.Contains(out, "ok: ") || !strings.Contains(out, " then ") {
		t.Errorf("change log does not verify across the rotation:\n%s", out)
	}
	out := cli(t, "agent", "show", "payments-agent", "--data-dir", f.cpDir)
	if !strings.Contains(out, "alice (responder)") {
		t.Errorf("change log does not name the operator:\n%s", out)
	}
}

// localRecords counts the records of a replica's log directory.
func localRecords(t *testing.T, dir string) int {
	t.Helper()
	r := decisionlog.NewReader(dir)
	defer r.Close()
	n := 0
	for {
		_, err := r.Next()
		if errors.Is(err, io.EOF) {
			return n
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
}

// TestRecordsShipToControlPlane: replicas ship their signed records to the
// control plane, which answers the auditor's questions across both; a
// replica stopped right after a burst ships the rest before it exits.
func TestRecordsShipToControlPlane(t *testing.T) {
	f := startControlFleet(t, 2)
	cli(t, "operator", "issue", "audrey", "--role", "auditor", "--data-dir", f.cpDir, "--out-dir", f.certs)
	as := func(name string, args ...string) []string {
		return append(args, "--server", f.url, "--data-dir", f.cpDir,
			"--cert", filepath.Join(f.certs, name+".pem"), "--key", filepath.Join(f.certs, name+".key"))
	}
	for i := range 20 {
		f.check(t, f.replicas[i%2], []string{"payments-agent", "sanctions-screener"}[i%2])
	}
	count := func() int {
		var out, errOut bytes.Buffer
		if code := Run(context.Background(), as("audrey", "audit", "query", "--json"), nil, &out, &errOut); code != ExitOK {
			t.Fatalf("audit query --server: %d %s", code, errOut.String())
		}
		return strings.Count(out.String(), "\n")
	}
	want := localRecords(t, f.replicas[0].logDir) + localRecords(t, f.replicas[1].logDir)
	deadline := time.Now().Add(20 * time.Second)
	for count() != want {
		if time.Now().After(deadline) {
			t.Fatalf("control plane holds %d records, replicas have %d", count(), want)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The auditor's questions, across the fleet.
	out := cli(t, as("audrey", "audit", "query", "--denied", "--json")...)
	if n := strings.Count(out, "\n"); n != 10 || !strings.Contains(out, "sanctions-screener") {
		t.Errorf("denied across the fleet: %d records\n%s", n, out)
	}
	var first struct {
		DecisionID string `json:"decision_id"`
	}
	if err := json.Unmarshal([]byte(out[:strings.IndexByte(out, '\n')]), &first); err != nil {
		t.Fatal(err)
	}
	if who := cli(t, as("audrey", "audit", "who", first.DecisionID)...); !strings.Contains(who, "sanctions-screener") {
		t.Errorf("audit who --server:\n%s", who)
	}
	for _, r := range f.replicas {
		if v := cli(t, as("audrey", "audit", "verify", "--log-name", r.name)...); !strings.HasPrefix(v, "ok: ") {
			t.Errorf("audit verify --server %s: %s", r.name, v)
		}
	}
	// A replica certificate may ship, not read.
	if got := cliFails(t, as("replica-0", "audit", "query")...); !strings.Contains(got, "(wrong_role)") {
		t.Errorf("replica querying: %s", got)
	}
	// Stop replica 1 right after a burst: what it answered is shipped
	// before it exits.
	for range 30 {
		f.check(t, f.replicas[1], "payments-agent")
	}
	r := f.replicas[1]
	r.stop()
	if code := <-r.proc.done; code != ExitOK {
		t.Fatalf("replica exit %d:\n%s", code, r.proc.err.String())
	}
	r.proc.done <- ExitOK
	local := localRecords(t, r.logDir)
	stored := strings.Count(cli(t, as("audrey", "audit", "query", "--json")...), `"log":"replica-1"`)
	if stored != local {
		t.Errorf("replica-1 stopped with %d records, the control plane holds %d:\n%s", local, stored, r.proc.err.String())
	}
}

// TestTwoControlPlanesOnePostgres: two control planes on one PostgreSQL
// record store (and one data directory for the CA inventory) serve one
// fleet: a restriction made through either reaches replicas of both, and
// either answers the auditor with the records of every replica.
func TestTwoControlPlanesOnePostgres(t *testing.T) {
	pg := testenv.StartPostgres(t)
	// Commands on the data directory (operator issue) find the inventory
	// where the control planes keep it.
	t.Setenv("AGENTAUTHZ_STORE", pg.DSN)
	f := startFleet(t, 2, 2, pg.DSN)
	cli(t, "operator", "issue", "alice", "--role", "responder", "--data-dir", f.cpDir, "--out-dir", f.certs)
	cli(t, "operator", "issue", "audrey", "--role", "auditor", "--data-dir", f.cpDir, "--out-dir", f.certs)
	at := func(url, name string, args ...string) []string {
		return append(args, "--server", url, "--data-dir", f.cpDir,
			"--cert", filepath.Join(f.certs, name+".pem"), "--key", filepath.Join(f.certs, name+".key"))
	}
	start := time.Now()
	cli(t, at(f.urls[1], "alice", "agent", "restrict", "payments-agent", "--quarantine", "--reason", "INC-5", "--trust-domain", f.env.TrustDomain)...)
	f.awaitAll(t, "payments-agent", "agent_quarantined", start)
	start = time.Now()
	cli(t, at(f.urls[0], "alice", "agent", "lift", "payments-agent", "--reason", "INC-5 closed", "--trust-domain", f.env.TrustDomain)...)
	f.awaitAll(t, "payments-agent", "allowed", start)

	// Changes through both instances at once make one gap-free change
	// log that verifies (the inventory's writers take turns in PostgreSQL).
	errs := make(chan string, 2)
	for i, url := range f.urls {
		go func() {
			agent := []string{"loan-servicer", "merchant-onboarder"}[i]
			for j := range 8 {
				args := at(url, "alice", "agent", "restrict", agent, "--max-trust", "L1", "--reason", fmt.Sprintf("drill %d", j), "--trust-domain", f.env.TrustDomain)
				var out, errOut bytes.Buffer
				if code := Run(context.Background(), args, nil, &out, &errOut); code != ExitOK {
					errs <- fmt.Sprintf("restrict through %s: exit %d: %s", url, code, errOut.String())
					return
				}
			}
			errs <- ""
		}()
	}
	for range f.urls {
		if e := <-errs; e != "" {
			t.Fatal(e)
		}
	}
	if out := cli(t, "audit", "verify", "--changelog", f.cpDir); !strings.Contains(out, "ok: ") {
		t.Fatalf("change log after concurrent changes:\n%s", out)
	}
	for _, agent := range []string{"loan-servicer", "merchant-onboarder"} {
		if out := cli(t, "agent", "show", agent, "--data-dir", f.cpDir); strings.Count(out, "reason=drill ") != 8 {
			t.Errorf("%s: %d of 8 restrictions in its history:\n%s", agent, strings.Count(out, "reason=drill "), out)
		}
	}

	want := localRecords(t, f.replicas[0].logDir) + localRecords(t, f.replicas[1].logDir)
	for _, url := range f.urls {
		deadline := time.Now().Add(20 * time.Second)
		for {
			out := cli(t, at(url, "audrey", "audit", "query", "--json")...)
			got := strings.Count(out, "\n")
			if got == want && strings.Contains(out, `"log":"replica-0"`) && strings.Contains(out, `"log":"replica-1"`) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("control plane %s holds %d records, replicas wrote %d", url, got, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	// Console sign-in is shared too: a link `operator login-link` writes
	// to the store (AGENTAUTHZ_STORE) is claimed on instance B, and the
	// browser's session then works on instance A.
	link := strings.TrimSpace(cli(t, "operator", "login-link", "lena", "--role", "auditor", "--data-dir", f.cpDir, "--server", f.urls[0]))
	lu, err := url.Parse(link)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(filepath.Join(f.cpDir, "operator", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := browser.PostForm(f.urls[1]+"/ui/login", url.Values{"token": {lu.Query().Get("token")}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("link claimed on instance B: %d", resp.StatusCode)
	}
	if resp, err = browser.Get(f.urls[0] + "/ui/decisions"); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("B's console session on instance A: %d", resp.StatusCode)
	}
}
