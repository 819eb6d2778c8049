package console

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
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

// The render benchmark: every page of the console over an inventory of many
// agents and a record store of many records, on SQLite and on PostgreSQL
// (docs/performance.md has the runs). The short version runs in
// TestRenderAtScale; the full one is `make bench-console`:
//
//	AGENTAUTHZ_BENCH_AGENTS=10000 AGENTAUTHZ_BENCH_RECORDS=10000000 \
//	  go test -run '^$' -bench Render -benchtime 20x -timeout 3h ./internal/console
//
// Agents are issued through ca.Authority (Ed25519 keys); records are loaded
// by recordstore.BulkLoad (rows, then the indexes and the rollups) from
// three real signed record lines used as templates, spread over 64 logs and
// the last 30 days. Ten agents are revoked, one a day over the last ten
// days (scaleRevocations): every other one falls silent, the others keep
// calling and are denied (a quarter of the records after their
// revocations are theirs), except that one of them stays allowed on every
// third log, as if those replicas never heard.

// scale is a console over a large inventory and store.
type scale struct {
	con     *Console
	h       http.Handler
	cookie  *http.Cookie
	agents  int
	records int
	pgPort  int // the PostgreSQL cluster's, or 0
	// revoked is what the loaded records say of each revoked agent.
	revoked map[string]*revocationWant
}

// revocationWant is a revoked agent's records as loaded: its first denial
// for the revocation on each log, and how many were allowed later than
// evidence.PropagationBound after it.
type revocationWant struct {
	first   map[string]time.Time
	allowed int64
}

// newScale builds the console; on PostgreSQL (kind "postgres") both the
// inventory and the record store are databases of the shared cluster.
func newScale(tb testing.TB, kind string, agents, records int) *scale {
	tb.Helper()
	dir := tb.TempDir()
	var opts []ca.Option
	recordsDSN := filepath.Join(dir, "records.db")
	if kind == "postgres" {
		opts = append(opts, ca.WithStore(pgShared.Database(tb)))
		recordsDSN = pgShared.Database(tb)
	}
	// The revocations are dated among the records, in the past.
	var clock atomic.Pointer[time.Time]
	opts = append(opts, ca.WithClock(func() time.Time {
		if t := clock.Load(); t != nil {
			return *t
		}
		return time.Now()
	}))
	auth, err := ca.Open(dir, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { auth.Close() })
	if _, err := auth.Init(ca.InitRequest{TrustDomain: "acme.test", Operator: "bench"}); err != nil {
		tb.Fatal(err)
	}
	now := time.Now().Truncate(time.Second)
	start := time.Now()
	for i := range agents {
		if _, err := auth.Issue(ca.IssueRequest{TrustDomain: "acme.test", AgentID: fmt.Sprintf("bot-%d", i), Trust: i % 5,
			Scopes: []string{"payments:initiate", "reports:read"}, Owner: fmt.Sprintf("team-%d", i%50), TTL: time.Duration(1+i%30) * 24 * time.Hour,
			KeyType: ca.KeyEd25519, Operator: "bench"}); err != nil {
			tb.Fatal(err)
		}
	}
	tb.Logf("%s: issued %d agents in %v", kind, agents, time.Since(start).Round(time.Millisecond))
	revs := scaleRevocations(agents, now)
	for _, a := range slices.Sorted(maps.Keys(revs)) {
		at := revs[a].at
		clock.Store(&at)
		if _, err := auth.Revoke("acme.test", fmt.Sprintf("bot-%d", a), ca.ReasonKeyCompromise, "bench"); err != nil {
			tb.Fatal(err)
		}
	}
	clock.Store(nil)
	rs, err := recordstore.Open(context.Background(), recordsDSN)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { rs.Close() })
	start = time.Now()
	revoked := loadRecords(tb, rs, agents, records, now, revs)
	tb.Logf("%s: loaded %d records in %v", kind, records, time.Since(start).Round(time.Millisecond))
	op, err := control.OpenOperatorCA(dir, true)
	if err != nil {
		tb.Fatal(err)
	}
	con, err := New(Config{Authority: auth, Records: rs, Auth: control.NewAuthenticator(op, nil, nil)})
	if err != nil {
		tb.Fatal(err)
	}
	// Valid for the 30 days a "next day" measurement moves the clock on.
	id, _, err := con.sessions.create(control.Operator{Name: "bench", Role: control.RoleAdmin}, time.Now().Add(30*24*time.Hour))
	if err != nil {
		tb.Fatal(err)
	}
	sc := &scale{con: con, h: con.Handler(), cookie: &http.Cookie{Name: cookieName, Value: id}, agents: agents, records: records, revoked: revoked}
	if u, err := url.Parse(recordsDSN); err == nil && kind == "postgres" {
		sc.pgPort, _ = strconv.Atoi(u.Port())
	}
	return sc
}

// scaleRevocation is one revoked agent of the benchmark.
type scaleRevocation struct {
	at time.Time
	// calling: it keeps calling after at, and is denied; leaky: except on
	// every third log (log-01, log-04, …), whose replicas never heard.
	calling, leaky bool
}

// scaleRevocations revokes bot-1, bot-(agents/10+1), …: ten agents, the
// k-th revoked 10-k days before now. Odd k keep calling; the newest (k = 9)
// is leaky. bot-(agents/2), the pages' agent, is none of them.
func scaleRevocations(agents int, now time.Time) map[int]scaleRevocation {
	revs := map[int]scaleRevocation{}
	for k := range 10 {
		revs[k*(agents/10)+1] = scaleRevocation{at: now.Add(-time.Duration(10-k) * 24 * time.Hour), calling: k%2 == 1, leaky: k == 9}
	}
	return revs
}

// loadRecords loads n decision records of agents bot-0..bot-(agents-1), one
// in three denied, the newest at now, and the revoked agents' as revs says.
func loadRecords(tb testing.TB, rs *recordstore.Store, agents, n int, now time.Time, revs map[int]scaleRevocation) map[string]*revocationWant {
	tb.Helper()
	dir := tb.TempDir()
	l, err := decisionlog.Open(decisionlog.Options{Dir: filepath.Join(dir, "log"), KeyDir: filepath.Join(dir, "keys"), Name: "tmpl"})
	if err != nil {
		tb.Fatal(err)
	}
	for _, d := range []decisionlog.Decision{{Allowed: true, HTTPStatus: 200, Reasons: []string{"allowed"}},
		{Allowed: false, HTTPStatus: 403, Reasons: []string{"scope_missing"}}, {Allowed: false, HTTPStatus: 403, Reasons: []string{"certificate_revoked"}}} {
		op := "payments:initiate"
		if !d.Allowed {
			op = "payments:refund"
		}
		if _, err := l.Append(context.Background(), &decisionlog.Record{DecisionID: "DID-000000000", Time: time.Now(),
			Agent:    decisionlog.Agent{ID: "AGENT", SPIFFEID: "spiffe://acme.test/agent/AGENT", Tenant: "acme.test", TrustLevel: "L2"},
			Request:  decisionlog.Request{ID: "RID-000000000", Method: "POST", Path: "/v1/payments", Operation: op},
			Decision: d}); err != nil {
			tb.Fatal(err)
		}
	}
	l.Close()
	r := decisionlog.NewReader(filepath.Join(dir, "log"))
	var tmpls [3]string // allowed, denied, revoked
	for i := range tmpls {
		e, err := r.Next()
		if err != nil {
			tb.Fatal(err)
		}
		tmpls[i] = e.Raw
	}
	r.Close()
	span := 30 * 24 * time.Hour
	var calling []int // the agents that keep calling
	for a, r := range revs {
		if r.calling {
			calling = append(calling, a)
		}
	}
	slices.Sort(calling)
	want := map[string]*revocationWant{}
	for a := range revs {
		want[fmt.Sprintf("bot-%d", a)] = &revocationWant{first: map[string]time.Time{}}
	}
	if err := rs.BulkLoad(context.Background(), n, func(i int) recordstore.BulkRecord {
		t := now.Add(-span + time.Duration(int64(span)/int64(n)*int64(i)))
		a := (i * 7919) % agents
		if i%4 == 3 && len(calling) > 0 {
			if c := calling[(i/4)%len(calling)]; !t.Before(revs[c].at) {
				a = c
			}
		}
		r, revoked := revs[a]
		if revoked && !r.calling && !t.Before(r.at) {
			a, revoked = a+1, false // it fell silent: another agent calls instead
		}
		did, rid, agent, log := fmt.Sprintf("DID-%09d", i), fmt.Sprintf("RID-%09d", i), fmt.Sprintf("bot-%d", a), fmt.Sprintf("log-%02d", i%64)
		rec := recordstore.BulkRecord{Log: log, Index: uint64(i / 64), Time: t,
			DecisionID: did, RequestID: rid, Tenant: "acme.test", AgentID: agent, SPIFFEID: "spiffe://acme.test/agent/" + agent,
			Operation: "payments:initiate", Allowed: true, Reason: "allowed", LeafHash: fmt.Sprintf("%064x", i)}
		tmpl := tmpls[0]
		switch {
		case revoked && !t.Before(r.at) && !(r.leaky && i%64%3 == 1):
			rec.Allowed, rec.Reason, tmpl = false, "certificate_revoked", tmpls[2]
		case i%3 == 0:
			rec.Operation, rec.Allowed, rec.Reason, tmpl = "payments:refund", false, "scope_missing", tmpls[1]
		}
		rec.Line = strings.NewReplacer("DID-000000000", did, "RID-000000000", rid, `"AGENT"`, `"`+agent+`"`, "/AGENT", "/"+agent).Replace(tmpl)
		if w := want[agent]; w != nil {
			stored := t.Truncate(time.Microsecond)
			switch {
			case rec.Reason == "certificate_revoked":
				if f, ok := w.first[log]; !ok || stored.Before(f) {
					w.first[log] = stored
				}
			case rec.Allowed && stored.After(r.at.Add(evidence.PropagationBound)):
				w.allowed++
			}
		}
		return rec
	}); err != nil {
		tb.Fatal(err)
	}
	return want
}

// get renders path as the signed-in admin.
func (s *scale) get(tb testing.TB, path string) (int, string) {
	req := httptest.NewRequest(http.MethodGet, "https://console.test"+path, nil)
	req.AddCookie(s.cookie)
	rec := httptest.NewRecorder()
	s.h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

// renderPages are the pages measured, with what each must show.
func renderPages(s *scale) map[string]struct{ path, want string } {
	mid := fmt.Sprintf("bot-%d", s.agents/2)
	return map[string]struct{ path, want string }{
		"fleet":             {"/ui/fleet", fmt.Sprintf("%d agents.", s.agents)},
		"fleet_search":      {"/ui/fleet?q=" + mid, ">" + mid + "</a>"},
		"agent":             {"/ui/agents/acme.test/" + mid, "Decisions over time"},
		"decisions":         {"/ui/decisions", "/ui/decisions/DID-"},
		"decisions_agent":   {"/ui/decisions?agent=" + mid + "&outcome=denied", "scope_missing"},
		"decision":          {fmt.Sprintf("/ui/decisions/DID-%09d", s.records-1), "Decision"},
		"decisions_live":    {"/ui/decisions/live", "tail-rows"},
		"fleet_chart_30d":   {"/ui/fleet?range=30d", fmt.Sprintf("%d agents.", s.agents)},
		"agent_chart_30d":   {"/ui/agents/acme.test/" + mid + "?range=30d", "Decisions over time"},
		"compliance_7days":  {"/ui/compliance?days=7", "scope_missing</a>"},
		"compliance_30days": {"/ui/compliance?days=30", "<code>payments:refund</code></th>"},
	}
}

// TestRenderAtScale is the render benchmark's short version: every page
// renders what it must (no timing is asserted) over an inventory and a
// store of some size, on both stores.
func TestRenderAtScale(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	for _, kind := range []string{"sqlite", "postgres"} {
		t.Run(kind, func(t *testing.T) {
			s := newScale(t, kind, 200, 20000)
			for name, p := range renderPages(s) {
				code, body := s.get(t, p.path)
				if code != 200 || !strings.Contains(body, p.want) {
					t.Errorf("%s (%s): %d, no %q in\n%.2000s", name, p.path, code, p.want, body)
				}
			}
			s.checkRevocations(t)
		})
	}
}

// checkRevocations: Compliance's last revocations say what the loaded
// records say, for agents that fell silent, that keep calling, and one
// still allowed on some logs.
func (s *scale) checkRevocations(t *testing.T) {
	rows, err := s.con.lastRevocations(context.Background())
	if err != nil || len(rows) != lastRevocations {
		t.Fatalf("last revocations: %d rows, %v", len(rows), err)
	}
	var silent, calling, leaky int
	shown := map[string]bool{}
	for _, row := range rows {
		// One row per revocation, though it wrote an event per certificate
		// and one for the agent.
		if shown[row.AgentID] || row.Event.Event != "agent_revoke" {
			t.Errorf("revocation of %s shown again, or not as the agent's event (%s)", row.AgentID, row.Event.Event)
		}
		shown[row.AgentID] = true
		w := s.revoked[row.AgentID]
		if w == nil {
			t.Fatalf("revocation of %s: not one of the benchmark's", row.AgentID)
		}
		got := map[string]time.Time{}
		for _, l := range row.Logs {
			got[l.Log] = l.At
			if l.Took != l.At.Sub(row.At).Round(time.Millisecond) || l.Took < 0 {
				t.Errorf("%s on %s: took %v", row.AgentID, l.Log, l.Took)
			}
		}
		if !maps.EqualFunc(got, w.first, time.Time.Equal) || row.AllowedAfter != w.allowed {
			t.Errorf("%s: first denials %v, %d allowed after; the records say %v, %d", row.AgentID, got, row.AllowedAfter, w.first, w.allowed)
		}
		switch {
		case len(w.first) == 0:
			silent++
		case w.allowed > 0:
			leaky++
			if _, body := s.get(t, "/ui/compliance?days=7"); !strings.Contains(body, fmt.Sprintf(`<strong class="den">%d</strong>`, w.allowed)) {
				t.Errorf("the page does not show %s allowed %d times after its revocation", row.AgentID, w.allowed)
			}
		default:
			calling++
		}
	}
	if silent == 0 || calling == 0 || leaky == 0 {
		t.Errorf("the revocations shown: %d silent, %d calling, %d leaky; want some of each", silent, calling, leaky)
	}
}

// report reports, per page, the wall time (ms/page), this process's CPU
// time (cpu-ms/page: the console, and on SQLite the database engine too)
// and on Linux the PostgreSQL cluster's (pg-cpu-ms/page), from the CPU
// times at the start.
func (s *scale) report(b *testing.B, c0, pg0 time.Duration) {
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/page")
	b.ReportMetric(float64((testenv.CPUTime()-c0).Microseconds())/float64(b.N)/1000, "cpu-ms/page")
	if s.pgPort != 0 {
		b.ReportMetric(float64((postgresCPU(s.pgPort)-pg0).Microseconds())/float64(b.N)/1000, "pg-cpu-ms/page")
	}
}

// BenchmarkRender renders every page; see report for what it reports.
func BenchmarkRender(b *testing.B) {
	agents, records := 1000, 100000
	if v, err := strconv.Atoi(os.Getenv("AGENTAUTHZ_BENCH_AGENTS")); err == nil && v > 0 {
		agents = v
	}
	if v, err := strconv.Atoi(os.Getenv("AGENTAUTHZ_BENCH_RECORDS")); err == nil && v > 0 {
		records = v
	}
	kinds := []string{"sqlite", "postgres"}
	if k := os.Getenv("AGENTAUTHZ_BENCH_STORE"); k != "" {
		kinds = []string{k}
	}
	for _, kind := range kinds {
		b.Run(kind, func(b *testing.B) {
			s := newScale(b, kind, agents, records)
			pages := renderPages(s)
			measure := func(b *testing.B, p struct{ path, want string }, cold bool) {
				c0, pg0 := testenv.CPUTime(), postgresCPU(s.pgPort)
				for b.Loop() {
					if cold {
						s.con.fleetSnap.invalidate()
						s.con.compMu.Lock()
						s.con.compCache = nil
						s.con.compMu.Unlock()
					}
					if code, body := s.get(b, p.path); code != 200 || !strings.Contains(body, p.want) {
						b.Fatalf("%s: %d", p.path, code)
					}
				}
				s.report(b, c0, pg0)
			}
			// The first Compliance render of a period makes its window
			// (recordstore/rollup.go): once.
			for _, name := range []string{"compliance_7days", "compliance_30days"} {
				start := time.Now()
				if code, body := s.get(b, pages[name].path); code != 200 || !strings.Contains(body, pages[name].want) {
					b.Fatalf("%s: %d", name, code)
				}
				b.Logf("%s: %s, first render (its window made): %v", kind, name, time.Since(start).Round(time.Millisecond))
			}
			// The fleet and Compliance pages reuse their figures for a
			// while: "_cold" measures a render that computes them;
			// "_next_day" one on the next day, which moves the window on
			// by a day first.
			names := make([]string, 0, len(pages))
			for name := range pages {
				names = append(names, name)
			}
			sort.Strings(names)
			for _, name := range names {
				if strings.HasPrefix(name, "fleet") || strings.HasPrefix(name, "compliance") {
					b.Run(name+"_cold", func(b *testing.B) { measure(b, pages[name], true) })
				}
				b.Run(name, func(b *testing.B) { measure(b, pages[name], false) })
			}
			// Last: it moves the windows on.
			b.Run("compliance_7days_next_day", func(b *testing.B) {
				now := time.Now()
				defer func() { s.con.cfg.Now = time.Now }()
				c0, pg0 := testenv.CPUTime(), postgresCPU(s.pgPort)
				for b.Loop() {
					now = now.Add(24 * time.Hour)
					s.con.cfg.Now = func() time.Time { return now }
					if code, body := s.get(b, "/ui/compliance?days=7"); code != 200 || !strings.Contains(body, "Denials by reason") {
						b.Fatalf("%d", code)
					}
				}
				s.report(b, c0, pg0)
			})
		})
	}
}
