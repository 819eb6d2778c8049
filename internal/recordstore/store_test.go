package recordstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/testenv"
)

// One PostgreSQL cluster serves every test of the package, a new database
// per test.
var pgShared testenv.Shared

func TestMain(m *testing.M) {
	code := m.Run()
	pgShared.Stop()
	os.Exit(code)
}

// postgresDSN returns the DSN of a new, empty database on the shared test
// cluster (started on first use).
func postgresDSN(t testing.TB) string {
	t.Helper()
	return pgShared.Database(t)
}

// eachStore runs f against a fresh SQLite store and a fresh PostgreSQL one.
func eachStore(t *testing.T, f func(t *testing.T, s *Store, dsn string)) {
	t.Run("sqlite", func(t *testing.T) {
		dsn := filepath.Join(t.TempDir(), "records.db")
		s, err := Open(context.Background(), dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		f(t, s, dsn)
	})
	t.Run("postgres", func(t *testing.T) {
		dsn := postgresDSN(t)
		s, err := Open(context.Background(), dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		f(t, s, dsn)
	})
}

// testLog writes n real decision records (rotating the key after
// rotateAfter when > 0) and returns them as the log's group-commit batches,
// each with its checkpoint, and the first keys.
func testLog(t testing.TB, name string, n, rotateAfter int) ([]Group, decisionlog.KeySet) {
	t.Helper()
	dir := t.TempDir()
	l, err := decisionlog.Open(decisionlog.Options{Dir: filepath.Join(dir, "log"), KeyDir: filepath.Join(dir, "keys"), Name: name,
		SegmentMaxBytes: 1 << 16})
	if err != nil {
		t.Fatal(err)
	}
	keys := l.PublicKeys()
	base := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		if rotateAfter > 0 && i == rotateAfter {
			if _, err := l.Rotate(); err != nil {
				t.Fatal(err)
			}
		}
		agent := fmt.Sprintf("bot-%d", i%3)
		rec := &decisionlog.Record{
			DecisionID: fmt.Sprintf("%s-d%04d", name, i),
			Time:       base.Add(time.Duration(i) * time.Second),
			Agent:      decisionlog.Agent{ID: agent, SPIFFEID: "spiffe://acme.test/agent/" + agent, Tenant: "acme.test", TrustLevel: "L2"},
			Request:    decisionlog.Request{ID: fmt.Sprintf("%s-r%04d", name, i), Method: "POST", Path: "/v1/payments", Operation: "payments:initiate"},
			Decision:   decisionlog.Decision{Allowed: i%2 == 0, HTTPStatus: 200, Reasons: []string{"allowed"}},
		}
		if i%2 == 1 {
			rec.Decision.HTTPStatus, rec.Decision.Reasons = 403, []string{"scope_missing"}
		}
		if _, err := l.Append(context.Background(), rec); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return readGroups(t, filepath.Join(dir, "log")), keys
}

func readGroups(t testing.TB, dir string) []Group {
	t.Helper()
	r := decisionlog.NewReader(dir)
	defer r.Close()
	var out []Group
	var g Group
	for {
		e, cp, err := r.NextOrCheckpoint()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if cp != nil {
			g.Checkpoint = string(cp)
			out = append(out, g)
			g = Group{}
			continue
		}
		g.Records = append(g.Records, e.Raw)
	}
}

func records(gs []Group) int {
	n := 0
	for _, g := range gs {
		n += len(g.Records)
	}
	return n
}

func TestAppendVerifiesAndIsIdempotent(t *testing.T) {
	gs, keys := testLog(t, "replica-a", 40, 25)
	n := records(gs)
	eachStore(t, func(t *testing.T, s *Store, _ string) {
		ctx := context.Background()
		// In two shipments with an overlap: the overlap is a duplicate.
		res, err := s.Append(ctx, Shipment{Log: "replica-a", Keys: keys, Head: uint64(n), Groups: gs[:30]})
		if err != nil || res.Refused != nil || res.Stored != records(gs[:30]) {
			t.Fatalf("first shipment: %+v %v", res, err)
		}
		res, err = s.Append(ctx, Shipment{Log: "replica-a", Head: uint64(n), Groups: gs[20:]})
		if err != nil || res.Refused != nil || res.Stored != records(gs[30:]) || res.Duplicates != records(gs[20:30]) {
			t.Fatalf("second shipment: %+v %+v %v", res, res.Refused, err)
		}
		if c, _ := s.LogCursor(ctx, "replica-a"); c.Size != uint64(n) {
			t.Errorf("cursor %+v", c)
		}
		v, err := s.Verify(ctx, "replica-a", nil)
		if err != nil || v.Problem != nil || v.Records != uint64(n) {
			t.Errorf("verify: %+v %+v %v", v, v.Problem, err)
		}
	})
}

func TestAppendRefuses(t *testing.T) {
	gs, keys := testLog(t, "replica-a", 10, 0)
	other, otherKeys := testLog(t, "replica-b", 10, 0)
	// A record changed after the checkpoint signed it.
	forged := append([]Group{}, gs[:6]...)
	forged[5] = Group{Records: []string{strings.Replace(gs[5].Records[0], "scope_missing", "allowed", 1)}, Checkpoint: gs[5].Checkpoint}
	// A checkpoint whose signature was altered.
	cp := []byte(gs[2].Checkpoint)
	i := len(cp) - 6 // inside the base64 signature of the last line
	if cp[i] == 'A' {
		cp[i] = 'B'
	} else {
		cp[i] = 'A'
	}
	badSig := append(append([]Group{}, gs[:2]...), Group{Records: gs[2].Records, Checkpoint: string(cp)})
	for _, tc := range []struct {
		name   string
		keys   decisionlog.KeySet
		groups []Group
		stored int
		reason string
	}{
		{"record changed", keys, forged, 5, RefusedSignature},
		{"gap", keys, []Group{gs[0], gs[1], gs[3]}, 2, RefusedGap},
		{"another replica's log", otherKeys, other[:2], 0, RefusedWrongLog},
		{"checkpoint signature altered", keys, badSig, 2, RefusedCheckpoint},
		{"unknown key", otherKeys, gs[:2], 0, RefusedCheckpoint},
		{"garbage", keys, []Group{gs[0], {Records: []string{"{}"}, Checkpoint: gs[1].Checkpoint}}, 1, RefusedMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eachStore(t, func(t *testing.T, s *Store, _ string) {
				res, err := s.Append(context.Background(), Shipment{Log: "replica-a", Keys: tc.keys, Groups: tc.groups})
				if err != nil {
					t.Fatal(err)
				}
				if res.Refused == nil || res.Refused.Reason != tc.reason || res.Stored != tc.stored {
					t.Fatalf("got %+v (refused %+v), want %d stored then %s", res, res.Refused, tc.stored, tc.reason)
				}
				var n int
				if err := s.db.QueryRow(`SELECT COUNT(*) FROM refusals`).Scan(&n); err != nil || n != 1 {
					t.Errorf("refusals recorded: %d %v", n, err)
				}
			})
		})
	}
	// A different batch for stored indices is a conflict; what is stored
	// stays as it was.
	eachStore(t, func(t *testing.T, s *Store, _ string) {
		ctx := context.Background()
		if _, err := s.Append(ctx, Shipment{Log: "replica-a", Keys: keys, Groups: gs[:3]}); err != nil {
			t.Fatal(err)
		}
		fake := []Group{gs[0], {Records: []string{strings.Replace(gs[1].Records[0], "scope_missing", "allowed", 1)}, Checkpoint: gs[1].Checkpoint}}
		res, err := s.Append(ctx, Shipment{Log: "replica-a", Groups: fake})
		if err != nil || res.Refused == nil || res.Refused.Reason != RefusedConflict {
			t.Fatalf("conflict: %+v %v", res, err)
		}
		p, err := s.Find(ctx, Query{Log: "replica-a"})
		if err != nil || len(p.Records) != 3 || p.Records[0].Line != gs[0].Records[0] {
			t.Errorf("stored records changed: %v", err)
		}
	})
}

func TestFind(t *testing.T) {
	a, ka := testLog(t, "replica-a", 30, 0)
	b, kb := testLog(t, "replica-b", 30, 0)
	eachStore(t, func(t *testing.T, s *Store, _ string) {
		ctx := context.Background()
		for _, bt := range []Shipment{{Log: "replica-a", Keys: ka, Groups: a}, {Log: "replica-b", Keys: kb, Groups: b}} {
			if res, err := s.Append(ctx, bt); err != nil || res.Refused != nil {
				t.Fatalf("%+v %v", res, err)
			}
		}
		count := func(q Query) int {
			t.Helper()
			n := 0
			for {
				p, err := s.Find(ctx, q)
				if err != nil {
					t.Fatal(err)
				}
				n += len(p.Records)
				if p.Next == "" {
					return n
				}
				q.After = p.Next
			}
		}
		for _, tc := range []struct {
			name string
			q    Query
			want int
		}{
			{"all, paged by 7", Query{Limit: 7}, 60},
			{"decision id", Query{DecisionID: "replica-b-d0007"}, 1},
			{"request id", Query{RequestID: "replica-a-r0003"}, 1},
			{"agent", Query{Agent: "bot-1"}, 20},
			{"spiffe id", Query{Agent: "spiffe://acme.test/agent/bot-2"}, 20},
			{"denied", Query{Outcome: "denied"}, 30},
			{"reason", Query{Reason: "scope_missing", Log: "replica-a"}, 15},
			{"tenant and operation", Query{Tenant: "acme.test", Operation: "payments:initiate", Limit: 1000}, 60},
			{"time range", Query{Since: time.Date(2026, 12, 1, 0, 0, 10, 0, time.UTC), Until: time.Date(2026, 12, 1, 0, 0, 19, 0, time.UTC)}, 20},
			{"nothing", Query{Agent: "ghost"}, 0},
		} {
			if got := count(tc.q); got != tc.want {
				t.Errorf("%s: %d records, want %d", tc.name, got, tc.want)
			}
		}
		p, err := s.Find(ctx, Query{DecisionID: "replica-a-d0004"})
		if err != nil || len(p.Records) != 1 || p.Records[0].Record.Request.ID != "replica-a-r0004" {
			t.Errorf("by decision id: %+v %v", p, err)
		}
		for _, bad := range []Query{{Outcome: "maybe"}, {Limit: MaxLimit + 1}, {After: "x"}} {
			if _, err := s.Find(ctx, bad); !errors.Is(err, ErrBadQuery) {
				t.Errorf("%+v: %v", bad, err)
			}
		}
	})
}

// TestTwoInstancesOneDatabase: two stores on one database take batches of
// one log concurrently (as two control-plane instances behind a load
// balancer would, when a replica's retry reaches the other one): every
// record is stored once and the chain stays whole.
func TestTwoInstancesOneDatabase(t *testing.T) {
	gs, keys := testLog(t, "replica-a", 200, 0)
	eachStore(t, func(t *testing.T, s1 *Store, dsn string) {
		ctx := context.Background()
		s2, err := Open(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer s2.Close()
		var wg sync.WaitGroup
		errs := make(chan error, 2)
		for _, s := range []*Store{s1, s2} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < len(gs); i += 20 {
					// Each instance ships everything from the start of
					// the chunk: overlaps and races are the point.
					res, err := s.Append(ctx, Shipment{Log: "replica-a", Keys: keys, Groups: gs[max(0, i-10):min(len(gs), i+20)]})
					if err != nil {
						errs <- err
						return
					}
					if res.Refused != nil && res.Refused.Reason != RefusedGap {
						errs <- res.Refused
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		// Whatever raced, a final full shipment completes the log.
		if _, err := s2.Append(ctx, Shipment{Log: "replica-a", Groups: gs}); err != nil {
			t.Fatal(err)
		}
		v, err := s1.Verify(ctx, "replica-a", nil)
		if err != nil || v.Problem != nil || v.Records != uint64(records(gs)) {
			t.Fatalf("verify: %+v %v", v, err)
		}
	})
}

// TestPostgresRestart: a PostgreSQL restart (fast shutdown: connections
// cut) loses nothing committed, and the store works again once the
// database is back, without being reopened.
func TestPostgresRestart(t *testing.T) {
	gs, keys := testLog(t, "replica-a", 20, 0)
	p := testenv.StartPostgres(t)
	ctx := context.Background()
	s, err := Open(ctx, p.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if res, err := s.Append(ctx, Shipment{Log: "replica-a", Keys: keys, Groups: gs[:10]}); err != nil || res.Refused != nil {
		t.Fatalf("%+v %v", res, err)
	}
	p.Restart(t)
	// The first call may meet a connection the restart cut; the shipper
	// retries the same way.
	var res *Result
	for i := 0; ; i++ {
		if res, err = s.Append(ctx, Shipment{Log: "replica-a", Groups: gs}); err == nil {
			break
		}
		if i == 5 {
			t.Fatalf("after restart: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if res.Refused != nil || res.Duplicates != records(gs[:10]) || res.Stored != records(gs[10:]) {
		t.Fatalf("after restart: %+v %+v", res, res.Refused)
	}
	if v, err := s.Verify(ctx, "replica-a", nil); err != nil || v.Problem != nil || v.Records != uint64(records(gs)) {
		t.Fatalf("verify: %+v %v", v, err)
	}
}
