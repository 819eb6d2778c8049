package console

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/alerts"
	"github.com/agentauthz/agentauthz/internal/anomaly"
	"github.com/agentauthz/agentauthz/internal/control"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/recordstore"
)

// withAlerts gives e's console the anomaly detector (scope probing answered
// with a proposed quarantine) and ships a scope-probing burst of
// reports-bot from a second replica; it returns the alert's id once the
// detector has raised it.
func (e *env) withAlerts() string {
	t := e.t
	t.Helper()
	svc, err := alerts.New(alerts.Config{Authority: e.auth, Records: e.rs, Poll: 20 * time.Millisecond,
		Responses: alerts.Responses{anomaly.RuleScopeProbing: {Mode: alerts.ModePropose, Action: alerts.Action{Quarantine: true, ForSeconds: 3600}}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		svc.Close()
	})
	shipProbes(t, e.rs)
	svc.Wake()
	var id string
	for deadline := time.Now().Add(20 * time.Second); id == ""; time.Sleep(20 * time.Millisecond) {
		as, err := svc.List(context.Background(), alerts.Filter{Rule: anomaly.RuleScopeProbing})
		if err != nil {
			t.Fatal(err)
		}
		if len(as) == 1 && as[0].Logged {
			id = as[0].ID
		}
		if time.Now().After(deadline) {
			t.Fatal("no scope_probing alert from the detector")
		}
	}
	con, err := New(Config{Authority: e.auth, Records: e.rs, Alerts: svc, Auth: control.NewAuthenticator(e.op, nil, nil)})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(Prefix, con.Handler())
	srv := httptest.NewUnstartedServer(mux)
	cert, err := e.op.ServerCertificate([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS13}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	e.con, e.srv = con, srv
	return id
}

// shipProbes stores, as replica-2, three operations reports-bot was denied
// for lack of scope within a minute.
func shipProbes(t *testing.T, rs *recordstore.Store) {
	t.Helper()
	dir := t.TempDir()
	l, err := decisionlog.Open(decisionlog.Options{Dir: filepath.Join(dir, "log"), KeyDir: filepath.Join(dir, "keys"), Name: "replica-2"})
	if err != nil {
		t.Fatal(err)
	}
	keys := l.PublicKeys()
	for i, op := range []string{"accounts:close", "limits:raise", "refunds:issue"} {
		rec := &decisionlog.Record{DecisionID: fmt.Sprintf("probe-%d", i), Time: time.Now().Add(time.Duration(i) * 10 * time.Second),
			Agent:    decisionlog.Agent{ID: "reports-bot", SPIFFEID: "spiffe://acme.test/agent/reports-bot", Tenant: "acme.test", TrustLevel: "L2"},
			Request:  decisionlog.Request{ID: fmt.Sprintf("preq-%d", i), Method: "POST", Path: "/v1/" + op, Operation: op},
			Decision: decisionlog.Decision{Allowed: false, HTTPStatus: 403, Reasons: []string{"scope_missing"}}}
		if _, err := l.Append(context.Background(), rec); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	gs := logGroups(t, filepath.Join(dir, "log"))
	if res, err := rs.Append(context.Background(), recordstore.Shipment{Log: "replica-2", Keys: keys, Head: 3, Groups: gs}); err != nil || res.Refused != nil {
		t.Fatalf("ship: %+v %v", res, err)
	}
}

// TestAlertsPage: the Alerts page lists the detector's alert with its
// explanation and links to the decisions behind it; an auditor reads it
// without forms, a responder approves the proposed quarantine only with a
// reason, the confirmation and the CSRF token, and the approval is applied
// and recorded with the responder; the agent page shows the alert.
func TestAlertsPage(t *testing.T) {
	e := newEnv(t)
	if code, body := e.get(e.client(e.certFor("audrey", control.RoleAuditor)), "/ui/alerts"); code != http.StatusServiceUnavailable || !strings.Contains(body, "Anomaly detection off") {
		t.Errorf("alerts page without a detector: %d %s", code, body)
	}
	id := e.withAlerts()
	page := "/ui/alerts/" + id

	aud := e.client(e.certFor("audrey", control.RoleAuditor))
	code, body := e.get(aud, "/ui/alerts?open=yes")
	if code != 200 || !strings.Contains(body, page) || !strings.Contains(body, "scope_probing") || !strings.Contains(body, "propose pending") {
		t.Errorf("alerts list: %d %s", code, body)
	}
	code, body = e.get(aud, page)
	for _, want := range []string{"Baseline", "distinct operations denied", `href="/ui/decisions/probe-2"`, `href="/ui/agents/acme.test/reports-bot"`, "signed row written", "pending"} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("alert page lacks %q: %d", want, code)
		}
	}
	if strings.Contains(body, "/approve\"") {
		t.Error("an auditor's alert page has the approve form")
	}
	if code, _ := e.post(aud, page+"/approve", url.Values{"reason": {"x"}, "confirm": {"yes"}}); code != http.StatusForbidden {
		t.Errorf("auditor approve: %d", code)
	}

	c := e.signIn("rosa", control.RoleResponder)
	tok := e.csrf(c, page)
	for _, f := range []url.Values{
		{"csrf": {tok}, "reason": {"confirmed"}},                  // no confirmation
		{"csrf": {tok}, "reason": {" "}, "confirm": {"yes"}},      // no reason
		{"csrf": {"forged"}, "reason": {"x"}, "confirm": {"yes"}}, // bad token
		{"reason": {"confirmed"}, "confirm": {"yes"}},             // no token
		{"csrf": {tok}, "reason": {"a\x1bb"}, "confirm": {"yes"}}, // control character
	} {
		if code, _ := e.post(c, page+"/approve", f); code != http.StatusBadRequest && code != http.StatusForbidden {
			t.Errorf("approve %v: %d", f, code)
		}
	}
	if r, _ := e.auth.AgentRestriction("acme.test", "reports-bot"); r != nil {
		t.Fatalf("a refused form restricted the agent: %+v", r)
	}
	if code, body := e.post(c, page+"/approve", url.Values{"csrf": {tok}, "reason": {"owner confirms"}, "confirm": {"yes"}}); code != http.StatusSeeOther {
		t.Fatalf("approve: %d %s", code, body)
	}
	r, err := e.auth.AgentRestriction("acme.test", "reports-bot")
	if err != nil || r == nil || !r.Quarantined || r.Operator != "rosa (responder)" || r.Until == nil {
		t.Fatalf("after approval: %+v %v", r, err)
	}
	_, body = e.get(c, page+"?done=approve")
	for _, want := range []string{"Done: approve.", "approved", "rosa (responder)", "owner confirms"} {
		if !strings.Contains(body, want) {
			t.Errorf("alert page after approval lacks %q", want)
		}
	}
	if strings.Contains(body, "/dismiss\"") {
		t.Error("a decided response still offers dismiss")
	}
	if code, _ := e.post(c, page+"/dismiss", url.Values{"csrf": {tok}, "reason": {"late"}, "confirm": {"yes"}}); code != http.StatusBadRequest {
		t.Errorf("dismiss after approval: %d", code)
	}
	d, err := e.auth.Show("acme.test", "reports-bot")
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]string{}
	for _, ev := range d.Events {
		kinds[ev.Event] = ev.Operator
	}
	if kinds[alerts.EventAlert] != alerts.Operator || kinds[alerts.EventProposed] != alerts.Operator || kinds[alerts.EventApprove] != "rosa (responder)" || kinds["restrict"] != "rosa (responder)" {
		t.Errorf("change log of reports-bot: %v", kinds)
	}
	if _, body := e.get(c, "/ui/agents/acme.test/reports-bot"); !strings.Contains(body, page) || !strings.Contains(body, "propose approved") {
		t.Errorf("agent page lacks the alert")
	}
	if _, body := e.get(c, agentPage); !strings.Contains(body, "No alert about this agent.") {
		t.Errorf("payments-bot's page lists alerts")
	}
}
