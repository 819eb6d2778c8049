package extproc

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
)

// testID is a decision id in the form extauthz makes them (a UUID), named
// for a test.
func testID(name string) string { return uuid.NewSHA1(uuid.NameSpaceOID, []byte(name)).String() }

func noteAt(table *Table, id string, at time.Time, method, host, path string) {
	table.Note(&decisionlog.Record{DecisionID: id, Time: at,
		Agent:    decisionlog.Agent{ID: "payments-agent", TrustLevel: "L3"},
		Request:  decisionlog.Request{Method: method, Host: host, Path: pathOnly(path)[:min(len(pathOnly(path)), 2048)], Operation: "payments:initiate"},
		Decision: decisionlog.Decision{Allowed: true}})
}

// The table keeps a hash of the request line, not the line: a 2 KiB path
// costs 32 bytes per pending decision, and still binds exactly.
func TestTableBindsTheRequestLine(t *testing.T) {
	table := NewTable(TableOptions{Size: 4, TTL: time.Minute})
	long := "/v1/" + strings.Repeat("p", 3000)
	note := func(id, method, host, path string) { noteAt(table, testID(id), time.Now(), method, host, path) }
	note("a", "GET", "API.example", long+"?q=1")
	d, src, err := table.Lookup(testID("a"), nil, "GET", "api.example", long+"?other")
	if err != nil {
		t.Fatalf("same request (host case, query aside): %v", err)
	}
	if src != "local" || d.ID != testID("a") || d.AgentID != "payments-agent" || d.TrustLevel != "L3" || d.Operation != "payments:initiate" {
		t.Fatalf("bound %+v from %s", d, src)
	}
	if _, _, err := table.Lookup(testID("a"), nil, "GET", "api.example", long); !errors.Is(err, ErrNoDecision) {
		t.Fatalf("one decision bound two responses: %v", err)
	}
	for _, c := range [][3]string{{"POST", "api.example", "/x"}, {"GET", "api.example.evil", "/x"}, {"GET", "api.example", "/y"}} {
		note("b", "GET", "api.example", "/x")
		if _, _, err := table.Lookup(testID("b"), nil, c[0], c[1], c[2]); !errors.Is(err, ErrMismatch) {
			t.Errorf("%v: err = %v, want ErrMismatch", c, err)
		}
	}
}

// Only ids spelled as agentauthz writes them are held, so a response
// carries its decision's id exactly as the decision record does.
func TestTableIDs(t *testing.T) {
	table := NewTable(TableOptions{Size: 8, TTL: time.Minute})
	id := testID("x")
	for _, bad := range []string{"dec-1", strings.ToUpper(id), "{" + id[1:] + "}", strings.ReplaceAll(id, "-", "") + "xxxx",
		"00000000-0000-0000-0000-000000000000", id[:35] + "g"} {
		noteAt(table, bad, time.Now(), "GET", "h", "/")
		if _, _, err := table.Lookup(bad, nil, "GET", "h", "/"); !errors.Is(err, ErrNoDecision) {
			t.Errorf("%q: %v, want ErrNoDecision", bad, err)
		}
	}
	noteAt(table, id, time.Now(), "GET", "h", "/")
	if _, _, err := table.Lookup(strings.ToUpper(id), nil, "GET", "h", "/"); !errors.Is(err, ErrNoDecision) {
		t.Fatalf("another spelling bound: %v", err)
	}
	if _, _, err := table.Lookup(id, nil, "GET", "h", "/"); err != nil {
		t.Fatal(err)
	}
	if k, ok := parseDecisionID(id); !ok || uuid.UUID(k).String() != id {
		t.Fatalf("parse %s: %x %v", id, k, ok)
	}
}

// A decision binds its response for the TTL only.
func TestTableTTL(t *testing.T) {
	now := time.Now()
	table := NewTable(TableOptions{Size: 8, TTL: time.Minute, Now: func() time.Time { return now }})
	noteAt(table, testID("old"), now.Add(-time.Minute-time.Millisecond), "GET", "h", "/")
	noteAt(table, testID("new"), now.Add(-time.Minute), "GET", "h", "/")
	noteAt(table, testID("future"), now.Add(2*time.Minute), "GET", "h", "/")
	if _, _, err := table.Lookup(testID("old"), nil, "GET", "h", "/"); !errors.Is(err, ErrNoDecision) {
		t.Fatalf("expired decision bound: %v", err)
	}
	if _, _, err := table.Lookup(testID("future"), nil, "GET", "h", "/"); !errors.Is(err, ErrNoDecision) {
		t.Fatalf("decision from the future bound: %v", err)
	}
	if d, _, err := table.Lookup(testID("new"), nil, "GET", "h", "/"); err != nil || !d.At.Equal(now.Add(-time.Minute)) {
		t.Fatalf("%v at %v", err, d.At)
	}
}

// A full table drops its oldest decision, counts it, and says why it is
// full: no ext_proc stream at all (Envoy without the filter), or too small.
func TestTableBounded(t *testing.T) {
	var logs bytes.Buffer
	reg := prometheus.NewRegistry()
	table := NewTable(TableOptions{Size: 4, TTL: time.Hour, Registerer: reg,
		Logger: hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Warn})})
	t0 := time.Now()
	for i := range 6 {
		noteAt(table, testID(fmt.Sprint("n", i)), t0, "GET", "h", "/")
	}
	for i, want := range []bool{false, false, true, true, true, true} {
		if _, _, err := table.Lookup(testID(fmt.Sprint("n", i)), nil, "GET", "h", "/"); (err == nil) != want {
			t.Errorf("n%d: %v, held %v", i, err, want)
		}
	}
	if got := testutil.ToFloat64(mustCollector(t, reg, "agentauthz_extproc_decisions_evicted_total")); got != 2 {
		t.Fatalf("evicted %v, want 2", got)
	}
	if got := testutil.ToFloat64(mustCollector(t, reg, "agentauthz_extproc_decisions_pending")); got != 0 {
		t.Fatalf("pending %v, want 0", got)
	}
	if n := strings.Count(logs.String(), "[WARN]"); n != 1 || !strings.Contains(logs.String(), "no ext_proc stream has asked") {
		t.Fatalf("want one warning that no ext_proc stream came, got:\n%s", &logs)
	}
	// With ext_proc streams coming, a later overflow (a minute on) says the
	// bound is too small.
	logs.Reset()
	for i := range 5 {
		noteAt(table, testID(fmt.Sprint("m", i)), t0.Add(warnEvery), "GET", "h", "/")
	}
	if n := strings.Count(logs.String(), "[WARN]"); n != 1 || !strings.Contains(logs.String(), "raise response_signing.max_pending") {
		t.Fatalf("want one warning to raise max_pending, got:\n%s", &logs)
	}
	if got := testutil.ToFloat64(mustCollector(t, reg, "agentauthz_extproc_decisions_pending")); got != 4 {
		t.Fatalf("pending %v, want 4", got)
	}
}

func mustCollector(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "x"}, func() float64 { return v })
		}
	}
	t.Fatalf("%s not registered", name)
	return nil
}

// The ring and its open-addressing index behave as a map whose entries
// leave after size later notes: random notes (repeated ids too) and takes
// against a model.
func TestTableMatchesModel(t *testing.T) {
	const size = 64
	table := NewTable(TableOptions{Size: size, TTL: time.Hour})
	held := map[string]int{} // id → the note that holds it
	var ring [size]string    // the id of each note, by note number mod size
	ids := make([]string, 300)
	for i := range ids {
		ids[i] = uuid.Must(uuid.NewV7()).String()
	}
	rng := rand.New(rand.NewPCG(1, 2))
	now := time.Now()
	notes, evicted := 0, 0
	for step := range 200000 {
		id := ids[rng.IntN(len(ids))]
		if rng.IntN(2) == 0 {
			noteAt(table, id, now, "GET", "h", "/")
			delete(held, id) // noted again: the latest note holds it
			if old := ring[notes%size]; old != "" && held[old] == notes-size {
				delete(held, old)
				evicted++
			}
			ring[notes%size] = id
			held[id] = notes
			notes++
		} else {
			_, ok := held[id]
			if _, _, err := table.Lookup(id, nil, "GET", "h", "/"); (err == nil) != ok {
				t.Fatalf("step %d: %s held %v, lookup: %v", step, id, ok, err)
			}
			delete(held, id)
		}
		if table.held != len(held) || int(table.evicted) != evicted {
			t.Fatalf("step %d: table holds %d and evicted %d, model %d and %d", step, table.held, table.evicted, len(held), evicted)
		}
	}
}

// Interned names are reclaimed: many agents one after the other keep the
// list within its bound.
func TestTableNamesBounded(t *testing.T) {
	table := NewTable(TableOptions{Size: 4, TTL: time.Hour})
	for i := range 5000 {
		id := uuid.Must(uuid.NewV7()).String()
		table.Note(&decisionlog.Record{DecisionID: id, Time: time.Now(), Agent: decisionlog.Agent{ID: fmt.Sprint("agent-", i)},
			Request: decisionlog.Request{Method: "GET", Host: "h", Path: "/"}, Decision: decisionlog.Decision{Allowed: true}})
		if i%2 == 0 {
			if d, _, err := table.Lookup(id, nil, "GET", "h", "/"); err != nil || d.AgentID != fmt.Sprint("agent-", i) {
				t.Fatalf("%v %+v", err, d)
			}
		}
	}
	if n := len(table.who.list); n > 4+1024 || len(table.who.ids) > n {
		t.Fatalf("%d names interned for a table of 4", n)
	}
}

// Noting and taking a decision allocates nothing.
func TestTableAllocations(t *testing.T) {
	table := NewTable(TableOptions{Size: 1024, TTL: time.Hour})
	recs := benchRecords(64)
	i := 0
	cycle := func() {
		r := &recs[i%len(recs)]
		i++
		table.Note(r)
		if _, _, err := table.Lookup(r.DecisionID, nil, "POST", "payments.internal", "/v1/payments"); err != nil {
			t.Fatal(err)
		}
	}
	cycle()
	if n := testing.AllocsPerRun(1000, cycle); n != 0 {
		t.Fatalf("%v allocations per note and take", n)
	}
}

// FuzzParseDecisionID: an id from a request header is held only in the one
// spelling agentauthz writes, and reads back as itself.
func FuzzParseDecisionID(f *testing.F) {
	f.Add("0190c6c4-7e0a-7d3c-9d6e-1f2a3b4c5d6e")
	f.Add("0190C6C4-7E0A-7D3C-9D6E-1F2A3B4C5D6E")
	f.Add("00000000-0000-0000-0000-000000000000")
	f.Add("urn:uuid:0190c6c4-7e0a-7d3c-9d6e-1f2a3b4c5d6e")
	f.Add("0190c6c4+7e0a-7d3c-9d6e-1f2a3b4c5d6e")
	f.Fuzz(func(t *testing.T, s string) {
		k, ok := parseDecisionID(s)
		u, err := uuid.Parse(s)
		want := err == nil && u.String() == s && u != uuid.Nil
		if ok != want {
			t.Fatalf("%q: held %v, want %v", s, ok, want)
		}
		if ok && uuid.UUID(k) != u {
			t.Fatalf("%q read as %x", s, k)
		}
	})
}
