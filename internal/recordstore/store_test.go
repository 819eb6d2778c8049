package recordstore

import (
	"context"
	"database/sql"
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
var (
	pgOnce sync.Once
	pg     *testenv.Postgres
	pgDBs  int
	pgMu   sync.Mutex
)

func TestMain(m *testing.M) {
	code := m.Run()
	if pgStop != nil {
		pgStop()
	}
	os.Exit(code)
}

var pgStop func()

// postgresDSN returns the DSN of a new, empty database on the shared test
// cluster (started on first use).
func postgresDSN(t *testing.T) string {
	t.Helper()
	pgOnce.Do(func() {
		// The cluster outlives this test: stop it from TestMain.
		ct := &clusterT{T: t}
		pg = testenv.StartPostgres(ct)
		pgStop = ct.cleanup
	})
	if pg == nil {
		testenv.Missing(t, "PostgreSQL (the shared cluster did not start)", "apt-get install -y postgresql")
	}
	pgMu.Lock()
	pgDBs++
	name := fmt.Sprintf("t%d", pgDBs)
	pgMu.Unlock()
	db, err := sql.Open("pgx", pg.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("CREATE DATABASE " + name); err != nil {
		t.Fatal(err)
	}
	return strings.Replace(pg.DSN, "/postgres?", "/"+name+"?", 1)
}

// clusterT keeps the cleanups of the shared cluster for TestMain.
type clusterT struct {
	*testing.T
	mu  sync.Mutex
	fns []func()
}

func (c *clusterT) Cleanup(f func()) { c.mu.Lock(); c.fns = append(c.fns, f); c.mu.Unlock() }
func (c *clusterT) cleanup() {
	for i := len(c.fns) - 1; i >= 0; i-- {
		c.fns[i]()
	}
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

// testLog writes n real signed decision records (rotating the key after
// rotateAfter when > 0) and returns their JWS lines and the first keys.
func testLog(t *testing.T, name string, n, rotateAfter int) ([]string, decisionlog.KeySet) {
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
	r := decisionlog.NewReader(filepath.Join(dir, "log"))
	defer r.Close()
	var out []string
	for {
		e, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e.JWS)
	}
	return out, keys
}

func TestAppendVerifiesAndIsIdempotent(t *testing.T) {
	jws, keys := testLog(t, "replica-a", 40, 25)
	eachStore(t, func(t *testing.T, s *Store, _ string) {
		ctx := context.Background()
		// In two batches with an overlap: the overlap is a duplicate.
		res, err := s.Append(ctx, Batch{Log: "replica-a", Keys: keys, Head: 41, Records: jws[:30]})
		if err != nil || res.Refused != nil || res.Stored != 30 {
			t.Fatalf("first batch: %+v %v", res, err)
		}
		res, err = s.Append(ctx, Batch{Log: "replica-a", Head: 41, Records: jws[20:]})
		if err != nil || res.Refused != nil || res.Stored != len(jws)-30 || res.Duplicates != 10 {
			t.Fatalf("second batch: %+v %v", res, err)
		}
		if c, _ := s.LogCursor(ctx, "replica-a"); c.Seq != uint64(len(jws)) || c.Hash != decisionlog.ChainHash(jws[len(jws)-1]) {
			t.Errorf("cursor %+v", c)
		}
		v, err := s.Verify(ctx, "replica-a", nil)
		if err != nil || v.Problem != nil || v.Records != uint64(len(jws)) {
			t.Errorf("verify: %+v %v", v, err)
		}
	})
}

func TestAppendRefuses(t *testing.T) {
	jws, keys := testLog(t, "replica-a", 10, 0)
	other, otherKeys := testLog(t, "replica-b", 10, 0)
	forged := []byte(jws[5])
	// Change one character of the signature to another base64url one.
	if i := len(forged) - 3; forged[i] == 'A' {
		forged[i] = 'B'
	} else {
		forged[i] = 'A'
	}
	for _, tc := range []struct {
		name    string
		log     string
		keys    decisionlog.KeySet
		records []string
		stored  int
		reason  string
	}{
		{"bad signature", "replica-a", keys, append(append([]string{}, jws[:5]...), string(forged)), 5, RefusedSignature},
		{"gap", "replica-a", keys, []string{jws[0], jws[1], jws[3]}, 2, RefusedGap},
		{"another replica's log name", "replica-a", otherKeys, other[:2], 0, RefusedWrongLog},
		{"unknown key", "replica-a", otherKeys, jws[:2], 0, RefusedUnknownKey},
		{"garbage", "replica-a", keys, []string{jws[0], "not.a.jws"}, 1, RefusedMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eachStore(t, func(t *testing.T, s *Store, _ string) {
				res, err := s.Append(context.Background(), Batch{Log: tc.log, Keys: tc.keys, Records: tc.records})
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
	// A different record for a stored seq is a conflict; what is stored
	// stays as it was.
	eachStore(t, func(t *testing.T, s *Store, _ string) {
		ctx := context.Background()
		if _, err := s.Append(ctx, Batch{Log: "replica-a", Keys: keys, Records: jws[:3]}); err != nil {
			t.Fatal(err)
		}
		fake, fakeKeys := testLog(t, "replica-a", 3, 0)
		res, err := s.Append(ctx, Batch{Log: "replica-a", Keys: fakeKeys, Records: fake})
		if err != nil || res.Refused == nil || res.Refused.Reason != RefusedConflict {
			t.Fatalf("conflict: %+v %v", res, err)
		}
		p, err := s.Find(ctx, Query{Log: "replica-a"})
		if err != nil || len(p.Records) != 3 || p.Records[0].JWS != jws[0] {
			t.Errorf("stored records changed: %v", err)
		}
	})
}

func TestFind(t *testing.T) {
	a, ka := testLog(t, "replica-a", 30, 0)
	b, kb := testLog(t, "replica-b", 30, 0)
	eachStore(t, func(t *testing.T, s *Store, _ string) {
		ctx := context.Background()
		for _, bt := range []Batch{{Log: "replica-a", Keys: ka, Records: a}, {Log: "replica-b", Keys: kb, Records: b}} {
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
	jws, keys := testLog(t, "replica-a", 200, 0)
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
				for i := 0; i < len(jws); i += 20 {
					// Each instance ships everything from the start of
					// the chunk: overlaps and races are the point.
					res, err := s.Append(ctx, Batch{Log: "replica-a", Keys: keys, Records: jws[max(0, i-10):min(len(jws), i+20)]})
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
		if _, err := s2.Append(ctx, Batch{Log: "replica-a", Records: jws}); err != nil {
			t.Fatal(err)
		}
		v, err := s1.Verify(ctx, "replica-a", nil)
		if err != nil || v.Problem != nil || v.Records != uint64(len(jws)) {
			t.Fatalf("verify: %+v %v", v, err)
		}
	})
}
