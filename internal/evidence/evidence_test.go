package evidence

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/alerts"
	"github.com/agentauthz/agentauthz/internal/anomaly"
	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/simrun"
	"github.com/agentauthz/agentauthz/internal/testenv"
)

const td = "acme.example"

// history is a generated, known history: a CA with three agents, their
// decisions in a real signed log, an identity attack, a revocation and a
// restriction. The test keeps its own list of what it wrote, to count
// independently of the report.
type history struct {
	dataDir, logDir string
	a               *ca.Authority
	recs            []decisionlog.Record
	revokedAt       time.Time
	certOf          map[string]string
	now             *time.Time // the CA's clock
}

func newHistory(t *testing.T) *history {
	t.Helper()
	h := &history{dataDir: t.TempDir(), certOf: map[string]string{}}
	h.logDir = filepath.Join(h.dataDir, "log")
	now := time.Date(2026, 11, 2, 9, 0, 0, 0, time.UTC)
	a, err := ca.Open(h.dataDir, ca.WithClock(func() time.Time { return now }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	h.a, h.now = a, &now
	if _, err := a.Init(ca.InitRequest{TrustDomain: td, Operator: "alice"}); err != nil {
		t.Fatal(err)
	}
	agents := []struct {
		id     string
		trust  int
		scopes []string
	}{{"payer", 3, []string{"payments:initiate", "payments:read"}}, {"reader", 1, []string{"payments:read"}}, {"rogue", 2, []string{"payments:read", "refunds:issue"}}}
	for _, ag := range agents {
		iss, err := a.Issue(ca.IssueRequest{TrustDomain: td, AgentID: ag.id, Trust: ag.trust, Scopes: ag.scopes, TTL: 72 * time.Hour, Operator: "alice"})
		if err != nil {
			t.Fatal(err)
		}
		h.certOf[ag.id] = fmt.Sprintf("%064x", len(ag.id)) + iss.Record.Serial
	}
	l, err := decisionlog.Open(decisionlog.Options{Dir: h.logDir, KeyDir: filepath.Join(h.dataDir, "keys"), Name: "replica-a"})
	if err != nil {
		t.Fatal(err)
	}
	at := now.Add(time.Hour)
	n := 0
	add := func(agent, op string, allowed bool, code string) {
		n++
		at = at.Add(time.Minute)
		rec := decisionlog.Record{DecisionID: fmt.Sprintf("dec-%03d", n), Time: at,
			Request:  decisionlog.Request{ID: fmt.Sprintf("req-%03d", n), Method: "POST", Host: "api.acme.example", Path: "/v1/x", Operation: op, Source: "10.0.0.1:4000"},
			Decision: decisionlog.Decision{Allowed: allowed, HTTPStatus: 200, Reasons: []string{code}}}
		if !allowed {
			rec.Decision.HTTPStatus = 403
		}
		if agent != "" {
			rec.Agent = decisionlog.Agent{ID: agent, SPIFFEID: "spiffe://" + td + "/agent/" + agent, Tenant: td, TrustLevel: "L2",
				CertSHA256: h.certOf[agent], Source: "peer_certificate"}
		} else {
			rec.Agent = decisionlog.Agent{CertSHA256: "ff00", Issuer: "CN=elsewhere"}
			rec.Decision.HTTPStatus = 401
		}
		if _, err := l.Append(context.Background(), &rec); err != nil {
			t.Fatal(err)
		}
		h.recs = append(h.recs, rec)
	}
	for range 5 {
		add("payer", "payments:initiate", true, "allowed")
	}
	for range 4 {
		add("reader", "payments:read", true, "allowed")
	}
	for range 2 {
		add("reader", "payments:initiate", false, "scope_missing")
	}
	for range 3 {
		add("rogue", "payments:read", true, "allowed")
	}
	for range 3 { // an identity attack: certificates from a foreign CA
		add("", "", false, "untrusted_issuer")
	}
	now = at.Add(30 * time.Second)
	h.revokedAt = now
	if _, err := a.Revoke(td, "rogue", ca.ReasonKeyCompromise, "bob"); err != nil {
		t.Fatal(err)
	}
	add("rogue", "payments:read", false, "certificate_revoked")
	add("payer", "payments:initiate", true, "allowed")
	add("rogue", "payments:read", false, "certificate_revoked")
	now = at.Add(10 * time.Second)
	if _, err := a.Restrict(ca.RestrictRequest{TrustDomain: td, AgentID: "reader", Quarantine: true, Reason: "probing seen", Operator: "bob"}); err != nil {
		t.Fatal(err)
	}
	add("reader", "payments:read", false, "agent_quarantined")
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *history) collect(t *testing.T, mod func(*Inputs)) *Report {
	t.Helper()
	ks, err := decisionlog.LoadKeySet(filepath.Join(h.dataDir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	inv, err := ReadInventory(h.a, h.dataDir)
	if err != nil {
		t.Fatal(err)
	}
	in := Inputs{Sources: []Source{DirSource{Dir: h.logDir, Keys: ks}}, DataDir: h.dataDir, Inventory: inv, Sample: 4, Seed: 9}
	if mod != nil {
		mod(&in)
	}
	r, err := Collect(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func control(t *testing.T, r *Report, id string) Control {
	t.Helper()
	for _, c := range r.Controls {
		if c.ID == id {
			return c
		}
	}
	t.Fatalf("no control %s", id)
	return Control{}
}

func fact(t *testing.T, c Control, label string) string {
	t.Helper()
	for _, f := range c.Evidence {
		if f.Label == label {
			return f.Value
		}
	}
	t.Fatalf("%s has no %q: %+v", c.ID, label, c.Evidence)
	return ""
}

// TestFiguresMatchAnIndependentCount checks every figure the report states
// against a count over the records the history wrote.
func TestFiguresMatchAnIndependentCount(t *testing.T) {
	h := newHistory(t)
	r := h.collect(t, nil)
	var decisions, withID, anonAllowed, allowed, scopeMissing, untrusted int
	for _, rec := range h.recs {
		decisions++
		if rec.Agent.ID != "" {
			withID++
		}
		if rec.Decision.Allowed {
			allowed++
			if rec.Agent.ID == "" {
				anonAllowed++
			}
		}
		switch rec.Decision.Reasons[0] {
		case "scope_missing":
			scopeMissing++
		case "untrusted_issuer":
			untrusted++
		}
	}
	c := control(t, r, "CC6.1")
	if fact(t, c, "decisions in the period") != fmt.Sprint(decisions) || fact(t, c, "decisions attributed to one agent identity") != fmt.Sprint(withID) ||
		fact(t, c, "allowed decisions without an agent identity") != fmt.Sprint(anonAllowed) || c.Status != StatusEvidence {
		t.Fatalf("CC6.1 %+v; want %d decisions, %d with identity", c, decisions, withID)
	}
	if got := fact(t, control(t, r, "CC6.2"), "allowed decisions"); got != fmt.Sprint(allowed) {
		t.Fatalf("CC6.2 allowed %s, want %d", got, allowed)
	}
	if got := fact(t, control(t, r, "CC6.2"), "identity refused: untrusted_issuer"); got != fmt.Sprint(untrusted) {
		t.Fatalf("CC6.2 untrusted %s, want %d", got, untrusted)
	}
	c = control(t, r, "CC6.3")
	if fact(t, c, "denied scope_missing") != fmt.Sprint(scopeMissing) {
		t.Fatalf("CC6.3 %+v", c.Evidence)
	}
	if m := fact(t, c, "agents × operations exercised (allowed)"); !strings.Contains(m, td+"/payer: payments:initiate 6") || !strings.Contains(m, td+"/rogue: payments:read 3") {
		t.Fatalf("matrix %q", m)
	}
	// payer never read; rogue never issued a refund (and is revoked, so not
	// listed); reader used its only scope.
	if u := fact(t, c, "active agents holding scopes they never used in the period"); u != td+"/payer: payments:read" {
		t.Fatalf("unused scopes %q", u)
	}
	if got := fact(t, control(t, r, "CC6.6"), "refused: untrusted_issuer"); got != fmt.Sprint(untrusted) {
		t.Fatalf("CC6.6 %s", got)
	}
	// The revocation: rogue refused from the first request after it.
	c = control(t, r, "CC6.8")
	if c.Status != StatusEvidence || len(r.Revocations) != 1 {
		t.Fatalf("CC6.8 %+v revocations %+v", c, r.Revocations)
	}
	rv := r.Revocations[0]
	if rv.Agent != "rogue" || rv.AllowedAfter != 0 || rv.FirstDenied.IsZero() || !rv.At.Equal(h.revokedAt) || rv.Operator != "bob" {
		t.Fatalf("revocation %+v", rv)
	}
	if !strings.Contains(rv.OthersBefore, "% of") || !strings.Contains(rv.OthersAfter, "% of") {
		t.Fatalf("others around the revocation: %q / %q", rv.OthersBefore, rv.OthersAfter)
	}
	c = control(t, r, "CC7.4")
	// The revocation is two events (its certificate's serial and the agent
	// id), then the quarantine.
	if c.Status != StatusEvidence || len(c.Evidence) != 3 || !strings.HasPrefix(c.Evidence[2].Label, "restrict "+td+"/reader") ||
		!strings.Contains(c.Evidence[2].Value, "by bob: quarantine reason=probing seen") {
		t.Fatalf("CC7.4 %+v, want the revocation and the quarantine", c)
	}
	if control(t, r, "CC8.1").Status != StatusEvidence || control(t, r, "CC7.2").Status != StatusEvidence {
		t.Fatalf("CC8.1 %+v CC7.2 %+v", control(t, r, "CC8.1"), control(t, r, "CC7.2"))
	}
	if len(r.Sample) != 4 || len(r.Logs) != 1 || r.Logs[0].Checkpoint == "" || !r.Logs[0].Verified {
		t.Fatalf("sample %d, logs %+v", len(r.Sample), r.Logs)
	}
	// The same seed draws the same sample.
	again := h.collect(t, nil)
	for i := range r.Sample {
		if r.Sample[i].Record.DecisionID != again.Sample[i].Record.DecisionID {
			t.Fatalf("sample %d differs between runs with one seed", i)
		}
	}
}

// TestNoEvidenceIsAGap: without alerts, response records or an inventory, the
// controls that need them are gaps, never passes.
func TestNoEvidenceIsAGap(t *testing.T) {
	h := newHistory(t)
	r := h.collect(t, func(in *Inputs) { in.Inventory, in.DataDir = nil, "" })
	for _, id := range []string{"CC6.7", "CC6.8", "CC7.1", "CC7.4", "CC8.1", "A1.1", "PI1.3", "PI1.5"} {
		if c := control(t, r, id); c.Status != StatusGap {
			t.Errorf("%s is %q without its evidence: %s", id, c.Status, c.Summary)
		}
	}
	// With an (empty) alerts file, CC7.1 has evidence: none were raised.
	r = h.collect(t, func(in *Inputs) { in.HasAlert, in.Alerts = true, []anomaly.StoredAlert{} })
	if c := control(t, r, "CC7.1"); c.Status != StatusEvidence {
		t.Errorf("CC7.1 with an alerts file: %+v", c)
	}
	// A period with no decisions: CC6.1 is a gap, not a pass.
	r = h.collect(t, func(in *Inputs) { in.From = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC) })
	if c := control(t, r, "CC6.1"); c.Status != StatusGap {
		t.Errorf("CC6.1 on an empty period: %+v", c)
	}
}

// TestAllowedAfterRevocationIsAGap: a revoked agent allowed later than the
// propagation bound fails CC6.8.
func TestAllowedAfterRevocationIsAGap(t *testing.T) {
	h := newHistory(t)
	l, err := decisionlog.Open(decisionlog.Options{Dir: h.logDir, KeyDir: filepath.Join(h.dataDir, "keys"), Name: "replica-a"})
	if err != nil {
		t.Fatal(err)
	}
	rec := decisionlog.Record{DecisionID: "late-allow", Time: h.revokedAt.Add(time.Minute),
		Agent:    decisionlog.Agent{ID: "rogue", SPIFFEID: "spiffe://" + td + "/agent/rogue", Tenant: td, TrustLevel: "L2", CertSHA256: h.certOf["rogue"]},
		Request:  decisionlog.Request{Method: "GET", Path: "/v1/payments", Operation: "payments:read"},
		Decision: decisionlog.Decision{Allowed: true, HTTPStatus: 200, Reasons: []string{"allowed"}}}
	if _, err := l.Append(context.Background(), &rec); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	r := h.collect(t, nil)
	if c := control(t, r, "CC6.8"); c.Status != StatusGap || r.Revocations[0].AllowedAfter != 1 {
		t.Fatalf("CC6.8 %+v %+v", c, r.Revocations)
	}
}

func TestHTMLIsSelfContainedAndEscaped(t *testing.T) {
	h := newHistory(t)
	r := h.collect(t, nil)
	r.Controls[0].Evidence = append(r.Controls[0].Evidence, Fact{Label: "<script>alert(1)</script>", Value: "x"})
	var b bytes.Buffer
	if err := r.WriteHTML(&b); err != nil {
		t.Fatal(err)
	}
	s := b.String()
	for _, bad := range []string{"<script", "src=\"http", "href=\"http", "@import", "url(http"} {
		if strings.Contains(s, bad) {
			t.Fatalf("report holds %q: not self-contained or not escaped", bad)
		}
	}
	for _, want := range []string{"&lt;script&gt;alert(1)&lt;/script&gt;", "@media print", "<svg", "CC8.1", "ISO/IEC 27001:2022", "openssl pkeyutl -verify"} {
		if !strings.Contains(s, want) {
			t.Fatalf("report lacks %q", want)
		}
	}
}

// TestReportPrintsToPDF renders the report with headless Chromium to PDF, as
// an auditor would print it, and reads the PDF's text back with pdftotext.
func TestReportPrintsToPDF(t *testing.T) {
	chromium := testenv.LookPath(t, "chromium", "chromium")
	pdftotext := testenv.LookPath(t, "pdftotext", "poppler-utils")
	h := newHistory(t)
	r := h.collect(t, nil)
	dir := t.TempDir()
	html := filepath.Join(dir, "report.html")
	var b bytes.Buffer
	if err := r.WriteHTML(&b); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(html, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	pdf := filepath.Join(dir, "report.pdf")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--user-data-dir="+filepath.Join(dir, "profile"),
		"--no-pdf-header-footer", "--print-to-pdf="+pdf, "file://"+html)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("chromium: %v\n%s", err, out)
	}
	out, err := exec.CommandContext(ctx, pdftotext, "-layout", pdf, "-").Output()
	if err != nil {
		t.Fatalf("pdftotext: %v", err)
	}
	text := string(out)
	for _, want := range []string{"Evidence pack", "CC6.1", "CC8.1", "PI1.5", "evidence found", "gap", "Mapping to other frameworks", "dec-0"} {
		if !strings.Contains(text, want) {
			t.Errorf("the printed report lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("pdftotext:\n%s", text)
	}
}

// TestPropagationPerReplica: with two replicas' logs, the revocation's first
// refusal is found on each, stated in CC6.8 and the JSON, and drawn.
func TestPropagationPerReplica(t *testing.T) {
	h := newHistory(t)
	dirB := filepath.Join(h.dataDir, "log-b")
	l, err := decisionlog.Open(decisionlog.Options{Dir: dirB, KeyDir: filepath.Join(h.dataDir, "keys"), Name: "replica-b"})
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range []struct {
		agent   string
		after   time.Duration
		allowed bool
		code    string
	}{{"rogue", -time.Minute, true, "allowed"}, {"payer", time.Second, true, "allowed"}, {"rogue", 2 * time.Second, false, "certificate_revoked"}, {"rogue", 3 * time.Second, false, "certificate_revoked"}} {
		rec := decisionlog.Record{DecisionID: fmt.Sprintf("b-%d", i), Time: h.revokedAt.Add(c.after),
			Agent:    decisionlog.Agent{ID: c.agent, Tenant: td, TrustLevel: "L2", CertSHA256: h.certOf[c.agent]},
			Request:  decisionlog.Request{Operation: "payments:read"},
			Decision: decisionlog.Decision{Allowed: c.allowed, HTTPStatus: 200, Reasons: []string{c.code}}}
		if _, err := l.Append(context.Background(), &rec); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	r := h.collect(t, func(in *Inputs) {
		in.Sources = append(in.Sources, DirSource{Dir: dirB, Keys: in.Sources[0].(DirSource).Keys})
	})
	rv := r.Revocations[0]
	// On replica-a the first request after the revocation came 30 s later.
	if len(rv.Replicas) != 2 || rv.Replicas[0].Log != "replica-a" || rv.Replicas[1].Log != "replica-b" ||
		rv.Replicas[0].TookMS == nil || *rv.Replicas[0].TookMS != 30000 || rv.Replicas[1].TookMS == nil || *rv.Replicas[1].TookMS != 2000 ||
		!rv.FirstDenied.Equal(h.revokedAt.Add(2*time.Second)) {
		t.Fatalf("propagation %+v", rv)
	}
	if v := control(t, r, "CC6.8").Evidence[0].Value; !strings.Contains(v, "first refused 2s after (by replica: replica-a 30000 ms, replica-b 2000 ms)") {
		t.Fatalf("CC6.8 %q", v)
	}
	var b bytes.Buffer
	if err := r.WriteHTML(&b); err != nil {
		t.Fatal(err)
	}
	s := b.String()
	for _, want := range []string{`aria-label="Revocation propagation`, "acme.example/rogue revoked", ">replica-b</text>", ">2.0 s</text>", ">30.0 s</text>", `class="late"`, `class="ontime"`, "5s bound"} {
		if !strings.Contains(s, want) {
			t.Errorf("the chart lacks %q", want)
		}
	}
	if t.Failed() {
		t.Log(s[strings.Index(s, "Revocation propagation"):][:3000])
	}
}

// TestConfigurationAsEvidence: the serve configuration given is in the
// report with its hash and, under each control, the settings it depends on;
// a tenant without revocation checking makes CC6.8 a gap.
func TestConfigurationAsEvidence(t *testing.T) {
	h := newHistory(t)
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("a.yaml", `decision_log: {name: replica-a, mode: async, async_buffer: 5000}
identity: {sources: [xfcc]}
policy: {bundle: https://bundles.example/p.tar.gz, bundle_verification_key: /etc/agentauthz/bundle.pub}
trust_bundles:
  - trust_domain: acme.example
    file: /etc/agentauthz/acme.pem
    revocation: {watch_url: "https://cp.example:9193/v1/watch", crl_urls: ["https://cp.example:9193/v1/crl/acme.example"]}
`)
	off := write("b.yaml", `decision_log: {name: replica-b}
grpc: {tls: {cert_file: /s.pem, key_file: /s.key, client_ca_file: /envoy-ca.pem}}
trust_bundles:
  - trust_domain: other.example
    file: /etc/agentauthz/other.pem
    revocation: {disabled: true}
`)
	var cfs []*ConfigFile
	for _, p := range []string{good, off} {
		cf, err := ReadConfig(p)
		if err != nil {
			t.Fatal(err)
		}
		cfs = append(cfs, cf)
	}
	b, _ := os.ReadFile(good)
	if sum := sha256.Sum256(b); cfs[0].SHA256 != hex.EncodeToString(sum[:]) || cfs[0].Log != "replica-a" {
		t.Fatalf("config %+v", cfs[0])
	}
	r := h.collect(t, func(in *Inputs) { in.Configs = cfs })
	for id, want := range map[string][]string{
		"CC6.6": {"replica-a: trust in xfcc=trusted as sent by the caller of Check: without gRPC mutual TLS", "replica-a: grpc.tls=plaintext",
			"replica-b: grpc.tls=mutual TLS: only callers with a certificate from /envoy-ca.pem"},
		"CC6.8": {"replica-a: revocation of acme.example=push https://cp.example:9193/v1/watch; CRL URLs", "replica-b: revocation of other.example=DISABLED"},
		"CC7.2": {"replica-a: decision_log.mode=async: answered before the record is on disk; a crash can lose up to 5000 records",
			"replica-b: decision_log.mode=sync", "serve configuration of log replica-a=" + good + " sha256 " + cfs[0].SHA256},
		"CC8.1": {"replica-a: policy bundle signature=bundles must be signed by /etc/agentauthz/bundle.pub", fmt.Sprintf("policy revisions that decided in the period=(none recorded): %d decisions", len(h.recs))},
	} {
		var got []string
		for _, f := range control(t, r, id).Evidence {
			got = append(got, f.Label+"="+f.Value)
		}
		all := strings.Join(got, "\n")
		for _, w := range want {
			if !strings.Contains(all, w) {
				t.Errorf("%s lacks %q:\n%s", id, w, all)
			}
		}
	}
	if c := control(t, r, "CC6.8"); c.Status != StatusGap || !strings.Contains(c.Summary, "disabled for other.example") {
		t.Errorf("CC6.8 with a tenant's revocation off: %s %s", c.Status, c.Summary)
	}
	// XFCC from any caller of a public gRPC address is a forgery waiting:
	// a gap; on loopback it is not.
	if c := control(t, r, "CC6.6"); c.Status != StatusGap || !strings.Contains(c.Summary, "xfcc trusted from any caller") {
		t.Errorf("CC6.6 with open XFCC: %s %s", c.Status, c.Summary)
	}
	local, err := ReadConfig(write("c.yaml", "grpc: {addr: \"127.0.0.1:9191\"}\nidentity: {sources: [xfcc]}\n"))
	if err != nil || len(local.OpenAssertion) != 0 {
		t.Errorf("loopback gRPC: %v %+v", err, local)
	}
	// Without configuration, each such control says it was not given.
	r = h.collect(t, nil)
	if v := fact(t, control(t, r, "CC6.6"), "serve configuration"); !strings.Contains(v, "not given") {
		t.Errorf("CC6.6 without configuration: %q", v)
	}
	if control(t, r, "CC6.8").Status != StatusEvidence {
		t.Errorf("CC6.8 without configuration: %+v", control(t, r, "CC6.8"))
	}
	// A configuration serve would refuse is refused here too.
	if _, err := ReadConfig(write("bad.yaml", "decision_log: {mdoe: sync}\n")); err == nil || !strings.Contains(err.Error(), "mdoe") {
		t.Errorf("bad config: %v", err)
	}
}

// TestAlertsFromTheChangeLog: CC7.1 reads the detector's signed alert rows
// and the responses to them from the change log.
func TestAlertsFromTheChangeLog(t *testing.T) {
	h := newHistory(t)
	raised := h.revokedAt.Add(time.Minute)
	*h.now = raised
	alert := func(id string) {
		d := fmt.Sprintf(`{"id":%q,"rule":"probing","agent":"spiffe://%s/agent/rogue","time":%q,"since":%q,"baseline":"0","observed":"3","deviation":"x","decisions":["dec-001"]}`,
			id, td, raised.Format(time.RFC3339Nano), raised.Format(time.RFC3339Nano))
		if err := h.a.RecordEvent(td, "rogue", "", alerts.EventAlert, alerts.Operator, d); err != nil {
			t.Fatal(err)
		}
	}
	alert("a1")
	alert("a2")
	*h.now = raised.Add(90 * time.Second)
	if err := h.a.RecordEvent(td, "rogue", "", alerts.EventAck, "bob", `{"alert":"a1","rule":"probing","note":"INC-7"}`); err != nil {
		t.Fatal(err)
	}
	r := h.collect(t, nil)
	c := control(t, r, "CC7.1")
	if c.Status != StatusEvidence || fact(t, c, "signed change log: alerts probing") != "2" ||
		fact(t, c, "signed change log: median time from alert to first response (ack, approve or dismiss)") != "1m30s" ||
		fact(t, c, "signed change log: alerts without a response yet") != "1" || !strings.Contains(c.Summary, "2 alerts in the signed change log in the period, 1 responded to") {
		t.Fatalf("CC7.1 %+v", c)
	}
	// Outside the period, none.
	r = h.collect(t, func(in *Inputs) { in.To = raised.Add(-time.Second) })
	if c := control(t, r, "CC7.1"); c.Status != StatusEvidence || !strings.Contains(c.Summary, "0 alerts") {
		t.Fatalf("CC7.1 before the alerts: %+v", c)
	}
}

// TestPolicyChangesReviewedBySimulation: CC8.1 shows the signed policy
// simulation runs, and each policy revision that decided after the first
// is reviewed only by a run recorded before its first decision.
func TestPolicyChangesReviewedBySimulation(t *testing.T) {
	h := newHistory(t)
	base := h.revokedAt.Add(time.Hour)
	record := func(at time.Time, rev string) {
		*h.now = at
		run := simrun.Run{Revision: rev, Read: 10, Replayed: 10, Unchanged: 9, NewlyDenied: 1, Gate: simrun.GatePass, ReportSHA256: strings.Repeat("ab", 32)}
		if err := h.a.RecordEvent("", "", "", simrun.Event, "ci-bot", run.Detail()); err != nil {
			t.Fatal(err)
		}
	}
	record(base.Add(30*time.Minute), "rev-2")          // before rev-2's first decision
	record(base.Add(3*time.Hour+time.Minute), "rev-3") // after rev-3's first decision: too late
	dirB := filepath.Join(h.dataDir, "log-b")
	l, err := decisionlog.Open(decisionlog.Options{Dir: dirB, KeyDir: filepath.Join(h.dataDir, "keys"), Name: "replica-b"})
	if err != nil {
		t.Fatal(err)
	}
	for i, rev := range []string{"rev-1", "rev-2", "rev-3"} {
		rec := decisionlog.Record{DecisionID: "p-" + rev, Time: base.Add(time.Duration(i) * time.Hour),
			Agent:    decisionlog.Agent{ID: "payer", Tenant: td, TrustLevel: "L3", CertSHA256: h.certOf["payer"]},
			Request:  decisionlog.Request{Operation: "payments:initiate"},
			Decision: decisionlog.Decision{Allowed: true, HTTPStatus: 200, Reasons: []string{"allowed"}, PolicyRevision: rev}}
		if _, err := l.Append(context.Background(), &rec); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	r := h.collect(t, func(in *Inputs) {
		in.Sources = append(in.Sources, DirSource{Dir: dirB, Keys: in.Sources[0].(DirSource).Keys})
	})
	c := control(t, r, "CC8.1")
	if c.Status != StatusGap || !strings.Contains(c.Summary, "without a signed simulation run before them: rev-3") {
		t.Fatalf("CC8.1 %s: %s", c.Status, c.Summary)
	}
	if v := fact(t, c, "policy changes in the period reviewed by a simulation run recorded before the revision's first decision"); v != "1 of 2 (reviewed: rev-2; not: rev-3)" {
		t.Errorf("reviews %q", v)
	}
	if v := fact(t, c, "signed policy simulation runs in the period (a policy change reviewed with its impact)"); !strings.Contains(v, "by ci-bot: revision rev-2, 10 decisions replayed, 0 newly allowed, 1 newly denied, gate pass") {
		t.Errorf("runs %q", v)
	}
	// Without runs, the fact says gap; one revision alone is no change.
	h2 := newHistory(t)
	c = control(t, h2.collect(t, nil), "CC8.1")
	if v := fact(t, c, "signed policy simulation runs in the period (a policy change reviewed with its impact)"); !strings.HasPrefix(v, "gap: none") || c.Status != StatusEvidence {
		t.Errorf("CC8.1 without runs or policy changes: %s %q", c.Status, v)
	}
}
