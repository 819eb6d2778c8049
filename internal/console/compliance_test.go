package console

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/control"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/evidence"
)

// TestCompliance: the four questions answered from the store and the
// inventory, with the links that lead to the evidence.
func TestCompliance(t *testing.T) {
	e := newEnv(t)
	// reports-bot is revoked; 1.5 s later a second replica denies it.
	if _, err := e.auth.Revoke("acme.test", "reports-bot", ca.ReasonKeyCompromise, "rosa (responder)"); err != nil {
		t.Fatal(err)
	}
	d, _ := e.auth.Show("acme.test", "reports-bot")
	var at time.Time
	for _, ev := range d.Events {
		if ev.Event == "agent_revoke" || ev.Event == "revoke" {
			at = ev.At
		}
	}
	if at.IsZero() {
		t.Fatalf("no revocation event: %+v", d.Events)
	}
	shipRecords(t, e.rs, "replica-2", []*decisionlog.Record{{DecisionID: "after-revoke", Time: at.Add(1500 * time.Millisecond),
		Agent:    decisionlog.Agent{ID: "reports-bot", SPIFFEID: "spiffe://acme.test/agent/reports-bot", Tenant: "acme.test", TrustLevel: "L2"},
		Request:  decisionlog.Request{ID: "r-after", Method: "GET", Path: "/v1/reports", Operation: "reports:read"},
		Decision: decisionlog.Decision{Allowed: false, HTTPStatus: 403, Reasons: []string{"agent_revoked"}}}})

	c := e.signIn("audrey", control.RoleAuditor)
	code, body := e.get(c, "/ui/compliance")
	if code != 200 {
		t.Fatalf("compliance: %d\n%s", code, body)
	}
	for _, want := range []string{
		// 1: the newest decision and its agent.
		`the newest decision: <a href="/ui/decisions/dec-2">`,
		// 2: the logs, with their whole-log verification.
		`<a href="/ui/compliance/verify?log=replica-1">`, `<td><code>replica-1</code></td><td>3</td>`,
		// 3: denials by reason, and the matrix: payments-bot made 2
		// allowed and 1 denied payments:initiate, and never used its
		// reports:read scope.
		`reason=scope_missing">scope_missing</a></td><td>1</td>`, `reason=agent_revoked">agent_revoked</a></td><td>1</td>`,
		`operation=payments%3ainitiate">2 / 1</a>`,
		// 4: the revocation, by whom, and 1.5 s to the first denial.
		`rosa (responder)`, `<code>replica-2</code>: 1.5s`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("compliance page lacks %s", want)
		}
	}
	if m := regexp.MustCompile(`(?s)<th scope="row"><a href="/ui/agents/acme.test/payments-bot">.*?</tr>`).FindString(body); !strings.Contains(m, "<code>reports:read</code>") {
		t.Errorf("payments-bot's unused scope reports:read not listed: %s", m)
	}
	for path, want := range map[string]string{
		"/ui/compliance/verify?log=replica-1":    "Verified: 3 records",
		"/ui/compliance/verify?changelog=1":      "The change log verifies",
		"/ui/compliance?days=1":                  `<strong aria-current="true">1 days</strong>`,
		"/ui/compliance/verify?log=nope":         "could not be read",
		"/ui/compliance/verify?log=%3Cscript%3E": "&lt;script&gt;",
	} {
		if _, body := e.get(c, path); !strings.Contains(body, want) {
			t.Errorf("%s: no %q in\n%s", path, want, body)
		}
	}

	// The evidence pack, as JSON: the controls, from this store.
	tok := e.csrf(c, "/ui/compliance")
	if code, _ := e.post(c, "/ui/compliance/evidence", url.Values{"days": {"7"}, "format": {"json"}}); code != http.StatusForbidden {
		t.Errorf("evidence pack without a CSRF token: %d", code)
	}
	resp, err := c.PostForm(e.srv.URL+"/ui/compliance/evidence", url.Values{"csrf": {tok}, "days": {"7"}, "format": {"json"}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/zip" ||
		!regexp.MustCompile(`^attachment; filename="evidence-[0-9TZ-]+\.zip"$`).MatchString(resp.Header.Get("Content-Disposition")) {
		t.Fatalf("evidence pack: %d %v %.300s", resp.StatusCode, resp.Header, b)
	}
	pack, sig, pub := unzipPack(t, b)
	// Signed with the control plane's key, checked as report-verify checks.
	if err := evidence.Verify(pack, sig, pub); err != nil {
		t.Fatalf("the downloaded pack does not verify: %v", err)
	}
	key, err := evidence.LoadSigningKey(evidence.SigningKeyPath(e.dir))
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := evidence.Sign(key, nil); !bytes.Equal(pub, want.PubPEM) {
		t.Errorf("the pack's key is not the control plane's:\n%s", pub)
	}
	for _, i := range []int{0, len(pack) / 2, len(pack) - 1} {
		bad := bytes.Clone(pack)
		bad[i] ^= 1
		if err := evidence.Verify(bad, sig, pub); !errors.Is(err, evidence.ErrSignature) {
			t.Errorf("the pack with byte %d changed: %v", i, err)
		}
	}
	var rep evidence.Report
	if err := json.Unmarshal(pack, &rep); err != nil {
		t.Fatalf("evidence pack: %v %.300s", err, pack)
	}
	if len(rep.Controls) == 0 || len(rep.Logs) != 2 || !rep.Logs[0].Verified || len(rep.Revocations) != 1 || !strings.Contains(rep.Logs[0].Server, "127.0.0.1") {
		t.Errorf("evidence pack: %d controls, logs %+v, %d revocations", len(rep.Controls), rep.Logs, len(rep.Revocations))
	}
	evs, _ := e.auth.Events("", "")
	if last := evs[len(evs)-1]; last.Event != "console_evidence" || last.Operator != "audrey (auditor)" {
		t.Errorf("evidence pack not in the change log: %+v", last)
	}

	r := e.signIn("rosa", control.RoleResponder)
	for _, path := range []string{"/ui/compliance", "/ui/compliance/verify?log=replica-1"} {
		if code, _ := e.get(r, path); code != http.StatusForbidden {
			t.Errorf("responder: %s %d", path, code)
		}
	}
}

// TestPrepareCompliance: one pass makes the window of each of the page's
// periods, so the page's first reader finds it made; a second pass makes
// none.
func TestPrepareCompliance(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for pass := range 2 {
		now := e.con.prepareCompliance(ctx)
		for _, days := range complianceDays {
			made, err := e.con.cfg.Records.PrepareWindow(ctx, complianceSince(now, days))
			if err != nil || made {
				t.Fatalf("pass %d: the %d-day window was not there yet (%v)", pass+1, days, err)
			}
		}
	}
}
