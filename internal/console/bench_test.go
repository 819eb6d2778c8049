package console

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/control"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
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
// by recordstore.BulkLoad (rows, then the indexes and the rollups) from two
// real signed record lines used as templates, spread over 64 logs and the
// last 30 days.

// scale is a console over a large inventory and store.
type scale struct {
	con     *Console
	h       http.Handler
	cookie  *http.Cookie
	agents  int
	records int
	pgPort  int // the PostgreSQL cluster's, or 0
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
	auth, err := ca.Open(dir, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { auth.Close() })
	if _, err := auth.Init(ca.InitRequest{TrustDomain: "acme.test", Operator: "bench"}); err != nil {
		tb.Fatal(err)
	}
	start := time.Now()
	for i := range agents {
		if _, err := auth.Issue(ca.IssueRequest{TrustDomain: "acme.test", AgentID: fmt.Sprintf("bot-%d", i), Trust: i % 5,
			Scopes: []string{"payments:initiate", "reports:read"}, Owner: fmt.Sprintf("team-%d", i%50), TTL: time.Duration(1+i%30) * 24 * time.Hour,
			KeyType: ca.KeyEd25519, Operator: "bench"}); err != nil {
			tb.Fatal(err)
		}
	}
	tb.Logf("%s: issued %d agents in %v", kind, agents, time.Since(start).Round(time.Millisecond))
	rs, err := recordstore.Open(context.Background(), recordsDSN)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { rs.Close() })
	start = time.Now()
	loadRecords(tb, rs, agents, records)
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
	sc := &scale{con: con, h: con.Handler(), cookie: &http.Cookie{Name: cookieName, Value: id}, agents: agents, records: records}
	if u, err := url.Parse(recordsDSN); err == nil && kind == "postgres" {
		sc.pgPort, _ = strconv.Atoi(u.Port())
	}
	return sc
}

// loadRecords loads n decision records of agents bot-0..bot-(agents-1), one
// in three denied, the newest now.
func loadRecords(tb testing.TB, rs *recordstore.Store, agents, n int) {
	tb.Helper()
	dir := tb.TempDir()
	l, err := decisionlog.Open(decisionlog.Options{Dir: filepath.Join(dir, "log"), KeyDir: filepath.Join(dir, "keys"), Name: "tmpl"})
	if err != nil {
		tb.Fatal(err)
	}
	for _, d := range []decisionlog.Decision{{Allowed: true, HTTPStatus: 200, Reasons: []string{"allowed"}},
		{Allowed: false, HTTPStatus: 403, Reasons: []string{"scope_missing"}}} {
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
	var tmpls [2]string // allowed, denied
	for i := range tmpls {
		e, err := r.Next()
		if err != nil {
			tb.Fatal(err)
		}
		tmpls[i] = e.Raw
	}
	r.Close()
	now := time.Now()
	span := 30 * 24 * time.Hour
	if err := rs.BulkLoad(context.Background(), n, func(i int) recordstore.BulkRecord {
		did, rid, agent := fmt.Sprintf("DID-%09d", i), fmt.Sprintf("RID-%09d", i), fmt.Sprintf("bot-%d", (i*7919)%agents)
		rec := recordstore.BulkRecord{Log: fmt.Sprintf("log-%02d", i%64), Index: uint64(i / 64),
			Time:       now.Add(-span + time.Duration(int64(span)/int64(n)*int64(i))),
			DecisionID: did, RequestID: rid, Tenant: "acme.test", AgentID: agent, SPIFFEID: "spiffe://acme.test/agent/" + agent,
			Operation: "payments:initiate", Allowed: true, Reason: "allowed", LeafHash: fmt.Sprintf("%064x", i)}
		tmpl := tmpls[0]
		if i%3 == 0 {
			rec.Operation, rec.Allowed, rec.Reason, tmpl = "payments:refund", false, "scope_missing", tmpls[1]
		}
		rec.Line = strings.NewReplacer("DID-000000000", did, "RID-000000000", rid, `"AGENT"`, `"`+agent+`"`, "/AGENT", "/"+agent).Replace(tmpl)
		return rec
	}); err != nil {
		tb.Fatal(err)
	}
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
		})
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
