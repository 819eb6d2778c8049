package alerts

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/agentauthz/agentauthz/internal/anomaly"
	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/recordstore"
	"github.com/agentauthz/agentauthz/internal/testenv"
)

const td = "acme.test"

// One PostgreSQL cluster serves every test of the package, a new database
// per test.
var pgShared testenv.Shared

func TestMain(m *testing.M) {
	code := m.Run()
	pgShared.Stop()
	os.Exit(code)
}

// eachStore runs f on the SQLite stores of a data directory (dsn "") and on
// a fresh PostgreSQL database holding the inventory, the record store and
// the alert store, as `control serve --store postgres://…` keeps them: the
// same behaviour is required of both.
func eachStore(t *testing.T, f func(t *testing.T, dsn string)) {
	t.Run("sqlite", func(t *testing.T) { f(t, "") })
	t.Run("postgres", func(t *testing.T) { f(t, pgShared.Database(t)) })
}

// fixture is a control plane's inventory and record store, and a replica's
// decision log that ships to it.
type fixture struct {
	t     *testing.T
	dir   string
	dsn   string // the PostgreSQL database of every store, or "" for SQLite files
	auth  *ca.Authority
	store *recordstore.Store
	log   *decisionlog.Log
	keys  decisionlog.KeySet
	n     int
	base  time.Time
}

func newFixture(t *testing.T, dsn string, agents ...string) *fixture {
	t.Helper()
	dir := t.TempDir()
	var opts []ca.Option
	if dsn != "" {
		opts = append(opts, ca.WithStore(dsn))
	}
	auth, err := ca.Open(filepath.Join(dir, "control"), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { auth.Close() })
	if _, err := auth.Init(ca.InitRequest{TrustDomain: td, Operator: "admin"}); err != nil {
		t.Fatal(err)
	}
	for _, a := range agents {
		if _, err := auth.Issue(ca.IssueRequest{TrustDomain: td, AgentID: a, Trust: 3, Scopes: []string{"payments:read", "payments:initiate"},
			TTL: 24 * time.Hour, Operator: "admin"}); err != nil {
			t.Fatal(err)
		}
	}
	storeDSN := cmp.Or(dsn, filepath.Join(dir, "control", "records.db"))
	store, err := recordstore.Open(context.Background(), storeDSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	l, err := decisionlog.Open(decisionlog.Options{Dir: filepath.Join(dir, "replica", "log"), KeyDir: filepath.Join(dir, "replica", "keys"), Name: "replica-1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return &fixture{t: t, dir: dir, dsn: dsn, auth: auth, store: store, log: l, keys: l.PublicKeys(), base: time.Now().UTC().Truncate(time.Second)}
}

// decide appends one decision of agent on op to the replica's log.
func (f *fixture) decide(agent, op string, allowed bool, reason string, at time.Duration) {
	f.t.Helper()
	rec := &decisionlog.Record{
		DecisionID: fmt.Sprintf("d-%04d", f.n),
		Time:       f.base.Add(at),
		Agent:      decisionlog.Agent{ID: agent, SPIFFEID: "spiffe://" + td + "/agent/" + agent, Tenant: td, TrustLevel: "L3"},
		Request:    decisionlog.Request{ID: fmt.Sprintf("r-%04d", f.n), Method: "POST", Path: "/v1/" + op, Operation: op, Source: "10.0.0.7:4000"},
		Decision:   decisionlog.Decision{Allowed: allowed, HTTPStatus: 200, Reasons: []string{reason}},
	}
	if !allowed {
		rec.Decision.HTTPStatus = 403
	}
	f.n++
	if _, err := f.log.Append(context.Background(), rec); err != nil {
		f.t.Fatal(err)
	}
}

// probe is a scope-probing burst: three operations denied scope_missing
// within a minute.
func (f *fixture) probe(agent string, at time.Duration) {
	for i, op := range []string{"accounts:close", "limits:raise", "refunds:issue"} {
		f.decide(agent, op, false, "scope_missing", at+time.Duration(i)*10*time.Second)
	}
}

// ship sends everything the log holds that the store does not, as the
// replica's shipper does (verified by the store).
func (f *fixture) ship() {
	f.t.Helper()
	cur, err := f.store.LogCursor(context.Background(), "replica-1")
	if err != nil {
		f.t.Fatal(err)
	}
	r := decisionlog.NewReader(filepath.Join(f.dir, "replica", "log"))
	defer r.Close()
	var groups []recordstore.Group
	var g recordstore.Group
	idx := uint64(0)
	for {
		e, cp, err := r.NextOrCheckpoint()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			f.t.Fatal(err)
		}
		if cp != nil {
			if idx > cur.Size {
				g.Checkpoint = string(cp)
				groups = append(groups, g)
			}
			g = recordstore.Group{}
			continue
		}
		idx++
		g.Records = append(g.Records, e.Raw)
	}
	res, err := f.store.Append(context.Background(), recordstore.Shipment{Log: "replica-1", Keys: f.keys, Head: idx, Groups: groups})
	if err != nil || res.Refused != nil {
		f.t.Fatalf("ship: %v %+v", err, res)
	}
}

func (f *fixture) service(responses Responses) *Service {
	f.t.Helper()
	s, err := New(Config{Authority: f.auth, Records: f.store, Store: f.dsn, Responses: responses, SaveEvery: time.Hour})
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { s.Close() })
	return s
}

func step(t *testing.T, s *Service) {
	t.Helper()
	for {
		more, err := s.step(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if !more {
			return
		}
	}
}

func (f *fixture) events(agent, kind string) []ca.Event {
	f.t.Helper()
	evs, err := f.auth.Events(td, agent)
	if err != nil {
		f.t.Fatal(err)
	}
	var out []ca.Event
	for _, e := range evs {
		if e.Event == kind {
			out = append(out, e)
		}
	}
	return out
}

func onlyAlert(t *testing.T, s *Service, agent string) Alert {
	t.Helper()
	as, err := s.List(context.Background(), Filter{Agent: agent})
	if err != nil {
		t.Fatal(err)
	}
	if len(as) != 1 {
		t.Fatalf("alerts of %s: %d, want 1: %+v", agent, len(as), as)
	}
	return as[0]
}

// TestAutoResponseQuarantinesAndSurvivesRestart: a scope-probing burst
// shipped by a replica raises an explained alert in the control plane, a
// signed change-log row, and (auto) a quarantine with an expiry and an
// open review. After a restart without a saved state the same records are
// read again: no second alert, no second change-log row.
func TestAutoResponseQuarantinesAndSurvivesRestart(t *testing.T) {
	eachStore(t, testAutoResponseQuarantinesAndSurvivesRestart)
}

func testAutoResponseQuarantinesAndSurvivesRestart(t *testing.T, dsn string) {
	f := newFixture(t, dsn, "bot-1", "bot-2")
	f.decide("bot-2", "payments:read", true, "allowed", 0)
	f.probe("bot-1", time.Second)
	f.ship()
	_, rule, err := ParseResponse("scope_probing=auto:quarantine:2h")
	if err != nil {
		t.Fatal(err)
	}
	s := f.service(Responses{anomaly.RuleScopeProbing: rule})
	step(t, s)

	a := onlyAlert(t, s, "spiffe://acme.test/agent/bot-1")
	if a.Alert.Rule != anomaly.RuleScopeProbing || len(a.Alert.DecisionIDs) != 3 || a.Alert.Baseline == "" || a.Alert.Observed == "" || !a.Logged {
		t.Errorf("alert %+v", a)
	}
	if r := a.Response; r == nil || r.Mode != ModeAuto || r.State != StateApplied || r.Until == nil || !a.Open() {
		t.Fatalf("response %+v", a.Response)
	}
	if d := time.Until(*a.Response.Until); d < 119*time.Minute || d > 121*time.Minute {
		t.Errorf("until %v from now, want 2h", d)
	}
	rs, err := f.auth.AgentRestriction(td, "bot-1")
	if err != nil || rs == nil || !rs.Quarantined || rs.Operator != Operator || !strings.Contains(rs.Reason, a.ID) {
		t.Fatalf("restriction %+v %v", rs, err)
	}
	if rs, _ := f.auth.AgentRestriction(td, "bot-2"); rs != nil {
		t.Errorf("bot-2 restricted: %+v", rs)
	}
	if ev := f.events("bot-1", EventAlert); len(ev) != 1 || !strings.Contains(ev[0].Detail, `"id":"`+a.ID+`"`) || !strings.Contains(ev[0].Detail, "d-0001") {
		t.Fatalf("alert rows %+v", ev)
	}
	if ev := f.events("bot-1", EventApplied); len(ev) != 1 || !strings.Contains(ev[0].Detail, a.ID) {
		t.Errorf("applied rows %+v", ev)
	}
	if ev := f.events("bot-1", "restrict"); len(ev) != 1 || !strings.Contains(ev[0].Detail, a.ID) {
		t.Errorf("restrict rows %+v", ev)
	}

	// A crash before any save: a new instance reads the records again
	// once the crashed one's lease has run out.
	s.Close()
	if _, err := s2lease(f); err != nil {
		t.Fatal(err)
	}
	s2 := f.service(Responses{anomaly.RuleScopeProbing: rule})

	step(t, s2)
	if s2.det == nil || s2.cursors["replica-1"] != uint64(f.n) {
		t.Fatalf("the new instance did not read the records again: %v", s2.cursors)
	}
	onlyAlert(t, s2, "spiffe://acme.test/agent/bot-1")
	if ev := f.events("bot-1", EventAlert); len(ev) != 1 {
		t.Errorf("%d alert rows after the restart, want 1", len(ev))
	}
	if ev := f.events("bot-1", "restrict"); len(ev) != 1 {
		t.Errorf("%d restrict rows after the restart, want 1", len(ev))
	}
	// Saved state: the next instance resumes at the cursor.
	if err := s2.stop(); err != nil {
		t.Fatal(err)
	}
	s2.Close()
	f.probe("bot-2", 2*time.Minute)
	f.ship()
	s3 := f.service(nil)
	step(t, s3)
	if got := s3.cursors["replica-1"]; got != uint64(f.n) {
		t.Errorf("cursor %d, want %d", got, f.n)
	}
	b := onlyAlert(t, s3, "spiffe://acme.test/agent/bot-2")
	if b.Response != nil {
		t.Errorf("notify rule gave a response: %+v", b.Response)
	}
	if rs, _ := f.auth.AgentRestriction(td, "bot-2"); rs != nil {
		t.Errorf("notify restricted bot-2: %+v", rs)
	}

	// The review: dismissing undoes the quarantine, recorded with the operator.
	if _, err := s3.Approve(context.Background(), a.ID, "alice (responder)", ""); !errors.Is(err, ErrInvalid) {
		t.Errorf("approve without a reason: %v", err)
	}
	d, err := s3.Dismiss(context.Background(), a.ID, "alice (responder)", "load test by the payments team")
	if err != nil {
		t.Fatal(err)
	}
	if d.Response.State != StateDismissed || d.Response.By != "alice (responder)" {
		t.Errorf("dismissed %+v", d.Response)
	}
	if rs, _ := f.auth.AgentRestriction(td, "bot-1"); rs != nil {
		t.Errorf("still restricted after dismiss: %+v", rs)
	}
	if ev := f.events("bot-1", EventDismiss); len(ev) != 1 || ev[0].Operator != "alice (responder)" || !strings.Contains(ev[0].Detail, "load test") {
		t.Errorf("dismiss rows %+v", ev)
	}
	if _, err := s3.Dismiss(context.Background(), a.ID, "bob (responder)", "again"); !errors.Is(err, ErrConflict) {
		t.Errorf("second dismiss: %v", err)
	}
	if _, err := s3.Ack(context.Background(), a.ID, "alice (responder)", "false positive"); err != nil {
		t.Fatal(err)
	}
	if _, err := s3.Ack(context.Background(), a.ID, "bob (responder)", "again"); !errors.Is(err, ErrConflict) {
		t.Errorf("second ack: %v", err)
	}
	if open, _ := s3.List(context.Background(), Filter{Open: true}); len(open) != 1 || open[0].ID != b.ID {
		t.Errorf("open alerts %+v, want only %s", open, b.ID)
	}
	if res, err := f.auth.VerifyChangeLog(changeLogKey(t, f)); err != nil || res.Problem != nil {
		t.Errorf("change log: %+v %v", res, err)
	}
}

// TestProposeWaitsForApproval: a proposed restriction changes nothing until
// a responder approves it; it is then merged with the agent's restriction.
func TestProposeWaitsForApproval(t *testing.T) { eachStore(t, testProposeWaitsForApproval) }

func testProposeWaitsForApproval(t *testing.T, dsn string) {
	f := newFixture(t, dsn, "bot-1")
	two := 2
	if _, err := f.auth.Restrict(ca.RestrictRequest{TrustDomain: td, AgentID: "bot-1", RemoveScopes: []string{"payments:initiate"},
		Reason: "INC-1", Operator: "alice (responder)"}); err != nil {
		t.Fatal(err)
	}
	f.probe("bot-1", 0)
	f.ship()
	s := f.service(Responses{anomaly.RuleScopeProbing: {Mode: ModePropose, Action: Action{MaxTrust: &two, ForSeconds: 1800}}})
	step(t, s)
	a := onlyAlert(t, s, "bot-1")
	if a.Response == nil || a.Response.State != StatePending {
		t.Fatalf("response %+v", a.Response)
	}
	if rs, _ := f.auth.AgentRestriction(td, "bot-1"); rs == nil || rs.MaxTrust != nil || rs.Reason != "INC-1" {
		t.Fatalf("a proposal changed the restriction: %+v", rs)
	}
	if ev := f.events("bot-1", EventProposed); len(ev) != 1 {
		t.Errorf("proposed rows %+v", ev)
	}
	ap, err := s.Approve(context.Background(), a.ID, "bob (responder)", "confirmed with the owner")
	if err != nil {
		t.Fatal(err)
	}
	rs, _ := f.auth.AgentRestriction(td, "bot-1")
	if rs == nil || rs.MaxTrust == nil || *rs.MaxTrust != 2 || len(rs.RemovedScopes) != 1 || rs.Until != nil || rs.Operator != "bob (responder)" {
		t.Fatalf("approved restriction %+v (want max trust L2 merged with the permanent scope removal)", rs)
	}
	if ap.Response.State != StateApproved || ap.Response.Prev == nil || ap.Open() {
		t.Errorf("approved %+v open=%v", ap.Response, ap.Open())
	}
	if ev := f.events("bot-1", EventApprove); len(ev) != 1 || ev[0].Operator != "bob (responder)" {
		t.Errorf("approve rows %+v", ev)
	}
}

// TestLease: a second instance on the same alert store stands by.
func TestLease(t *testing.T) { eachStore(t, testLease) }

func testLease(t *testing.T, dsn string) {
	f := newFixture(t, dsn, "bot-1")
	f.probe("bot-1", 0)
	f.ship()
	s1, s2 := f.service(nil), f.service(nil)
	step(t, s1)
	step(t, s2)
	if s2.det != nil {
		t.Error("the second instance runs the detector while the first holds the lease")
	}
	if err := s1.stop(); err != nil {
		t.Fatal(err)
	}
	step(t, s2)
	if s2.det == nil || s2.cursors["replica-1"] != uint64(f.n) {
		t.Errorf("the second instance did not take over at the saved cursor: %v", s2.cursors)
	}
	onlyAlert(t, s2, "bot-1")
}

func TestParseResponse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string
	}{
		{"scope_probing=auto:quarantine:1h", "auto quarantine for 1h0m0s"},
		{"scope_probing=auto", "auto quarantine for 1h0m0s"},
		{"new_source_network=propose:max-trust=L1:4h", "propose max trust L1 for 4h0m0s"},
		{"rate_burst=propose:remove-scope=payments:initiate,refunds:issue:30m", "propose remove scopes payments:initiate,refunds:issue for 30m0s"},
		{"rate_burst=propose:remove-scope=payments:initiate", "propose remove scopes payments:initiate for 1h0m0s"},
		{"off_hours=notify", "notify quarantine for 1h0m0s"},
	} {
		_, r, err := ParseResponse(tc.in)
		if err != nil {
			t.Errorf("%s: %v", tc.in, err)
			continue
		}
		if r.Mode == ModeNotify {
			r.Action.Quarantine = true
		}
		if got := r.Mode + " " + r.Action.String(); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.in, got, tc.want)
		}
	}
	for _, bad := range []string{"scope_probing", "nope=auto", "scope_probing=block", "scope_probing=auto:max-trust=L9",
		"scope_probing=auto:quarantine:200h", "identity_failures=auto", "off_hours=notify:quarantine", "scope_probing=auto:remove-scope=",
		"scope_probing=auto:nonsense"} {
		if _, _, err := ParseResponse(bad); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
	if _, err := ParseResponses([]string{"off_hours=notify", "off_hours=auto"}); err == nil {
		t.Error("a rule given twice was accepted")
	}
}

func TestAlertDetailFits(t *testing.T) {
	long := strings.Repeat("é", 2000)
	a := &Alert{ID: "abc", Alert: anomaly.Alert{Rule: "scope_probing", Agent: long, Key: long, Baseline: long, Observed: long + "\x7f",
		Deviation: long, DecisionIDs: []string{long, long, long, long, long}}}
	d := alertDetail(a)
	if len(d) > maxDetail || strings.ContainsRune(d, 0x7f) || !strings.Contains(d, `"id":"abc"`) {
		t.Errorf("detail of %d bytes: %.200s", len(d), d)
	}
}

func changeLogKey(t *testing.T, f *fixture) ed25519.PublicKey {
	t.Helper()
	b, err := os.ReadFile(ca.ChangeLogKeyPath(f.auth.DataDir()))
	if err != nil {
		t.Fatal(err)
	}
	k, err := ca.ParseChangeLogKey(b)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// s2lease ends every lease on the fixture's alert store, as its running out
// after a crash would.
func s2lease(f *fixture) (int64, error) {
	d, err := openDB(filepath.Join(f.auth.DataDir(), "alerts.db"), f.dsn)
	if err != nil {
		return 0, err
	}
	defer d.sql.Close()
	res, err := d.sql.Exec(`UPDATE lease SET until_us = 0`)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// FuzzParseResponse: any --respond value parses or is refused, never
// panics; what parses restricts something, for a bounded time.
func FuzzParseResponse(f *testing.F) {
	f.Add("scope_probing=auto:quarantine:1h")
	f.Add("rate_burst=propose:remove-scope=payments:initiate,refunds:issue:30m")
	f.Fuzz(func(t *testing.T, s string) {
		_, r, err := ParseResponse(s)
		if err != nil || r.Mode == ModeNotify {
			return
		}
		a := r.Action
		if !a.Quarantine && a.MaxTrust == nil && len(a.RemoveScopes) == 0 || a.For() <= 0 || a.For() > maxFor {
			t.Fatalf("%q parsed to %+v", s, r)
		}
	})
}

// TestDismissRestoresPrevious: dismissing an automatic restriction that was
// merged with an operator's restores the operator's, not nothing; a
// restriction changed since is left alone.
func TestDismissRestoresPrevious(t *testing.T) { eachStore(t, testDismissRestoresPrevious) }

func testDismissRestoresPrevious(t *testing.T, dsn string) {
	f := newFixture(t, dsn, "bot-1", "bot-2")
	for _, id := range []string{"bot-1", "bot-2"} {
		if _, err := f.auth.Restrict(ca.RestrictRequest{TrustDomain: td, AgentID: id, RemoveScopes: []string{"payments:initiate"},
			Reason: "INC-1", Operator: "alice (responder)"}); err != nil {
			t.Fatal(err)
		}
	}
	f.probe("bot-1", 0)
	f.probe("bot-2", time.Minute)
	f.ship()
	s := f.service(Responses{anomaly.RuleScopeProbing: {Mode: ModeAuto, Action: Action{Quarantine: true, ForSeconds: 600}}})
	step(t, s)
	a1, a2 := onlyAlert(t, s, "bot-1"), onlyAlert(t, s, "bot-2")
	rs, _ := f.auth.AgentRestriction(td, "bot-1")
	if rs == nil || !rs.Quarantined || len(rs.RemovedScopes) != 1 || rs.Until != nil {
		t.Fatalf("merged restriction %+v (want quarantine with the scope removal, permanent as the operator's)", rs)
	}
	if _, err := s.Dismiss(context.Background(), a1.ID, "bob (responder)", "expected"); err != nil {
		t.Fatal(err)
	}
	rs, _ = f.auth.AgentRestriction(td, "bot-1")
	if rs == nil || rs.Quarantined || len(rs.RemovedScopes) != 1 || !strings.Contains(rs.Reason, "INC-1") {
		t.Errorf("after dismiss: %+v, want the operator's restriction back", rs)
	}
	// Someone changed bot-2's restriction after the response: kept.
	if _, err := f.auth.Restrict(ca.RestrictRequest{TrustDomain: td, AgentID: "bot-2", Quarantine: true, Reason: "INC-2", Operator: "carol (responder)"}); err != nil {
		t.Fatal(err)
	}
	d, err := s.Dismiss(context.Background(), a2.ID, "bob (responder)", "expected")
	if err != nil {
		t.Fatal(err)
	}
	if rs, _ := f.auth.AgentRestriction(td, "bot-2"); rs == nil || rs.Reason != "INC-2" {
		t.Errorf("a later restriction was undone: %+v", rs)
	}
	if ev := f.events("bot-2", EventDismiss); len(ev) != 1 || !strings.Contains(ev[0].Detail, "changed since") || d.Response.State != StateDismissed {
		t.Errorf("dismiss rows %+v", ev)
	}
}

// TestCursorPastHighestIndex: a log whose record times are not in index
// order (concurrent appenders) is still read to its end, once.
func TestCursorPastHighestIndex(t *testing.T) { eachStore(t, testCursorPastHighestIndex) }

func testCursorPastHighestIndex(t *testing.T, dsn string) {
	f := newFixture(t, dsn, "bot-1")
	f.decide("bot-1", "payments:read", true, "allowed", 20*time.Second)
	f.decide("bot-1", "payments:read", true, "allowed", 10*time.Second)
	f.decide("bot-1", "payments:read", true, "allowed", 30*time.Second)
	f.decide("bot-1", "payments:read", true, "allowed", 0)
	f.ship()
	s := f.service(nil)
	step(t, s)
	if got := s.cursors["replica-1"]; got != uint64(f.n) {
		t.Errorf("cursor %d, want %d", got, f.n)
	}
	if more, err := s.step(context.Background()); more || err != nil {
		t.Errorf("another step: more=%v %v", more, err)
	}
}

// TestTwoInstancesOnePostgres: two control-plane instances with separate
// data directories (keys copied) on one PostgreSQL database, both running
// the detector service, as docs/control-plane.md's "High availability"
// deploys them. Only the lease holder detects: one burst gives one alert
// and one change-log row. When the holder stops (releasing the lease), the
// other takes over at the saved cursors: the next burst is detected once,
// by it, and the first is not raised again.
func TestTwoInstancesOnePostgres(t *testing.T) {
	dsn := pgShared.Database(t)
	f := newFixture(t, dsn, "bot-1", "bot-2")
	dirB := filepath.Join(f.dir, "control-b")
	testenv.CopyTree(t, f.auth.DataDir(), dirB)
	authB, err := ca.Open(dirB, ca.WithStore(dsn), ca.MustExist())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { authB.Close() })
	storeB, err := recordstore.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { storeB.Close() })

	// start runs an instance's service; the function it returns stops it
	// (Run saves and releases the lease), once.
	start := func(auth *ca.Authority, store *recordstore.Store) (*Service, func()) {
		s, err := New(Config{Authority: auth, Records: store, Store: dsn, Poll: 20 * time.Millisecond, Lease: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		stop := sync.OnceFunc(func() {
			cancel()
			if err := <-done; err != nil {
				t.Error(err)
			}
			s.Close()
		})
		t.Cleanup(stop)
		return s, stop
	}
	sA, stopA := start(f.auth, f.store)
	sB, stopB := start(authB, storeB)
	for _, dir := range []string{f.auth.DataDir(), dirB} {
		if _, err := os.Stat(filepath.Join(dir, "alerts.db")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s/alerts.db exists (%v): the alert store must be in PostgreSQL", dir, err)
		}
	}

	// waitAlerts waits until agent has an alert and both instances have
	// stepped past it (a duplicate, were there one, would be there too).
	waitAlerts := func(s *Service, agent string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			as, err := s.List(context.Background(), Filter{Agent: agent})
			if err != nil {
				t.Fatal(err)
			}
			if len(as) > 0 && as[0].Logged {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no alert for %s within 20 s", agent)
			}
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(200 * time.Millisecond) // ten polls of each instance
	}
	read := func(s *Service) float64 { return testutil.ToFloat64(s.records) }

	f.probe("bot-1", 0)
	f.ship()
	sA.Wake()
	sB.Wake()
	waitAlerts(sA, "bot-1")
	onlyAlert(t, sA, "bot-1")
	onlyAlert(t, sB, "bot-1") // the same shared table
	if ev := f.events("bot-1", EventAlert); len(ev) != 1 {
		t.Fatalf("%d change-log alert rows for one burst, want 1", len(ev))
	}
	holder, standby, stopHolder := sA, sB, stopA
	if read(sB) > 0 {
		holder, standby, stopHolder = sB, sA, stopB
	}
	if read(holder) != 3 || read(standby) != 0 {
		t.Fatalf("records read: holder %v, standby %v; want 3 and 0 (only the lease holder detects)", read(holder), read(standby))
	}

	// The holder stops (saves, releases): the other takes over at once, at
	// the saved cursor.
	stopHolder()
	f.probe("bot-2", time.Minute)
	f.ship()
	standby.Wake()
	waitAlerts(standby, "bot-2")
	onlyAlert(t, standby, "bot-2")
	onlyAlert(t, standby, "bot-1")
	if ev := f.events("bot-2", EventAlert); len(ev) != 1 {
		t.Errorf("%d change-log alert rows for the second burst, want 1", len(ev))
	}
	if ev := f.events("bot-1", EventAlert); len(ev) != 1 {
		t.Errorf("%d change-log alert rows for the first burst after the takeover, want 1", len(ev))
	}
	if got := read(standby); got != 3 {
		t.Errorf("the instance that took over read %v records, want the 3 past the saved cursor", got)
	}
	if res, err := f.auth.VerifyChangeLog(changeLogKey(t, f)); err != nil || res.Problem != nil {
		t.Errorf("change log: %+v %v", res, err)
	}
}

// TestLeaseOneHolder: instances taking the lease at the same moment, each
// through its own connection pool as separate processes would, get exactly
// one holder; another gets it only after the holder's lease ran out or was
// released.
func TestLeaseOneHolder(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		path := filepath.Join(t.TempDir(), "alerts.db")
		const n = 8
		dbs := make([]*db, n)
		for i := range dbs {
			d, err := openDB(path, dsn)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.sql.Close() })
			dbs[i] = d
		}
		won := make([]bool, n)
		var wg sync.WaitGroup
		for i := range dbs {
			wg.Go(func() {
				ok, err := dbs[i].lease(fmt.Sprint("holder-", i), time.Now(), time.Minute)
				if err != nil {
					t.Error(err)
				}
				won[i] = ok
			})
		}
		wg.Wait()
		holder := -1
		for i, ok := range won {
			if ok {
				if holder >= 0 {
					t.Fatalf("holders %d and %d at once", holder, i)
				}
				holder = i
			}
		}
		if holder < 0 {
			t.Fatal("nobody took the free lease")
		}
		other := (holder + 1) % n
		if ok, err := dbs[other].lease(fmt.Sprint("holder-", other), time.Now(), time.Minute); ok || err != nil {
			t.Errorf("took a lease that had not run out: %v %v", ok, err)
		}
		// The holder renews for a moment only; once it has run out, the
		// other takes it.
		const short = 300 * time.Millisecond
		if ok, err := dbs[holder].lease(fmt.Sprint("holder-", holder), time.Now(), short); !ok || err != nil {
			t.Errorf("the holder could not renew: %v %v", ok, err)
		}
		time.Sleep(short + 50*time.Millisecond)
		if ok, err := dbs[other].lease(fmt.Sprint("holder-", other), time.Now(), time.Minute); !ok || err != nil {
			t.Errorf("could not take a lease that ran out: %v %v", ok, err)
		}
		if err := dbs[other].saveState(fmt.Sprint("holder-", holder), []byte("x"), nil, time.Now()); !errors.Is(err, errLeaseLost) {
			t.Errorf("the former holder saved its state over the new holder's: %v", err)
		}
		if err := dbs[other].release(fmt.Sprint("holder-", other)); err != nil {
			t.Fatal(err)
		}
		if ok, err := dbs[holder].lease(fmt.Sprint("holder-", holder), time.Now(), time.Minute); !ok || err != nil {
			t.Errorf("could not take a released lease: %v %v", ok, err)
		}
	})
}

// TestLeaseDatabaseClock: on PostgreSQL the lease runs on the database's
// clock, so instances whose clocks are an hour off either way cannot take
// a lease another instance still holds (on their own clocks it ran out, or
// the holder's ran out at once).
func TestLeaseDatabaseClock(t *testing.T) {
	f := newFixture(t, pgShared.Database(t), "bot-1")
	instance := func(skew, lease time.Duration) *Service {
		s, err := New(Config{Authority: f.auth, Records: f.store, Store: f.dsn, SaveEvery: time.Hour, Poll: 50 * time.Millisecond,
			Lease: lease, Now: func() time.Time { return time.Now().Add(skew) }})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	holds := func(s *Service) bool {
		t.Helper()
		step(t, s)
		return s.det != nil
	}
	ahead, behind, right := instance(time.Hour, time.Minute), instance(-time.Hour, time.Minute), instance(0, time.Minute)
	if !holds(right) {
		t.Fatal("the first instance did not take the free lease")
	}
	if holds(ahead) {
		t.Error("an instance with its clock an hour ahead took the lease another holds")
	}
	if err := right.stop(); err != nil {
		t.Fatal(err)
	}
	if !holds(behind) {
		t.Fatal("the instance with its clock an hour behind did not take the released lease")
	}
	if holds(right) || holds(ahead) {
		t.Error("an instance took the lease of a holder whose clock is an hour behind")
	}
	// A holder that stops renewing (as after kill -9) blocks the others
	// until its lease runs out on the database's clock.
	if err := behind.stop(); err != nil {
		t.Fatal(err)
	}
	const brief = 300 * time.Millisecond
	if !holds(instance(-time.Hour, brief)) {
		t.Fatal("an instance did not take the released lease")
	}
	time.Sleep(brief + 100*time.Millisecond)
	if !holds(ahead) {
		t.Error("the lease did not run out on the database's clock")
	}
}

// TestForgedCertificateSpray: 10,000 forged certificates, each presented
// five times, shipped by a replica (one identity_failures alert and one
// change-log row per certificate before), give a handful of alerts and
// rows, the last of which counts every failure. A certificate the
// inventory issued that fails meanwhile (expired) keeps its own alert.
func TestForgedCertificateSpray(t *testing.T) {
	f := newFixture(t, "", "bot-1")
	cs, err := f.auth.List(ca.ListFilter{TrustDomain: td, AgentID: "bot-1"})
	if err != nil || len(cs) != 1 {
		t.Fatal(cs, err)
	}
	genuine := certHash(t, cs[0].PEM)
	fail := func(id int, cert, reason string, at time.Duration) {
		rec := &decisionlog.Record{DecisionID: fmt.Sprintf("f-%06d", id), Time: f.base.Add(at),
			Agent:    decisionlog.Agent{CertSHA256: cert, Issuer: "CN=Acme Agents CA,O=Acme"},
			Request:  decisionlog.Request{Method: "POST", Path: "/v1/payments", Source: fmt.Sprintf("203.0.%d.9:4000", id%200)},
			Decision: decisionlog.Decision{HTTPStatus: 403, Reasons: []string{reason}}}
		if _, err := f.log.Append(context.Background(), rec); err != nil {
			t.Error(err)
		}
	}
	const certs, tries, writers = 10_000, 5, 16
	var wg sync.WaitGroup
	for w := range writers { // concurrent appends share a write and fdatasync
		wg.Go(func() {
			for i := w; i < certs; i += writers {
				at := time.Duration(i) * 50 * time.Millisecond
				forged := sha256.Sum256(fmt.Append(nil, "forged ", i))
				for j := range tries {
					fail(i*tries+j, hex.EncodeToString(forged[:]), "untrusted_issuer", at)
				}
				if i == certs/2 {
					for j := range tries {
						fail(certs*tries+j, genuine, "certificate_expired", at)
					}
				}
			}
		})
	}
	wg.Wait()
	f.n += (certs + 1) * tries
	f.decide("bot-1", "payments:read", true, "allowed", 20*time.Minute) // record time moves on: the spray has ended
	f.ship()
	s := f.service(nil)
	step(t, s)

	as, err := s.List(context.Background(), Filter{Limit: MaxLimit})
	if err != nil {
		t.Fatal(err)
	}
	var own, spray, perCert int
	var total *Alert
	for i, a := range as {
		switch {
		case a.Alert.Agent == genuine:
			own++
		case a.Alert.Key == "spray":
			spray++
		case a.Alert.Key == "spray total":
			total = &as[i]
		default:
			perCert++
		}
	}
	if own != 1 || spray != 1 || total == nil || perCert > 4 {
		t.Fatalf("%d alerts: %d of the genuine certificate, %d spray, totals %v, %d of single forged certificates; want 1, 1, yes, at most 4",
			len(as), own, spray, total != nil, perCert)
	}
	if a := total.Alert; a.Count != certs*tries || len(a.Sample) == 0 ||
		!strings.HasPrefix(a.Observed, fmt.Sprintf("%d identity failures of %d different certificates", certs*tries, certs)) {
		t.Errorf("the spray's totals: count %d, sample %v, %q", a.Count, a.Sample, a.Observed)
	}
	evs, err := f.auth.Events("", "")
	if err != nil {
		t.Fatal(err)
	}
	rows := 0
	for _, e := range evs {
		if e.Event == EventAlert {
			rows++
			if strings.Contains(e.Detail, `"spray total"`) && !strings.Contains(e.Detail, fmt.Sprintf(`"count":%d`, certs*tries)) {
				t.Errorf("the totals' change-log row does not say how many: %s", e.Detail)
			}
		}
	}
	if rows != len(as) {
		t.Errorf("%d change-log alert rows for %d alerts", rows, len(as))
	}
}

func certHash(t *testing.T, certPEM string) string {
	t.Helper()
	b, _ := pem.Decode([]byte(certPEM))
	if b == nil {
		t.Fatalf("not a PEM certificate: %.40q", certPEM)
	}
	sum := sha256.Sum256(b.Bytes)
	return hex.EncodeToString(sum[:])
}

// TestIssuedFollowsTheInventory: the detector knows the certificates the
// inventory issued, including ones issued (or renewed) after it first
// looked, and no others.
func TestIssuedFollowsTheInventory(t *testing.T) {
	eachStore(t, func(t *testing.T, dsn string) {
		f := newFixture(t, dsn, "bot-1")
		now := time.Now()
		k := newIssued(f.auth, func() time.Time { return now }, hclog.NewNullLogger())
		hashOf := func(agent string) []string {
			cs, err := f.auth.List(ca.ListFilter{TrustDomain: td, AgentID: agent})
			if err != nil {
				t.Fatal(err)
			}
			var out []string
			for _, c := range cs {
				out = append(out, certHash(t, c.PEM))
			}
			return out
		}
		if !k.has(hashOf("bot-1")[0]) || k.has(strings.Repeat("ab", 32)) {
			t.Fatal("the inventory's certificate is not known, or a forged one is")
		}
		if _, err := f.auth.Issue(ca.IssueRequest{TrustDomain: td, AgentID: "bot-2", Trust: 1, Scopes: []string{"payments:read"},
			TTL: time.Hour, Operator: "admin"}); err != nil {
			t.Fatal(err)
		}
		if _, err := f.auth.Renew(ca.RenewRequest{TrustDomain: td, AgentID: "bot-1", Operator: "admin"}); err != nil {
			t.Fatal(err)
		}
		now = now.Add(time.Second)
		for _, h := range append(hashOf("bot-1"), hashOf("bot-2")...) {
			if !k.has(h) {
				t.Errorf("certificate %.12s… issued after the first look is not known", h)
			}
		}
	})
}
