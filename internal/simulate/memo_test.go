package simulate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/policy"
)

// historyStart is when variedHistory begins; it spans two hours.
var historyStart = time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)

// variedHistory writes a log of n records: agents of two tenants at every
// trust level with assorted scopes, every route of the repository's route
// table and some unknown ones, MCP calls and batches, recorded allows and
// denials, decisions that identity or revocation made, records that cannot
// be rebuilt, another kind of record, records whose JSON needs escapes and
// a few damaged lines. Times run over two hours, several records a second.
//
// The tests share one history, written once (it takes a while on a loaded
// machine).
func variedHistory(t *testing.T) string {
	t.Helper()
	varied.once.Do(func() {
		dir, err := os.MkdirTemp("", "simulate-varied-")
		if err != nil {
			t.Fatal(err)
		}
		varied.dir = dir
		varied.log = writeVariedHistory(t, dir, 3000)
	})
	if varied.log == "" {
		t.Fatal("the shared history could not be written")
	}
	return varied.log
}

var varied struct {
	once     sync.Once
	dir, log string
}

func TestMain(m *testing.M) {
	code := m.Run()
	if varied.dir != "" {
		os.RemoveAll(varied.dir)
	}
	os.Exit(code)
}

func writeVariedHistory(t *testing.T, dir string, n int) string {
	l, err := decisionlog.Open(decisionlog.Options{Dir: filepath.Join(dir, "log"), KeyDir: filepath.Join(dir, "keys"), Name: "varied", Mode: decisionlog.Async})
	if err != nil {
		t.Fatal(err)
	}
	rnd := rand.New(rand.NewPCG(23, 5))
	type agent struct {
		id, tenant, trust string
		scopes            []string
	}
	var agents []agent
	allScopes := []string{"payments:read", "payments:initiate", "sanctions:screen", "merchants:onboard", "loans:repay"}
	for i := range 12 {
		tenant := "dev.agentauthz.local"
		if i%4 == 3 {
			tenant = "acme.example"
		}
		var scopes []string
		for _, s := range allScopes {
			if rnd.IntN(2) == 0 {
				scopes = append(scopes, s)
			}
		}
		agents = append(agents, agent{fmt.Sprintf("bot-%d", i), tenant, fmt.Sprintf("L%d", i%5), scopes})
	}
	reqs := []struct{ method, path string }{
		{"GET", "/v1/payments"}, {"GET", "/v1/payments/p-17"}, {"POST", "/v1/payments"}, {"POST", "/v1/sanctions/screenings"},
		{"POST", "/v1/merchants"}, {"POST", "/v1/loans/l-9/repayments"}, {"GET", "/mcp"}, {"DELETE", "/v1/payments"},
		{"GET", "/v1/caf\u00e9"}, {"GET", `/v1/odd"quote`}, {"POST", "/mcp"},
	}
	tools := []string{"get_payment", "initiate_payment", "screen_party", "no_such_tool"}
	reasons := []string{"scope_missing", "insufficient_trust_level", "unknown_operation", "agent_quarantined"}
	at := historyStart
	for i := range n {
		at = at.Add(time.Duration(rnd.IntN(2*int(time.Hour)/n*2)) + time.Millisecond)
		a := agents[rnd.IntN(len(agents))]
		q := reqs[rnd.IntN(len(reqs))]
		rec := &decisionlog.Record{DecisionID: fmt.Sprintf("dec-%d", i), Time: at,
			Agent: decisionlog.Agent{ID: a.id, SPIFFEID: "spiffe://" + a.tenant + "/agent/" + a.id, Tenant: a.tenant, TrustLevel: a.trust,
				Scopes: a.scopes, Owner: "team", Source: "peer_certificate"},
			Request: decisionlog.Request{ID: fmt.Sprintf("req-%x", rnd.Uint64()), Method: q.method, Host: "api.example", Path: q.path,
				Source: fmt.Sprintf("10.1.%d.%d:%d", rnd.IntN(4), rnd.IntN(250), 1024+rnd.IntN(60000))},
		}
		if q.path == "/mcp" && q.method == "POST" {
			rec.Request.MCP = []decisionlog.MCPMessage{{Kind: "request", Method: "tools/call", Tool: tools[rnd.IntN(len(tools))]}}
			if rnd.IntN(3) == 0 {
				rec.Request.MCP = append(rec.Request.MCP, decisionlog.MCPMessage{Kind: "notification", Method: "notifications/initialized"})
			}
		}
		if rnd.IntN(2) == 0 {
			rec.Decision = decisionlog.Decision{Allowed: true, HTTPStatus: 200, Reasons: []string{"allowed"}}
		} else {
			rec.Decision = decisionlog.Decision{HTTPStatus: 403, Reasons: []string{reasons[rnd.IntN(len(reasons))]}}
		}
		switch rnd.IntN(60) {
		case 0:
			rec.Decision = decisionlog.Decision{HTTPStatus: 403, Reasons: []string{"agent_revoked"}}
		case 1:
			rec.Agent = decisionlog.Agent{CertSHA256: "ab"}
			rec.Decision = decisionlog.Decision{HTTPStatus: 401, Reasons: []string{"no_client_certificate"}}
		case 2:
			rec.Agent.TrustLevel = "L9"
		case 3:
			rec.Request.Source = "not an address"
		case 4:
			rec.Request.Method = ""
		case 5:
			rec.Kind, rec.Response = decisionlog.KindResponse, &decisionlog.Response{Status: 200, Body: "unsigned: not-sent"}
		case 6:
			rec.Request.MCP = []decisionlog.MCPMessage{{Kind: "request", Method: "tools/call", Tool: "get_payment"}}
			rec.Request.Method, rec.Request.Path, rec.Truncated = "POST", "/mcp", true
		}
		if _, err := l.Append(context.Background(), rec); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// Damage three record lines in place: an unterminated string, an
	// unbalanced bracket, a time that does not exist.
	segs, err := filepath.Glob(filepath.Join(dir, "log", "*.log"))
	if err != nil || len(segs) == 0 {
		t.Fatalf("segments %v %v", segs, err)
	}
	b, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []struct{ from, to string }{
		{`"decision_id":"dec-3"`, `"decision_id":"dec-3'`},
		{`"decision_id":"dec-5","agent":{`, `"decision_id":"dec-5","agent":[`},
	} {
		if !bytes.Contains(b, []byte(d.from)) {
			t.Fatalf("no %s in the first segment", d.from)
		}
		b = bytes.Replace(b, []byte(d.from), []byte(d.to), 1)
	}
	b = bytes.Replace(b, []byte(`"time":"2026-12-01T09:00:0`), []byte(`"time":"2026-02-30T09:00:0`), 1)
	if err := os.WriteFile(segs[0], b, 0o644); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "log")
}

// repoPolicy writes the repository's policy with restrictions: one agent
// quarantined until 09:40 of the history, one held to L1 until 10:15, one
// without its payments scope for good.
func repoPolicy(t *testing.T) string {
	t.Helper()
	rego, err := os.ReadFile("../../policies/authz.rego")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile("../../policies/data.json")
	if err != nil {
		t.Fatal(err)
	}
	var data map[string]map[string]any
	if err := json.Unmarshal(raw, &data); err != nil {
		t.Fatal(err)
	}
	data["agentauthz"]["restrictions"] = map[string]any{
		"spiffe://dev.agentauthz.local/agent/bot-4": map[string]any{"quarantined": true, "until": "2026-12-01T09:40:00Z"},
		"spiffe://dev.agentauthz.local/agent/bot-8": map[string]any{"max_trust": 1, "until": "2026-12-01T10:15:00Z"},
		"spiffe://acme.example/agent/bot-3":         map[string]any{"removed_scopes": []string{"payments:read"}},
	}
	out, err := json.Marshal(data)
	if err != nil {
		t.Fatal(err)
	}
	return writePolicy(t, string(rego), string(out))
}

// wholeInputPolicy reads the whole input: nothing says which of it the
// decision depends on, so no outcome is reused.
const wholeInputPolicy = `package agentauthz.authz

decision := {"allowed": false, "reason": "too_many_fields"} if {
	count(input) > 12
} else := {"allowed": false, "reason": "unknown_operation"} if {
	not input.operation
} else := {"allowed": true}
`

// hoursPolicy reads the clock for every payment (none after 10:00) and the
// request id (a "req-f…" id is refused): no outcome of a payment holds for
// another second, and the request id is part of every input.
const hoursPolicy = `package agentauthz.authz

decision := {"allowed": false, "reason": "after_hours"} if {
	input.operation == "payments:initiate"
	time.clock([time.now_ns(), "UTC"])[0] >= 10
} else := {"allowed": false, "reason": "flagged_request"} if {
	startswith(input.attributes.request.http.headers["x-request-id"], "req-f")
} else := {"allowed": false, "reason": "unknown_operation"} if {
	not input.operation
} else := {"allowed": true}
`

func replayWith(t *testing.T, src Source, policyDir string, memo bool, from, to time.Time) (*Report, *Replayer) {
	t.Helper()
	var clock time.Time
	engine, err := policy.New(policy.Config{Dir: policyDir, Path: "agentauthz/authz/decision", Now: func() time.Time { return clock }, DecisionCache: 1000})
	if err != nil {
		t.Fatal(err)
	}
	rp, err := NewReplayer(engine, &clock)
	if err != nil {
		t.Fatal(err)
	}
	rp.memo = rp.memo && memo
	acc := NewAccumulator(engine.Revision(), from, to, Gaps(engine.InputReads()))
	if err := Run(context.Background(), src, rp, acc, from, to); err != nil {
		t.Fatal(err)
	}
	return acc.Report(), rp
}

// The memoised replay of the fast decoder's records is exactly the
// straightforward one: every record decoded strictly (decisionlog.Reader)
// and decided through the decision path at its own time.
func TestMemoisedReplayEqualsPerRecord(t *testing.T) {
	logDir := variedHistory(t)
	hours := writePolicy(t, hoursPolicy, data(3, "payments:initiate"))
	whole := writePolicy(t, wholeInputPolicy, data(3, "payments:initiate"))
	for _, tc := range []struct {
		name     string
		policy   string
		from, to time.Time
	}{
		{"restrictions expiring mid-history", repoPolicy(t), time.Time{}, time.Time{}},
		{"a window across the first expiry", repoPolicy(t), historyStart.Add(25 * time.Minute), historyStart.Add(55 * time.Minute)},
		{"clock and request id read", hours, time.Time{}, time.Time{}},
		{"the whole input read", whole, time.Time{}, time.Time{}},
		{"the recording policy", writePolicy(t, testPolicy, data(3, "payments:initiate")), time.Time{}, time.Time{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			strict := decisionlog.NewReader(logDir)
			defer strict.Close()
			want, _ := replayWith(t, strict, tc.policy, false, tc.from, tc.to)
			fast := NewLogSource(logDir)
			defer fast.Close()
			got, rp := replayWith(t, fast, tc.policy, true, tc.from, tc.to)
			if !reflect.DeepEqual(got, want) {
				g, _ := json.MarshalIndent(got, "", " ")
				w, _ := json.MarshalIndent(want, "", " ")
				t.Fatalf("memoised report differs from the per-record one\ngot  %s\nwant %s", g, w)
			}
			// The comparison means something: outcomes changed, records
			// were refused, and the memo answered most records.
			if Count(want.NewlyAllowed)+Count(want.NewlyDenied) == 0 || Count(want.NotReplayed) == 0 || want.Malformed != 3 {
				t.Fatalf("a history that exercises nothing: %d newly allowed, %d newly denied, %d not replayed, %d malformed",
					Count(want.NewlyAllowed), Count(want.NewlyDenied), Count(want.NotReplayed), want.Malformed)
			}
			switch {
			case tc.policy == whole:
				if rp.memo || rp.hits != 0 {
					t.Errorf("a policy reading the whole input: memo %v, %d answers from it", rp.memo, rp.hits)
				}
			case tc.policy == hours:
				// Every request id differs: nothing can be reused.
				if !rp.keyID || rp.hits != 0 {
					t.Errorf("a policy reading the request id: keyed on it %v, %d answers from the memo", rp.keyID, rp.hits)
				}
			case rp.keyID || rp.keySrc || rp.hits < want.Replayed/2:
				t.Errorf("the memo answered %d of %d replayed records (keyed on the request id %v, on the source %v)", rp.hits, want.Replayed, rp.keyID, rp.keySrc)
			}
			t.Logf("%d read, %d replayed, %d answered from the memo, %d evaluations read the clock; %d newly allowed, %d newly denied",
				want.Read, want.Replayed, rp.hits, len(rp.timedOutcomes), Count(want.NewlyAllowed), Count(want.NewlyDenied))
		})
	}
}

// The restrictions expire where their "until" says: a quarantined agent's
// denials before 09:40 stay denials under the proposed policy, its
// requests after 09:40 are decided on their merits.
func TestRestrictionExpiresMidHistory(t *testing.T) {
	logDir := variedHistory(t)
	src := NewLogSource(logDir)
	defer src.Close()
	var clock time.Time
	engine, err := policy.New(policy.Config{Dir: repoPolicy(t), Now: func() time.Time { return clock }, DecisionCache: 1000})
	if err != nil {
		t.Fatal(err)
	}
	rp, err := NewReplayer(engine, &clock)
	if err != nil {
		t.Fatal(err)
	}
	expiry := time.Date(2026, 12, 1, 9, 40, 0, 0, time.UTC)
	var before, after, quarantinedAfter int
	for {
		e, err := src.Next()
		if errors.Is(err, decisionlog.ErrMalformed) {
			continue
		}
		if err != nil {
			break
		}
		rec := e.Record
		if rec.Agent.ID != "bot-4" || rec.Kind != "" && rec.Kind != decisionlog.KindDecision {
			continue
		}
		out, err := rp.Replay(context.Background(), rec)
		if err != nil {
			continue
		}
		switch {
		case rec.Time.Before(expiry):
			before++
			if out.Allowed || out.Reason != "agent_quarantined" {
				t.Fatalf("%s at %s, quarantined until 09:40: %v", rec.DecisionID, rec.Time.Format(time.TimeOnly), out)
			}
		default:
			after++
			if out.Reason == "agent_quarantined" {
				quarantinedAfter++
			}
		}
	}
	if before == 0 || after == 0 || quarantinedAfter != 0 {
		t.Fatalf("bot-4: %d requests before the expiry, %d after, %d of them still quarantined", before, after, quarantinedAfter)
	}
	if len(rp.timedOutcomes) == 0 {
		t.Fatal("no evaluation read the clock, yet the restriction has an until")
	}
}

// Every line the fast decoder takes decodes to the same record strictly.
func TestFastDecoderAgreesOnVariedHistory(t *testing.T) {
	logDir := variedHistory(t)
	r := decisionlog.NewReader(logDir)
	defer r.Close()
	var d fastDecoder
	taken, left := 0, 0
	for {
		e, err := r.NextRaw()
		if err != nil {
			break
		}
		if checkAgree(t, &d, e.Raw) {
			taken++
		} else {
			left++
		}
	}
	if taken < 2400 || left == 0 {
		t.Fatalf("fast decoder took %d lines and left %d to the strict one", taken, left)
	}
}

// checkAgree decodes line both ways and fails t when the fast decoder
// takes a line the strict one refuses or reads otherwise. It reports
// whether the fast decoder took the line.
func checkAgree(t *testing.T, d *fastDecoder, line string) bool {
	got, ok := d.decode(line)
	if !ok {
		return false
	}
	want, err := decisionlog.DecodeLine(line)
	if err != nil {
		t.Fatalf("fast decoder took a line the strict one refuses (%v): %q", err, line)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("fast decoder read %q as\n%+v\nstrict:\n%+v", line, *got, *want)
	}
	return true
}

func FuzzFastDecode(f *testing.F) {
	f.Add(`{"index":0,"log":"bench","kind":"decision","decision_id":"d0","agent":{"id":"agent-0","spiffe_id":"spiffe://acme.example/agent/agent-0","tenant":"acme.example","trust_level":"L1","scopes":["payments:initiate","payments:read"],"source":"peer_certificate"},"request":{"id":"req-00000000","method":"GET","host":"api.acme.example","path":"/v1/payments","operation":"payments:read","source":"10.0.0.0:1024"},"decision":{"allowed":true,"http_status":200,"reasons":["allowed"]},"time":"2026-12-01T00:00:00.000000Z"}`)
	f.Add(`{"index":7,"log":"x","kind":"decision","decision_id":"d","agent":{"id":"a"},"request":{"method":"POST","path":"/mcp","mcp":[{"kind":"request","method":"tools/call","tool":"t","operation":"o","arguments_sha256":"ab"}]},"decision":{"allowed":false,"http_status":403,"reasons":["scope_missing"],"policy_revision":"sha256:1"},"truncated":true,"time":"2024-02-29T23:59:59.999999Z"}`)
	f.Add(`{"index":1,"log":"x","kind":"decision","decision_id":"d","agent":{},"request":{},"decision":{"allowed":false,"http_status":-0,"reasons":[]},"time":"2026-12-01T00:00:00.000000Z"}`)
	f.Add(`{"index":1,"log":"x","kind":"decision","decision_id":"d","agent":{"ID":"a"},"request":{},"decision":{"http_status":1e2},"time":"2026-13-01T00:00:00.000000Z"}`)
	f.Fuzz(func(t *testing.T, line string) {
		var d fastDecoder
		checkAgree(t, &d, line)
		// A decoder that has read other lines reads this one the same.
		checkAgree(t, &d, line)
	})
}

// The fast decoder hands what it does not take to the strict decoder, so
// a source of malformed lines counts each once.
func TestLogSourceCountsMalformedLines(t *testing.T) {
	logDir := record(t)
	segs, err := filepath.Glob(filepath.Join(logDir, "*.log"))
	if err != nil || len(segs) == 0 {
		t.Fatalf("segments %v %v", segs, err)
	}
	b, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	b = []byte(strings.Replace(string(b), `"allowed":true`, `"allowed":"yes"`, 1))
	if err := os.WriteFile(segs[0], b, 0o644); err != nil {
		t.Fatal(err)
	}
	src := NewLogSource(logDir)
	defer src.Close()
	n, malformed := 0, 0
	for {
		_, err := src.Next()
		if errors.Is(err, decisionlog.ErrMalformed) {
			malformed++
			continue
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != 14 || malformed != 1 {
		t.Fatalf("%d records, %d malformed; want 14 and 1", n, malformed)
	}
}
