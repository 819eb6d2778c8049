package console

import (
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/control"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/recordstore"
)

// The render benchmark: every page of the console over an inventory of many
// agents and a record store of many records (docs/performance.md has the
// runs). The short version runs in TestRenderAtScale; the full one is
//
//	AGENTAUTHZ_BENCH_AGENTS=10000 AGENTAUTHZ_BENCH_RECORDS=10000000 \
//	  go test -run '^$' -bench Render -benchtime 20x -timeout 2h ./internal/console
//
// Agents are issued through ca.Authority (Ed25519 keys); records are loaded
// with plain INSERTs from one real signed record line used as a template,
// spread over 64 logs and the last 30 days (loading through Append would
// verify every batch: right, and far too slow for millions of rows).

// scale is a console over a large inventory and store.
type scale struct {
	con     *Console
	h       http.Handler
	cookie  *http.Cookie
	agents  int
	records int
}

func newScale(tb testing.TB, agents, records int) *scale {
	tb.Helper()
	dir := tb.TempDir()
	auth, err := ca.Open(dir)
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
	tb.Logf("issued %d agents in %v", agents, time.Since(start).Round(time.Millisecond))
	dsn := filepath.Join(dir, "records.db")
	rs, err := recordstore.Open(context.Background(), dsn)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { rs.Close() })
	start = time.Now()
	loadRecords(tb, dsn, agents, records)
	tb.Logf("loaded %d records in %v", records, time.Since(start).Round(time.Millisecond))
	op, err := control.OpenOperatorCA(dir, true)
	if err != nil {
		tb.Fatal(err)
	}
	con, err := New(Config{Authority: auth, Records: rs, Auth: control.NewAuthenticator(op, nil, nil)})
	if err != nil {
		tb.Fatal(err)
	}
	id, _, err := con.sessions.create(control.Operator{Name: "bench", Role: control.RoleAdmin}, time.Now())
	if err != nil {
		tb.Fatal(err)
	}
	return &scale{con: con, h: con.Handler(), cookie: &http.Cookie{Name: cookieName, Value: id}, agents: agents, records: records}
}

// loadRecords inserts n decision records of agents bot-0..bot-(agents-1)
// into the SQLite store at path, one in three denied, the newest now.
func loadRecords(tb testing.TB, path string, agents, n int) {
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
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(OFF)")
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	now := time.Now()
	span := 30 * 24 * time.Hour
	const per = 500
	for lo := 0; lo < n; lo += per {
		hi := min(n, lo+per)
		var sb strings.Builder
		sb.WriteString(`INSERT INTO records (log, idx, time_us, kind, decision_id, request_id, tenant, agent_id, spiffe_id,
			operation, allowed, reason, leaf_hash, line) VALUES `)
		args := make([]any, 0, (hi-lo)*14)
		for i := lo; i < hi; i++ {
			if i > lo {
				sb.WriteByte(',')
			}
			sb.WriteString("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
			did, rid, agent := fmt.Sprintf("DID-%09d", i), fmt.Sprintf("RID-%09d", i), fmt.Sprintf("bot-%d", (i*7919)%agents)
			allowed, reason, op, tmpl := int64(1), "allowed", "payments:initiate", tmpls[0]
			if i%3 == 0 {
				allowed, reason, op, tmpl = 0, "scope_missing", "payments:refund", tmpls[1]
			}
			line := strings.NewReplacer("DID-000000000", did, "RID-000000000", rid, `"AGENT"`, `"`+agent+`"`, "/AGENT", "/"+agent).Replace(tmpl)
			at := now.Add(-span + time.Duration(int64(span)/int64(n)*int64(i)))
			args = append(args, fmt.Sprintf("log-%02d", i%64), int64(i/64), at.UnixMicro(), "decision", did, rid, "acme.test", agent,
				"spiffe://acme.test/agent/"+agent, op, allowed, reason, fmt.Sprintf("%064x", i), line)
		}
		if _, err := db.Exec(sb.String(), args...); err != nil {
			tb.Fatal(err)
		}
	}
	for i := range 64 {
		if _, err := db.Exec(`INSERT INTO logs (name, size, root, tree, keys, first_keys, head, updated_us) VALUES (?, ?, '', '[]', '{"keys":[]}', '{"keys":[]}', ?, ?)`,
			fmt.Sprintf("log-%02d", i), (n+63-i)/64, (n+63-i)/64, now.UnixMicro()); err != nil {
			tb.Fatal(err)
		}
	}
	if _, err := db.Exec("ANALYZE"); err != nil {
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
		"fleet":            {"/ui/fleet", fmt.Sprintf("%d agents.", s.agents)},
		"fleet_search":     {"/ui/fleet?q=" + mid, ">" + mid + "</a>"},
		"agent":            {"/ui/agents/acme.test/" + mid, "Decisions over time"},
		"decisions":        {"/ui/decisions", "/ui/decisions/DID-"},
		"decisions_agent":  {"/ui/decisions?agent=" + mid + "&outcome=denied", "scope_missing"},
		"decision":         {fmt.Sprintf("/ui/decisions/DID-%09d", s.records-1), "Decision"},
		"decisions_live":   {"/ui/decisions/live", "tail-rows"},
		"compliance_7days": {"/ui/compliance?days=7", "Denials by reason"},
	}
}

// TestRenderAtScale is the render benchmark's short version: every page
// renders (no timing is asserted) over an inventory and a store of some
// size.
func TestRenderAtScale(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	s := newScale(t, 200, 20000)
	for name, p := range renderPages(s) {
		code, body := s.get(t, p.path)
		if code != 200 || !strings.Contains(body, p.want) {
			t.Errorf("%s (%s): %d, no %q in\n%.2000s", name, p.path, code, p.want, body)
		}
	}
}

func BenchmarkRender(b *testing.B) {
	agents, records := 1000, 100000
	if v, err := strconv.Atoi(os.Getenv("AGENTAUTHZ_BENCH_AGENTS")); err == nil && v > 0 {
		agents = v
	}
	if v, err := strconv.Atoi(os.Getenv("AGENTAUTHZ_BENCH_RECORDS")); err == nil && v > 0 {
		records = v
	}
	s := newScale(b, agents, records)
	pages := renderPages(s)
	// The fleet and Compliance pages reuse their figures for a while:
	// "_cold" measures a render that computes them.
	for _, name := range []string{"fleet", "compliance_7days"} {
		p := pages[name]
		b.Run(name+"_cold", func(b *testing.B) {
			for b.Loop() {
				s.con.fleetSnap.invalidate()
				s.con.compMu.Lock()
				s.con.compCache = nil
				s.con.compMu.Unlock()
				if code, body := s.get(b, p.path); code != 200 || !strings.Contains(body, p.want) {
					b.Fatalf("%s: %d", p.path, code)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/page")
		})
	}
	for name, p := range pages {
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if code, body := s.get(b, p.path); code != 200 || !strings.Contains(body, p.want) {
					b.Fatalf("%s: %d", p.path, code)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/page")
		})
	}
}
