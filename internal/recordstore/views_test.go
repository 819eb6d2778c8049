package recordstore

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
)

// shipBoth stores two logs of n records each (replica-a rotates its key
// half way).
func shipBoth(t *testing.T, s *Store, a, b []Group, ka, kb decisionlog.KeySet) {
	t.Helper()
	for _, sh := range []Shipment{{Log: "replica-a", Keys: ka, Groups: a}, {Log: "replica-b", Keys: kb, Groups: b}} {
		if res, err := s.Append(context.Background(), sh); err != nil || res.Refused != nil {
			t.Fatalf("%+v %v", res, err)
		}
	}
}

func TestNewestFirst(t *testing.T) {
	a, ka := testLog(t, "replica-a", 30, 0)
	b, kb := testLog(t, "replica-b", 30, 0)
	eachStore(t, func(t *testing.T, s *Store, _ string) {
		ctx := context.Background()
		shipBoth(t, s, a, b, ka, kb)
		for _, q := range []Query{{Limit: 7, Newest: true}, {Agent: "bot-1", Limit: 3, Newest: true}, {Outcome: "denied", Limit: 4, Newest: true}} {
			var got []Stored
			for {
				p, err := s.Find(ctx, q)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, p.Records...)
				if p.Next == "" {
					break
				}
				q.After = p.Next
			}
			q.After, q.Newest, q.Limit = "", false, MaxLimit
			asc, err := s.Find(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(asc.Records) || len(got) == 0 {
				t.Fatalf("%+v: %d records newest first, %d oldest first", q, len(got), len(asc.Records))
			}
			for i := range got {
				w := asc.Records[len(got)-1-i]
				if got[i].Log != w.Log || got[i].Index != w.Index {
					t.Fatalf("%+v: record %d newest first is %s/%d, want %s/%d", q, i, got[i].Log, got[i].Index, w.Log, w.Index)
				}
			}
		}
	})
}

// TestNewestFirstUsesIndex: SQLite reads the agent and time indexes
// backwards instead of sorting (a sort of 10 million rows per page would
// be what the console's newest-first pages wait for).
func TestNewestFirstUsesIndex(t *testing.T) {
	s, err := Open(context.Background(), t.TempDir()+"/records.db")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, q := range []string{
		`SELECT log, idx, time_us, line FROM records WHERE agent_id = ? ORDER BY time_us DESC, log DESC, idx DESC LIMIT ?`,
		`SELECT log, idx, time_us, line FROM records ORDER BY time_us DESC, log DESC, idx DESC LIMIT ?`,
	} {
		rows, err := s.db.Query("EXPLAIN QUERY PLAN "+q, "bot-1", 10)
		if err != nil {
			rows, err = s.db.Query("EXPLAIN QUERY PLAN "+q, 10)
		}
		if err != nil {
			t.Fatal(err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, detail)
		}
		rows.Close()
		p := strings.Join(plan, "; ")
		if strings.Contains(p, "TEMP B-TREE") || !strings.Contains(p, "INDEX records_by_") {
			t.Errorf("%s\nplan: %s", q, p)
		}
	}
}

func TestProve(t *testing.T) {
	a, ka := testLog(t, "replica-a", 300, 150)
	b, kb := testLog(t, "replica-b", 5, 0)
	eachStore(t, func(t *testing.T, s *Store, _ string) {
		ctx := context.Background()
		shipBoth(t, s, a, b, ka, kb)
		all := decisionlog.KeySet{}
		for kid, k := range ka {
			all[kid] = k
		}
		// The rotation writes its own record at index 150: 301 records.
		for _, idx := range []uint64{0, 1, 127, 128, 149, 150, 151, 300} {
			p, err := s.Prove(ctx, "replica-a", idx)
			if err != nil {
				t.Fatalf("prove %d: %v", idx, err)
			}
			// What a user does with the page: verify the receipt with the
			// keys the page shows.
			vk, err := decisionlog.ParseKeySet([]byte(p.Keys))
			if err != nil {
				t.Fatal(err)
			}
			r, err := decisionlog.VerifyReceipt(p.Receipt, vk)
			if err != nil || r.Index != idx || r.Checkpoint.Origin != "replica-a" {
				t.Fatalf("receipt of %d: %+v %v", idx, r, err)
			}
			// The receipt names this record's line.
			var line string
			if err := s.db.QueryRowContext(ctx, `SELECT line FROM records WHERE log = ? AND idx = ?`, "replica-a", int64(idx)).Scan(&line); err != nil {
				t.Fatal(err)
			}
			if decisionlog.LeafHash([]byte(line)) != r.RecordHash {
				t.Errorf("receipt of %d names another record", idx)
			}
			// The pinned first key alone does not verify a checkpoint
			// signed after the rotation.
			if idx > 150 {
				if _, err := decisionlog.VerifyReceipt(p.Receipt, ka); err == nil {
					t.Errorf("receipt of %d verified with the pre-rotation key only", idx)
				}
			}
		}
		if _, err := s.Prove(ctx, "replica-a", 301); !errors.Is(err, ErrNotStored) {
			t.Errorf("beyond the log: %v", err)
		}
		if _, err := s.Prove(ctx, "nobody", 0); !errors.Is(err, ErrNotStored) {
			t.Errorf("unknown log: %v", err)
		}
		// A stored row changed after it was stored: the batch no longer
		// matches its signed root, and Prove says so.
		if _, err := s.db.ExecContext(ctx, `UPDATE records SET line = REPLACE(line, 'payments:initiate', 'payments:refundxx') WHERE log = ? AND idx = ?`, "replica-b", 3); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Prove(ctx, "replica-b", 3); err == nil || !strings.Contains(err.Error(), "batch") {
			t.Errorf("tampered batch: %v", err)
		}
	})
}

func TestHistogram(t *testing.T) {
	a, ka := testLog(t, "replica-a", 30, 0)
	b, kb := testLog(t, "replica-b", 30, 0)
	eachStore(t, func(t *testing.T, s *Store, _ string) {
		ctx := context.Background()
		shipBoth(t, s, a, b, ka, kb)
		base := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
		h, err := s.Histogram(ctx, "", base.Add(-time.Minute), time.Minute, 3)
		if err != nil {
			t.Fatal(err)
		}
		// Records i = 0..29 at base+i s in both logs; odd i are denials.
		want := []Bucket{{base.Add(-time.Minute), 0, 0}, {base, 60, 30}, {base.Add(time.Minute), 0, 0}}
		for i := range want {
			if !h[i].Start.Equal(want[i].Start) || h[i].Decisions != want[i].Decisions || h[i].Denials != want[i].Denials {
				t.Errorf("bucket %d: %+v, want %+v", i, h[i], want[i])
			}
		}
		// Whole hours: from the hourly rollup.
		if h, err := s.Histogram(ctx, "", base.Add(-time.Hour), time.Hour, 2); err != nil || h[0].Decisions != 0 || h[1].Decisions != 60 || h[1].Denials != 30 {
			t.Errorf("hours: %+v %v", h, err)
		}
		// bot-0 decides at i = 0, 3, 6, …: allowed when i is even.
		h, err = s.Histogram(ctx, "spiffe://acme.test/agent/bot-0", base, 2*time.Minute, 1)
		if err != nil || h[0].Decisions != 20 || h[0].Denials != 10 {
			t.Errorf("one agent: %+v %v", h, err)
		}
		if h, err := s.Histogram(ctx, "spiffe://acme.test/agent/bot-0", base.Add(-time.Hour), time.Minute, 5); err != nil || h[4].Decisions != 0 {
			t.Errorf("before any record: %+v %v", h, err)
		}
		for _, bad := range []struct {
			agent string
			since time.Time
			step  time.Duration
		}{{"bot-0", base, time.Minute}, {"", base.Add(time.Second), time.Minute}, {"", base, 90 * time.Second}, {"", base, time.Second}} {
			if _, err := s.Histogram(ctx, bad.agent, bad.since, bad.step, 1); !errors.Is(err, ErrBadQuery) {
				t.Errorf("%+v: %v", bad, err)
			}
		}
		for _, n := range []int{0, MaxBuckets + 1} {
			if _, err := s.Histogram(ctx, "", base, time.Minute, n); !errors.Is(err, ErrBadQuery) {
				t.Errorf("%d buckets: %v", n, err)
			}
		}
	})
}

func TestRangeAndSizes(t *testing.T) {
	a, ka := testLog(t, "replica-a", 30, 0)
	b, kb := testLog(t, "replica-b", 10, 0)
	eachStore(t, func(t *testing.T, s *Store, _ string) {
		ctx := context.Background()
		shipBoth(t, s, a, b, ka, kb)
		sz, err := s.Sizes(ctx)
		if err != nil || sz["replica-a"] != 30 || sz["replica-b"] != 10 || len(sz) != 2 {
			t.Fatalf("sizes %v %v", sz, err)
		}
		got, err := s.Range(ctx, "replica-a", 20, 30, 4)
		if err != nil || len(got) != 4 {
			t.Fatalf("%+v %v", got, err)
		}
		for i, st := range got {
			if st.Index != uint64(29-i) || st.Record.DecisionID == "" {
				t.Errorf("record %d: %s/%d", i, st.Log, st.Index)
			}
		}
		if got, err := s.Range(ctx, "replica-b", 10, 10, 4); err != nil || len(got) != 0 {
			t.Errorf("empty range: %+v %v", got, err)
		}
	})
}

func TestAggregates(t *testing.T) {
	a, ka := testLog(t, "replica-a", 30, 0)
	b, kb := testLog(t, "replica-b", 30, 0)
	eachStore(t, func(t *testing.T, s *Store, _ string) {
		ctx := context.Background()
		shipBoth(t, s, a, b, ka, kb)
		base := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
		d, err := s.DenialsByReason(ctx, base)
		if err != nil || len(d) != 1 || d[0].Key != "scope_missing" || d[0].N != 30 {
			t.Errorf("denials by reason: %+v %v", d, err)
		}
		if d, err := s.DenialsByReason(ctx, base.Add(time.Hour)); err != nil || len(d) != 0 {
			t.Errorf("denials after the records: %+v %v", d, err)
		}
		if ops, err := s.Operations(ctx, base, 10); err != nil || len(ops) != 1 || ops[0] != (Count{"payments:initiate", 60, 30}) {
			t.Errorf("operations: %+v %v", ops, err)
		}
		top, err := s.TopAgents(ctx, base, 2)
		if err != nil || len(top) != 2 || top[0] != (Count{"spiffe://acme.test/agent/bot-0", 20, 10}) || top[1].Key != "spiffe://acme.test/agent/bot-1" {
			t.Fatalf("top agents: %+v %v", top, err)
		}
		cells, err := s.AgentOperations(ctx, base, []string{top[0].Key, top[1].Key, "spiffe://acme.test/agent/nobody"})
		if err != nil || len(cells) != 2 {
			t.Fatalf("matrix: %+v %v", cells, err)
		}
		for _, c := range cells {
			if c.Operation != "payments:initiate" || c.Decisions != 20 || c.Allowed != 10 || !strings.HasSuffix(c.SPIFFEID, "/"+c.Agent) {
				t.Errorf("cell %+v", c)
			}
		}
		if _, err := s.AgentOperations(ctx, base.Add(time.Hour), []string{top[0].Key}); !errors.Is(err, ErrBadQuery) {
			t.Errorf("matrix from an hour: %v", err)
		}
		if _, err := s.DenialsByReason(ctx, base.Add(time.Minute)); !errors.Is(err, ErrBadQuery) {
			t.Errorf("denials from a minute: %v", err)
		}
		// bot-1 decides at i = 1, 4, 7, …, 28 in both logs; odd i are
		// denied (scope_missing), so the first denial from 5 s is i = 7,
		// and later than 6 s it is allowed at i = 10, 16, 22, 28.
		first, allowed, err := s.AfterRevocation(ctx, "spiffe://acme.test/agent/bot-1", base.Add(5*time.Second), time.Second, "scope_missing")
		if err != nil || len(first) != 2 || !first["replica-a"].Equal(base.Add(7*time.Second)) || allowed != 8 {
			t.Errorf("after revocation: %v %d %v", first, allowed, err)
		}
	})
}

// shipRecords signs recs as the log name and stores them.
func shipRecords(t *testing.T, s *Store, name string, recs []*decisionlog.Record) {
	t.Helper()
	dir := t.TempDir()
	l, err := decisionlog.Open(decisionlog.Options{Dir: filepath.Join(dir, "log"), KeyDir: filepath.Join(dir, "keys"), Name: name})
	if err != nil {
		t.Fatal(err)
	}
	keys := l.PublicKeys()
	for _, rec := range recs {
		if _, err := l.Append(context.Background(), rec); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	gs := readGroups(t, filepath.Join(dir, "log"))
	if res, err := s.Append(context.Background(), Shipment{Log: name, Keys: keys, Head: uint64(len(recs)), Groups: gs}); err != nil || res.Refused != nil {
		t.Fatalf("ship %s: %+v %v", name, res, err)
	}
}

// TestAfterRevocation: on each log, the agent's first denial for one of the
// reasons at or after the revocation (not one before it, not a denial for
// another reason, not another agent's), and its decisions allowed later
// than the grace; a log it did not call since has no entry. SQLite reads
// the outcome index, with no sort.
func TestAfterRevocation(t *testing.T) {
	at := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	n := 0
	rec := func(agent string, after time.Duration, allowed bool, reason string) *decisionlog.Record {
		n++
		return &decisionlog.Record{DecisionID: fmt.Sprintf("d%d", n), Time: at.Add(after),
			Agent:    decisionlog.Agent{ID: agent, SPIFFEID: "spiffe://acme.test/agent/" + agent, Tenant: "acme.test", TrustLevel: "L2"},
			Request:  decisionlog.Request{ID: fmt.Sprintf("r%d", n), Method: "GET", Path: "/v1/x", Operation: "x:read"},
			Decision: decisionlog.Decision{Allowed: allowed, HTTPStatus: map[bool]int{true: 200, false: 403}[allowed], Reasons: []string{reason}}}
	}
	a := []*decisionlog.Record{
		rec("bot-1", -10*time.Second, false, "certificate_revoked"), // an earlier revocation
		rec("bot-1", -time.Second, true, "allowed"),
		rec("bot-1", time.Second, true, "allowed"), // within the grace
		rec("bot-1", 2*time.Second, false, "scope_missing"),
		rec("bot-1", 3*time.Second, false, "certificate_revoked"), // the first
		rec("bot-1", 4*time.Second, false, "agent_revoked"),
		rec("bot-1", 6*time.Second, true, "allowed"), // 1
		rec("bot-2", 2*time.Second, false, "certificate_revoked"),
	}
	b := []*decisionlog.Record{
		rec("bot-1", 7*time.Second, true, "allowed"), // 2
		rec("bot-1", 9*time.Second, true, "allowed"), // 3
		rec("bot-1", 20*time.Second, false, "agent_revoked"),
		rec("bot-1", 19*time.Second, false, "agent_revoked"), // the first: by time, not index
	}
	c := []*decisionlog.Record{rec("bot-2", time.Second, true, "allowed"), rec("bot-1", -time.Minute, true, "allowed")}
	eachStore(t, func(t *testing.T, s *Store, _ string) {
		shipRecords(t, s, "replica-a", a)
		shipRecords(t, s, "replica-b", b)
		shipRecords(t, s, "replica-c", c)
		first, allowed, err := s.AfterRevocation(context.Background(), "spiffe://acme.test/agent/bot-1", at, 5*time.Second, "certificate_revoked", "agent_revoked")
		want := map[string]time.Time{"replica-a": at.Add(3 * time.Second), "replica-b": at.Add(19 * time.Second)}
		if err != nil || !maps.EqualFunc(first, want, time.Time.Equal) || allowed != 3 {
			t.Errorf("after the revocation: %v, %d allowed, %v; want %v, 3", first, allowed, err, want)
		}
		if _, _, err := s.AfterRevocation(context.Background(), "x", at, 0); !errors.Is(err, ErrBadQuery) {
			t.Errorf("no reason: %v", err)
		}
		if s.postgres {
			return
		}
		rows, err := s.db.Query("EXPLAIN QUERY PLAN "+afterRevocationSQL(2), "s", 0, "r1", "r2", "s", 0)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var plan []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, detail)
		}
		p := strings.Join(plan, "; ")
		if strings.Contains(p, "TEMP B-TREE") || strings.Count(p, "USING COVERING INDEX records_by_spiffe_outcome")+strings.Count(p, "USING INDEX records_by_spiffe_outcome") != 2 {
			t.Errorf("plan: %s", p)
		}
	})
}
