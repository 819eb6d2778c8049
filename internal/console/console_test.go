package console

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/control"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/evidence"
	"github.com/agentauthz/agentauthz/internal/recordstore"
	"github.com/agentauthz/agentauthz/internal/testenv"
)

// htmlPath is a request path with HTML in it, as a hostile agent would send.
const htmlPath = `/v1/<script>alert(1)</script><b>x</b>`

type env struct {
	t    *testing.T
	dir  string
	dsn  string // the inventory's PostgreSQL database; "": SQLite in dir
	auth *ca.Authority
	op   *control.OperatorCA
	srv  *httptest.Server
	pool *x509.CertPool
	con  *Console
	rs   *recordstore.Store
	// noPackKey serves the console with no evidence pack signing key.
	noPackKey bool
	// hold, when set, is called before a live-tail stream is served.
	hold atomic.Pointer[func(*http.Request)]
}

// newEnv runs the console as the control plane mounts it, on a real TLS
// listener, over a CA inventory with two agents and a record store holding
// their decisions.
func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvOn(t, "")
}

// One PostgreSQL cluster serves the package's tests, a database per test.
var pgShared testenv.Shared

func TestMain(m *testing.M) {
	code := m.Run()
	pgShared.Stop()
	os.Exit(code)
}

// eachStore runs f on a console whose inventory is SQLite in its data
// directory and on one whose inventory is a PostgreSQL database of its own.
func eachStore(t *testing.T, f func(t *testing.T, e *env)) {
	t.Run("sqlite", func(t *testing.T) { f(t, newEnvOn(t, "")) })
	t.Run("postgres", func(t *testing.T) { f(t, newEnvOn(t, pgShared.Database(t))) })
}

// openAuthority opens the inventory of dir, in the database dsn if set.
func openAuthority(t *testing.T, dir, dsn string) *ca.Authority {
	t.Helper()
	var opts []ca.Option
	if dsn != "" {
		opts = append(opts, ca.WithStore(dsn))
	}
	auth, err := ca.Open(dir, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { auth.Close() })
	return auth
}

// newEnvOn is newEnv with the inventory in the PostgreSQL database dsn
// ("": SQLite in the data directory).
func newEnvOn(t *testing.T, dsn string) *env {
	t.Helper()
	dir := t.TempDir()
	auth := openAuthority(t, dir, dsn)
	if _, err := auth.Init(ca.InitRequest{TrustDomain: "acme.test", Operator: "test"}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"payments-bot", "reports-bot"} {
		if _, err := auth.Issue(ca.IssueRequest{TrustDomain: "acme.test", AgentID: id, Trust: 2, Scopes: []string{"payments:initiate", "reports:read"},
			Owner: "team-" + id, TTL: 24 * time.Hour, Operator: "test"}); err != nil {
			t.Fatal(err)
		}
	}
	rs, err := recordstore.Open(context.Background(), filepath.Join(dir, "records.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rs.Close() })
	shipLog(t, rs)
	op, err := control.OpenOperatorCA(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(op.Cert)
	e := &env{t: t, dir: dir, dsn: dsn, auth: auth, op: op, pool: pool, rs: rs}
	e.serve()
	return e
}

// serve starts the console over e.auth on a new TLS listener.
func (e *env) serve() {
	t := e.t
	t.Helper()
	// The evidence pack's key, where control serve keeps it.
	key, err := evidence.LoadSigningKey(evidence.SigningKeyPath(e.dir))
	if err != nil {
		t.Fatal(err)
	}
	if e.noPackKey {
		key = nil
	}
	con, err := New(Config{Authority: e.auth, Records: e.rs, Auth: control.NewAuthenticator(e.op, nil, nil), PackKey: key})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	h := con.Handler()
	mux.Handle(Prefix, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hold := e.hold.Load(); hold != nil && r.URL.Path == "/ui/decisions/stream" {
			(*hold)(r)
		}
		h.ServeHTTP(w, r)
	}))
	srv := httptest.NewUnstartedServer(mux)
	cert, err := e.op.ServerCertificate([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS13}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	t.Cleanup(con.Stop)
	e.con, e.srv = con, srv
}

// instance is a second control-plane instance beside e: its own data
// directory, its own inventory connection to e's store (e.dsn), the same
// operator CA and record store. A browser's cookie jar sends its cookies to
// both (cookies ignore the port), as to instances behind one load balancer.
func (e *env) instance() *env {
	e.t.Helper()
	dir := e.t.TempDir()
	b := &env{t: e.t, dir: dir, dsn: e.dsn, auth: openAuthority(e.t, dir, e.dsn), op: e.op, pool: e.pool, rs: e.rs}
	b.serve()
	return b
}

// restart stops e's console and inventory connection and starts them again
// on the same data directory and store.
func (e *env) restart() {
	e.t.Helper()
	e.con.Stop()
	e.srv.Close()
	e.auth.Close()
	e.auth = openAuthority(e.t, e.dir, e.dsn)
	e.serve()
}

// shipLog writes real signed decision records of payments-bot, one with an
// HTML request path, and stores them as a replica would ship them.
func shipLog(t *testing.T, rs *recordstore.Store) {
	t.Helper()
	dir := t.TempDir()
	l, err := decisionlog.Open(decisionlog.Options{Dir: filepath.Join(dir, "log"), KeyDir: filepath.Join(dir, "keys"), Name: "replica-1"})
	if err != nil {
		t.Fatal(err)
	}
	keys := l.PublicKeys()
	for i := range 3 {
		rec := &decisionlog.Record{DecisionID: fmt.Sprintf("dec-%d", i), Time: time.Now().Add(time.Duration(i) * time.Second),
			Agent:    decisionlog.Agent{ID: "payments-bot", SPIFFEID: "spiffe://acme.test/agent/payments-bot", Tenant: "acme.test", TrustLevel: "L2"},
			Request:  decisionlog.Request{ID: fmt.Sprintf("req-%d", i), Method: "POST", Path: "/v1/payments", Operation: "payments:initiate"},
			Decision: decisionlog.Decision{Allowed: true, HTTPStatus: 200, Reasons: []string{"allowed"}}}
		if i == 2 {
			rec.Request.Path = htmlPath
			rec.Decision = decisionlog.Decision{Allowed: false, HTTPStatus: 403, Reasons: []string{"scope_missing"}}
		}
		if _, err := l.Append(context.Background(), rec); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	gs := logGroups(t, filepath.Join(dir, "log"))
	res, err := rs.Append(context.Background(), recordstore.Shipment{Log: "replica-1", Keys: keys, Head: 3, Groups: gs})
	if err != nil || res.Refused != nil || res.Stored != 3 {
		t.Fatalf("ship: %+v %v", res, err)
	}
}

// client is a browser-like HTTPS client: a cookie jar, no redirects
// followed, and optionally an operator certificate.
func (e *env) client(cert *tls.Certificate) *http.Client {
	jar, _ := cookiejar.New(nil)
	cfg := &tls.Config{RootCAs: e.pool, MinVersion: tls.VersionTLS13}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Jar: jar, Transport: &http.Transport{TLSClientConfig: cfg},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func (e *env) certFor(name string, role control.Role) *tls.Certificate {
	e.t.Helper()
	is, err := e.op.Issue(name, role, time.Hour)
	if err != nil {
		e.t.Fatal(err)
	}
	c, err := tls.X509KeyPair(is.CertPEM, is.KeyPEM)
	if err != nil {
		e.t.Fatal(err)
	}
	return &c
}

// signIn follows a one-time link like a browser: GET the page, POST its form.
func (e *env) signIn(name string, role control.Role) *http.Client {
	e.t.Helper()
	tok, err := CreateLink(e.auth, name, role, time.Minute, time.Now())
	if err != nil {
		e.t.Fatal(err)
	}
	c := e.client(nil)
	code, body := e.get(c, "/ui/login?token="+tok)
	if code != 200 || !strings.Contains(body, `value="`+tok+`"`) {
		e.t.Fatalf("login page: %d %s", code, body)
	}
	resp, err := c.PostForm(e.srv.URL+"/ui/login", url.Values{"token": {tok}})
	if err != nil {
		e.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		e.t.Fatalf("sign in: %d", resp.StatusCode)
	}
	var ck *http.Cookie
	for _, k := range resp.Cookies() {
		if k.Name == cookieName {
			ck = k
		}
	}
	if ck == nil || !ck.HttpOnly || !ck.Secure || ck.SameSite != http.SameSiteStrictMode || ck.Path != "/" {
		e.t.Fatalf("session cookie %+v", ck)
	}
	return c
}

func (e *env) get(c *http.Client, path string) (int, string) {
	e.t.Helper()
	resp, err := c.Get(e.srv.URL + path)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if csp := resp.Header.Get("Content-Security-Policy"); csp != CSP {
		e.t.Errorf("%s: CSP %q", path, csp)
	}
	return resp.StatusCode, string(b)
}

func (e *env) post(c *http.Client, path string, f url.Values) (int, string) {
	e.t.Helper()
	resp, err := c.PostForm(e.srv.URL+path, f)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf reads the CSRF token from a page's form.
func (e *env) csrf(c *http.Client, page string) string {
	e.t.Helper()
	_, body := e.get(c, page)
	m := csrfRE.FindStringSubmatch(body)
	if m == nil {
		e.t.Fatalf("%s: no csrf token in the page", page)
	}
	return m[1]
}

const agentPage = "/ui/agents/acme.test/payments-bot"

func TestSignInLinkIsSingleUse(t *testing.T) { eachStore(t, testSignInLinkIsSingleUse) }

func testSignInLinkIsSingleUse(t *testing.T, e *env) {
	tok, err := CreateLink(e.auth, "alice", control.RoleAuditor, time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	c := e.client(nil)
	if code, _ := e.post(c, "/ui/login", url.Values{"token": {tok}}); code != http.StatusSeeOther {
		t.Fatalf("first use: %d", code)
	}
	if code, body := e.post(e.client(nil), "/ui/login", url.Values{"token": {tok}}); code != http.StatusUnauthorized || !strings.Contains(body, "already used") {
		t.Fatalf("second use: %d %s", code, body)
	}
	// Expired links and made-up tokens are refused the same way.
	old, err := CreateLink(e.auth, "bob", control.RoleAuditor, time.Minute, time.Now().Add(-2*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	for _, tk := range []string{old, randomToken(), "../../etc/passwd", ""} {
		if code, _ := e.post(e.client(nil), "/ui/login", url.Values{"token": {tk}}); code != http.StatusUnauthorized {
			t.Errorf("token %q: %d", tk, code)
		}
	}
	// Creating a link removes the ones that expired unused.
	stale, err := CreateLink(e.auth, "stale", control.RoleAuditor, time.Minute, time.Now().Add(-2*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := CreateLink(e.auth, "carl", control.RoleAuditor, time.Minute, time.Now()); err != nil {
		t.Fatal(err)
	}
	// Claimed as of when it was still valid, it is gone all the same.
	if _, _, err := e.auth.ClaimConsoleLink(secretHash(stale), time.Now().Add(-2*time.Minute)); !errors.Is(err, ca.ErrNotFound) {
		t.Errorf("expired link not pruned: %v", err)
	}
	if _, err := CreateLink(e.auth, "r1", control.RoleReplica, time.Minute, time.Now()); err == nil {
		t.Error("a replica got a sign-in link")
	}
	if _, err := CreateLink(e.auth, "Bad Name", control.RoleAdmin, time.Minute, time.Now()); err == nil {
		t.Error("an invalid name got a sign-in link")
	}
	// The sign-in is in the change log under the operator's identity.
	ev, err := e.auth.Events("", "")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, x := range ev {
		found = found || (x.Event == "console_signin" && x.Operator == "alice (auditor)")
	}
	if !found {
		t.Errorf("no console_signin event for alice: %+v", ev)
	}
	// Signed out, the pages say how to sign in.
	if code, body := e.get(e.client(nil), "/ui/fleet"); code != http.StatusUnauthorized || !strings.Contains(body, "login-link") {
		t.Errorf("anonymous fleet: %d", code)
	}
}

// TestRoleMatrix checks that each role, signed in by link or by client
// certificate, sees and may change exactly what the API allows it.
func TestRoleMatrix(t *testing.T) {
	e := newEnv(t)
	type want struct{ fleet, agent, decisions, decision, forms, change int }
	cases := map[control.Role]want{
		control.RoleAuditor:   {200, 200, 200, 200, 0, 403},
		control.RoleResponder: {200, 200, 403, 403, 1, 303},
		control.RoleAdmin:     {200, 200, 200, 200, 1, 303},
		control.RoleReplica:   {403, 403, 403, 403, 0, 403},
	}
	for role, w := range cases {
		for _, how := range []string{"link", "certificate"} {
			if role == control.RoleReplica && how == "link" {
				continue // refused at CreateLink (TestSignInLinkIsSingleUse)
			}
			t.Run(string(role)+"/"+how, func(t *testing.T) {
				name := strings.ToLower(string(role)) + "-" + how
				var c *http.Client
				if how == "link" {
					c = e.signIn(name, role)
				} else {
					c = e.client(e.certFor(name, role))
				}
				for path, status := range map[string]int{"/ui/fleet": w.fleet, agentPage: w.agent, "/ui/decisions": w.decisions, "/ui/decisions/dec-0": w.decision} {
					if code, body := e.get(c, path); code != status {
						t.Errorf("GET %s: %d, want %d: %s", path, code, status, body)
					}
				}
				_, body := e.get(c, agentPage)
				if got := strings.Count(body, `/restrict"`); got != w.forms {
					t.Errorf("restrict forms on the agent page: %d, want %d", got, w.forms)
				}
				// The records section follows the API's record role.
				if w.agent == 200 && strings.Contains(body, "dec-0") != (w.decisions == 200) {
					t.Errorf("agent page shows decisions: %v, role %s", strings.Contains(body, "dec-0"), role)
				}
				tok := ""
				if m := csrfRE.FindStringSubmatch(body); m != nil {
					tok = m[1]
				}
				code, body := e.post(c, "/ui/agents/acme.test/reports-bot/restrict", url.Values{"csrf": {tok}, "reason": {"matrix " + name},
					"confirm": {"yes"}, "quarantine": {"yes"}})
				if code != w.change {
					t.Errorf("restrict: %d, want %d: %s", code, w.change, body)
				}
				r, err := e.auth.AgentRestriction("acme.test", "reports-bot")
				if err != nil {
					t.Fatal(err)
				}
				if (w.change == 303) != (r != nil && r.Reason == "matrix "+name) {
					t.Errorf("restriction after the form: %+v", r)
				}
			})
		}
	}
}

func TestCSRF(t *testing.T) {
	e := newEnv(t)
	for _, how := range []string{"link", "certificate"} {
		t.Run(how, func(t *testing.T) {
			var c *http.Client
			if how == "link" {
				c = e.signIn("rita", control.RoleResponder)
			} else {
				c = e.client(e.certFor("rita-cert", control.RoleResponder))
			}
			good := e.csrf(c, agentPage)
			for name, tok := range map[string][]string{"no token": nil, "empty": {""}, "wrong": {randomToken()}, "another session's": {e.csrf(e.signIn("other", control.RoleResponder), agentPage)}} {
				f := url.Values{"reason": {"csrf test"}, "confirm": {"yes"}, "quarantine": {"yes"}}
				if tok != nil {
					f["csrf"] = tok
				}
				code, body := e.post(c, agentPage+"/restrict", f)
				if code != http.StatusForbidden || !strings.Contains(body, "CSRF") {
					t.Errorf("%s: %d %s", name, code, body)
				}
			}
			if r, _ := e.auth.AgentRestriction("acme.test", "payments-bot"); r != nil {
				t.Fatalf("a refused form restricted the agent: %+v", r)
			}
			if code, _ := e.post(c, agentPage+"/restrict", url.Values{"csrf": {good}, "reason": {"ok"}, "confirm": {"yes"}, "quarantine": {"yes"}}); code != http.StatusSeeOther {
				t.Fatalf("with the token: %d", code)
			}
			if code, _ := e.post(c, agentPage+"/lift", url.Values{"csrf": {good}, "reason": {"ok"}, "confirm": {"yes"}}); code != http.StatusSeeOther {
				t.Fatalf("lift with the token: %d", code)
			}
		})
	}
	// A form from another site is refused even with the right token.
	c := e.signIn("olga", control.RoleResponder)
	for _, h := range [][2]string{{"Origin", "https://evil.example"}, {"Sec-Fetch-Site", "cross-site"}} {
		req, _ := http.NewRequest("POST", e.srv.URL+agentPage+"/restrict", strings.NewReader(url.Values{"csrf": {e.csrf(c, agentPage)},
			"reason": {"x"}, "confirm": {"yes"}, "quarantine": {"yes"}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set(h[0], h[1])
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("form with %s: %s: %d", h[0], h[1], resp.StatusCode)
		}
	}
	if r, _ := e.auth.AgentRestriction("acme.test", "payments-bot"); r != nil {
		t.Fatalf("a cross-origin form restricted the agent: %+v", r)
	}
	// Sign-out needs the token too, and ends the session.
	c = e.signIn("sam", control.RoleAuditor)
	if code, _ := e.post(c, "/ui/logout", nil); code != http.StatusForbidden {
		t.Errorf("logout without token: %d", code)
	}
	tok := e.csrf(c, "/ui/fleet")
	if code, _ := e.post(c, "/ui/logout", url.Values{"csrf": {tok}}); code != 200 {
		t.Errorf("logout: %d", code)
	}
	if code, _ := e.get(c, "/ui/fleet"); code != http.StatusUnauthorized {
		t.Errorf("after logout: %d", code)
	}
}

// TestRestrictThroughForm restricts, lifts and revokes through the forms and
// checks the inventory and the change log carry the operator's identity.
func TestRestrictThroughForm(t *testing.T) {
	e := newEnv(t)
	c := e.signIn("rosa", control.RoleResponder)
	tok := e.csrf(c, agentPage)
	// Without a reason or the confirmation nothing changes.
	for _, f := range []url.Values{
		{"csrf": {tok}, "reason": {"x"}, "quarantine": {"yes"}},
		{"csrf": {tok}, "reason": {"  "}, "confirm": {"yes"}, "quarantine": {"yes"}},
	} {
		if code, _ := e.post(c, agentPage+"/restrict", f); code != http.StatusBadRequest {
			t.Errorf("incomplete form %v: %d", f, code)
		}
	}
	// A restriction that takes nothing away is refused by the inventory,
	// with its message on the page.
	if code, body := e.post(c, agentPage+"/restrict", url.Values{"csrf": {tok}, "reason": {"x"}, "confirm": {"yes"}, "remove_scope": {"admin:all"}}); code != http.StatusBadRequest || !strings.Contains(body, "admin:all") {
		t.Errorf("bad scope: %d %s", code, body)
	}
	code, body := e.post(c, agentPage+"/restrict", url.Values{"csrf": {tok}, "reason": {"paging incident 42"}, "confirm": {"yes"},
		"max_trust": {"1"}, "remove_scope": {"payments:initiate"}, "until": {"2h"}})
	if code != http.StatusSeeOther {
		t.Fatalf("restrict: %d %s", code, body)
	}
	r, err := e.auth.AgentRestriction("acme.test", "payments-bot")
	if err != nil || r == nil {
		t.Fatalf("restriction: %+v %v", r, err)
	}
	if r.Operator != "rosa (responder)" || r.Reason != "paging incident 42" || r.MaxTrust == nil || *r.MaxTrust != 1 ||
		len(r.RemovedScopes) != 1 || r.RemovedScopes[0] != "payments:initiate" || r.Until == nil {
		t.Errorf("restriction %+v", r)
	}
	_, page := e.get(c, agentPage+"?done=restrict")
	for _, s := range []string{"Done: restrict.", "restricted", "paging incident 42", "rosa (responder)", "trust at most L1"} {
		if !strings.Contains(page, s) {
			t.Errorf("agent page lacks %q", s)
		}
	}
	if code, _ := e.post(c, agentPage+"/lift", url.Values{"csrf": {tok}, "reason": {"resolved"}, "confirm": {"yes"}}); code != http.StatusSeeOther {
		t.Fatalf("lift: %d", code)
	}
	if code, body := e.post(c, agentPage+"/revoke", url.Values{"csrf": {tok}, "reason": {"keyCompromise"}, "confirm": {"yes"}}); code != http.StatusSeeOther {
		t.Fatalf("revoke: %d %s", code, body)
	}
	d, err := e.auth.Show("acme.test", "payments-bot")
	if err != nil {
		t.Fatal(err)
	}
	if d.Agent.Status != "revoked" || d.Restriction != nil {
		t.Errorf("after revoke: %s %+v", d.Agent.Status, d.Restriction)
	}
	byEvent := map[string]string{}
	for _, ev := range d.Events {
		byEvent[ev.Event] = ev.Operator
	}
	for _, kind := range []string{"restrict", "lift", "revoke"} {
		found := false
		for ev, op := range byEvent {
			found = found || (strings.Contains(ev, kind) && op == "rosa (responder)")
		}
		if !found {
			t.Errorf("change log has no %s by rosa (responder): %v", kind, byEvent)
		}
	}
	// The fleet shows it revoked; the filter finds it.
	_, fleet := e.get(c, "/ui/fleet?status=revoked")
	if !strings.Contains(fleet, "payments-bot") || strings.Contains(fleet, "reports-bot") {
		t.Errorf("fleet?status=revoked: %s", fleet)
	}
	// A revoked agent offers no more actions.
	if _, page := e.get(c, agentPage); strings.Contains(page, `/restrict"`) {
		t.Error("revoked agent still has a restrict form")
	}
}

func TestFleetStatus(t *testing.T) {
	now := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	within := 7 * 24 * time.Hour
	active := ca.AgentSummary{Status: "active", NotAfter: now.Add(30 * 24 * time.Hour)}
	soon := ca.AgentSummary{Status: "active", NotAfter: now.Add(24 * time.Hour)}
	past := ca.AgentSummary{Status: "active", NotAfter: now.Add(-time.Second)}
	for _, tc := range []struct {
		c    ca.AgentSummary
		r    *ca.Restriction
		want string
	}{
		{active, nil, StatusActive},
		{soon, nil, StatusExpiring},
		{past, nil, StatusExpired},
		{ca.AgentSummary{Status: "expired", NotAfter: now.Add(-time.Hour)}, nil, StatusExpired},
		{ca.AgentSummary{Status: "revoked", NotAfter: now.Add(time.Hour)}, &ca.Restriction{Quarantined: true}, StatusRevoked},
		{active, &ca.Restriction{Quarantined: true}, StatusQuarantined},
		{soon, &ca.Restriction{}, StatusRestricted},
	} {
		if got := fleetStatus(tc.c, tc.r, now, within); got != tc.want {
			t.Errorf("%+v %+v: %s, want %s", tc.c, tc.r, got, tc.want)
		}
	}
}

// TestEscaping shows user-controlled strings as text: a request path with
// HTML from a decision record, and an agent id with a script in the URL.
func TestEscaping(t *testing.T) {
	e := newEnv(t)
	c := e.signIn("ada", control.RoleAdmin)
	const script = "<script>alert(1)</script>"
	for _, path := range []string{"/ui/decisions?outcome=denied", "/ui/decisions/dec-2", agentPage,
		"/ui/agents/acme.test/" + url.PathEscape(script), "/ui/decisions?agent=" + url.QueryEscape(script),
		"/ui/decisions/" + url.PathEscape(script), "/ui/" + url.PathEscape(script), "/ui/fleet?q=" + url.QueryEscape(script)} {
		_, body := e.get(c, path)
		if strings.Contains(body, "<script") || strings.Contains(body, "<b>x") {
			t.Errorf("%s: unescaped HTML in the page:\n%s", path, body)
		}
	}
	_, body := e.get(c, "/ui/decisions/dec-2")
	if !strings.Contains(body, "&lt;script&gt;alert(1)&lt;/script&gt;&lt;b&gt;x&lt;/b&gt;") {
		t.Errorf("decision page does not show the path as text:\n%s", body)
	}
	_, body = e.get(c, "/ui/agents/acme.test/"+url.PathEscape(script))
	if !strings.Contains(body, "&lt;script&gt;") {
		t.Errorf("unknown agent page does not show the id as text:\n%s", body)
	}
}

func TestDecisionSearch(t *testing.T) {
	e := newEnv(t)
	c := e.client(e.certFor("audrey", control.RoleAuditor))
	for q, want := range map[string][]string{
		"decision_id=dec-1":  {"dec-1"},
		"request_id=req-0":   {"dec-0"},
		"outcome=denied":     {"dec-2"},
		"reason=allowed":     {"dec-0", "dec-1"},
		"agent=reports-bot":  nil,
		"agent=payments-bot": {"dec-0", "dec-1", "dec-2"},
	} {
		code, body := e.get(c, "/ui/decisions?"+q)
		if code != 200 {
			t.Fatalf("%s: %d", q, code)
		}
		for _, id := range []string{"dec-0", "dec-1", "dec-2"} {
			in := false
			for _, w := range want {
				in = in || w == id
			}
			if got := strings.Contains(body, `/ui/decisions/`+id+`"`); got != in {
				t.Errorf("%s: %s listed %v, want %v", q, id, got, in)
			}
		}
	}
	if code, body := e.get(c, "/ui/decisions?since=yesterday"); code != http.StatusBadRequest || !strings.Contains(body, "RFC 3339") {
		t.Errorf("bad since: %d", code)
	}
	if code, _ := e.get(c, "/ui/decisions/nope"); code != http.StatusNotFound {
		t.Errorf("unknown decision: %d", code)
	}
	code, body := e.get(c, "/ui/decisions/dec-1")
	if code != 200 || !strings.Contains(body, "replica-1") || !strings.Contains(body, "req-1") || !strings.Contains(body, "payments:initiate") {
		t.Errorf("decision page: %d %s", code, body)
	}
}

// TestConsoleOffWithoutTLS: without an authenticator the console says it is
// off instead of serving anything.
func TestConsoleOffWithoutTLS(t *testing.T) {
	con, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(con.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/ui/fleet")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(b), "plain-http") {
		t.Errorf("%d %s", resp.StatusCode, b)
	}
}

// FuzzClaimLink: whatever token a browser posts, claiming it never panics
// and signs in only with the token that was issued.
func FuzzClaimLink(f *testing.F) {
	auth, err := ca.Open(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { auth.Close() })
	good, err := CreateLink(auth, "alice", control.RoleAuditor, time.Hour, time.Now())
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{"", "../../etc/passwd", strings.Repeat("A", 43), good[:42] + "=", "%00", randomToken()} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		op, err := claimLink(auth, tok, time.Now())
		if err == nil && (tok != good || op.Name != "alice") {
			t.Fatalf("token %q signed in as %+v", tok, op)
		}
	})
}

// logGroups reads a decision log as the group-commit batches a replica ships:
// each batch's records and the checkpoint that signs them.
func logGroups(t *testing.T, dir string) []recordstore.Group {
	t.Helper()
	r := decisionlog.NewReader(dir)
	defer r.Close()
	var gs []recordstore.Group
	var g recordstore.Group
	for {
		e, cp, err := r.NextOrCheckpoint()
		if errors.Is(err, io.EOF) {
			return gs
		}
		if err != nil {
			t.Fatal(err)
		}
		if cp != nil {
			g.Checkpoint = string(cp)
			gs, g = append(gs, g), recordstore.Group{}
			continue
		}
		g.Records = append(g.Records, e.Raw)
	}
}
