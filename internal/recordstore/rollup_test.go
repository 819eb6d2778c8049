package recordstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
)

// randomLog writes n decision records of random agents, operations,
// outcomes and times (over three days, not in order), rotating the key
// once (a record the rollups do not count), and returns its batches.
func randomLog(t *testing.T, name string, n int, rng *rand.Rand) ([]Group, decisionlog.KeySet) {
	t.Helper()
	dir := t.TempDir()
	l, err := decisionlog.Open(decisionlog.Options{Dir: filepath.Join(dir, "log"), KeyDir: filepath.Join(dir, "keys"), Name: name})
	if err != nil {
		t.Fatal(err)
	}
	keys := l.PublicKeys()
	base := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		if i == n/2 {
			if _, err := l.Rotate(); err != nil {
				t.Fatal(err)
			}
		}
		agent, td := fmt.Sprintf("bot-%d", rng.IntN(5)), []string{"acme.test", "beta.test"}[rng.IntN(2)]
		d := decisionlog.Decision{Allowed: true, HTTPStatus: 200, Reasons: []string{"allowed"}}
		if rng.IntN(3) == 0 {
			d = decisionlog.Decision{HTTPStatus: 403, Reasons: []string{[]string{"scope_missing", "agent_revoked", "trust_too_low"}[rng.IntN(3)]}}
		}
		if _, err := l.Append(context.Background(), &decisionlog.Record{
			DecisionID: fmt.Sprintf("%s-d%04d", name, i),
			Time:       base.Add(time.Duration(rng.Int64N(int64(72 * time.Hour)))),
			Agent:      decisionlog.Agent{ID: agent, SPIFFEID: "spiffe://" + td + "/agent/" + agent, Tenant: td, TrustLevel: "L2"},
			Request: decisionlog.Request{ID: fmt.Sprintf("%s-r%04d", name, i), Method: "POST", Path: "/v1/x",
				Operation: []string{"payments:initiate", "payments:refund", "reports:read"}[rng.IntN(3)]},
			Decision: d,
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return readGroups(t, filepath.Join(dir, "log")), keys
}

// rollupRows reads one rollup table, or the same counts grouped from the
// records table, as sorted text rows.
func rollupRows(t *testing.T, s *Store, r rollup, fromRecords bool) []string {
	t.Helper()
	cols := append([]string{r.bucket}, r.keys...)
	q := fmt.Sprintf(`SELECT %s, n, allowed FROM %s`, strings.Join(cols, ", "), r.table)
	if fromRecords {
		group := append([]string{fmt.Sprintf("time_us - time_us %% %d", r.width)}, r.keys...)
		q = fmt.Sprintf(`SELECT %s, COUNT(*), CAST(SUM(allowed) AS BIGINT) FROM records WHERE kind = 'decision' GROUP BY %s`,
			strings.Join(group, ", "), strings.Join(group, ", "))
	}
	rows, err := s.db.QueryContext(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var bucket, n, allowed int64
		keys := make([]string, len(r.keys))
		dst := []any{&bucket}
		for i := range keys {
			dst = append(dst, &keys[i])
		}
		if err := rows.Scan(append(dst, &n, &allowed)...); err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%d %q %d %d", bucket, keys, n, allowed))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// textRows reads q's rows as sorted text.
func textRows(t *testing.T, s *Store, q string, args ...any) []string {
	t.Helper()
	rows, err := s.db.QueryContext(context.Background(), q, args...)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var out []string
	for rows.Next() {
		v := make([]any, len(cols))
		for i := range v {
			v[i] = new(any)
		}
		if err := rows.Scan(v...); err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for _, x := range v {
			fmt.Fprintf(&b, "%v ", *x.(*any))
		}
		out = append(out, b.String())
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// checkRollups fails unless every rollup, and every window, equals the
// GROUP BY over the records it counts; it returns the windows' starts.
func checkRollups(t *testing.T, s *Store, what string) []int64 {
	t.Helper()
	for _, r := range rollups {
		got, want := rollupRows(t, s, r, false), rollupRows(t, s, r, true)
		if len(want) == 0 || !slices.Equal(got, want) {
			t.Fatalf("%s: %s has %d rows, the records give %d:\n%v\nwant\n%v", what, r.table, len(got), len(want), got, want)
		}
	}
	var starts []int64
	for _, w := range textRows(t, s, `SELECT id, start_day_us FROM rollup_windows`) {
		var id, start int64
		if _, err := fmt.Sscan(w, &id, &start); err != nil {
			t.Fatal(err)
		}
		got := textRows(t, s, `SELECT spiffe_id, operation, tenant, agent_id, n, allowed FROM rollup_window_counts WHERE window_id = ?`, id)
		want := textRows(t, s, `SELECT spiffe_id, operation, tenant, agent_id, COUNT(*), CAST(SUM(allowed) AS BIGINT) FROM records
			WHERE kind = 'decision' AND time_us >= ? GROUP BY spiffe_id, operation, tenant, agent_id`, start)
		if !slices.Equal(got, want) {
			t.Fatalf("%s: the window from %v has %d rows, the records give %d:\n%v\nwant\n%v", what, time.UnixMicro(start).UTC(), len(got), len(want), got, want)
		}
		starts = append(starts, start)
	}
	slices.Sort(starts)
	return starts
}

// TestRollupsMatchRecords ships two random logs in random shipments, some
// of them again (whole or overlapping what is stored), and checks after
// each that the rollups and windows equal a GROUP BY over the stored
// records (windows made part way through, then moved on, made before
// others, evicted); then that a rebuild and the migration from a store
// without rollups give the same.
func TestRollupsMatchRecords(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	a, ka := randomLog(t, "replica-a", 300, rng)
	b, kb := randomLog(t, "replica-b", 200, rng)
	eachStore(t, func(t *testing.T, s *Store, dsn string) {
		ctx := context.Background()
		rng := rand.New(rand.NewPCG(3, 4))
		day := func(d int) time.Time { return time.Date(2026, 12, 1+d, 0, 0, 0, 0, time.UTC) }
		type log struct {
			name   string
			keys   decisionlog.KeySet
			groups []Group
			next   int
		}
		logs := []*log{{"replica-a", ka, a, 0}, {"replica-b", kb, b, 0}}
		shipped, again := 0, 0
		for logs[0].next < len(logs[0].groups) || logs[1].next < len(logs[1].groups) {
			l := logs[rng.IntN(2)]
			from := l.next
			if from > 0 && rng.IntN(4) == 0 {
				from = rng.IntN(from) // ship again what is stored, maybe with new batches after it
				again++
			}
			to := min(len(l.groups), from+1+rng.IntN(8))
			if from == to {
				continue
			}
			res, err := s.Append(ctx, Shipment{Log: l.name, Keys: l.keys, Groups: l.groups[from:to]})
			if err != nil || res.Refused != nil {
				t.Fatalf("%s [%d, %d): %+v %v", l.name, from, to, res, err)
			}
			l.next = max(l.next, to)
			shipped++
			checkRollups(t, s, fmt.Sprintf("after shipment %d", shipped))
			if shipped == 5 {
				// Windows from five days before the records and from
				// their second day, while records still arrive.
				for _, d := range []int{-5, 1} {
					if _, err := s.TopAgents(ctx, day(d), 10); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		if got := checkRollups(t, s, "after the shipments"); !slices.Equal(got, []int64{micros(day(-5)), micros(day(1))}) {
			t.Fatalf("windows %v", got)
		}
		// The third day's window is the second day's moved on; the first
		// day's is made (the window five days before is too far to move);
		// the counts read are the records'.
		if _, err := s.TopAgents(ctx, day(2), 100); err != nil {
			t.Fatal(err)
		}
		top, err := s.TopAgents(ctx, day(0), 100)
		if err != nil {
			t.Fatal(err)
		}
		if got := checkRollups(t, s, "after a window moved on"); !slices.Equal(got, []int64{micros(day(-5)), micros(day(0)), micros(day(2))}) {
			t.Fatalf("windows %v", got)
		}
		want := textRows(t, s, `SELECT spiffe_id, COUNT(*), CAST(SUM(allowed) AS BIGINT) FROM records WHERE kind = 'decision' AND time_us >= ?
			GROUP BY spiffe_id`, micros(day(0)))
		var got []string
		for _, c := range top {
			got = append(got, fmt.Sprintf("%s %d %d ", c.Key, c.N, c.Allowed))
		}
		if slices.Sort(got); !slices.Equal(got, want) {
			t.Fatalf("top agents from the first day:\n%v\nwant\n%v", got, want)
		}
		for d := -100; d < -100+4*maxWindows; d += 4 {
			if _, err := s.AgentOperations(ctx, day(d), []string{"spiffe://acme.test/agent/bot-1"}); err != nil {
				t.Fatal(err)
			}
		}
		if got := checkRollups(t, s, "after evictions"); len(got) != maxWindows || got[0] != micros(day(-100)) {
			t.Fatalf("windows %v", got)
		}
		// Windows not read for maxIdleDays go when another is made.
		if _, err := s.db.ExecContext(ctx, `UPDATE rollup_windows SET read_day_us = ? WHERE start_day_us <> ?`,
			today()-(maxIdleDays+1)*(24*time.Hour).Microseconds(), micros(day(-100))); err != nil {
			t.Fatal(err)
		}
		if _, err := s.TopAgents(ctx, day(50), 1); err != nil {
			t.Fatal(err)
		}
		if got := checkRollups(t, s, "after idle windows went"); !slices.Equal(got, []int64{micros(day(-100)), micros(day(50))}) {
			t.Fatalf("windows %v", got)
		}
		if again == 0 {
			t.Fatal("no batch was shipped twice")
		}
		var n int
		if err := s.db.QueryRowContext(ctx, `SELECT CAST(SUM(n) AS BIGINT) FROM rollup_fleet_minute`).Scan(&n); err != nil || n != 500 {
			t.Fatalf("%d decisions counted, want 500 (%v)", n, err)
		}
		if err := s.RebuildRollups(ctx); err != nil {
			t.Fatal(err)
		}
		if got := checkRollups(t, s, "after a rebuild"); len(got) != 0 {
			t.Fatalf("windows after a rebuild: %v", got)
		}
		// An upgraded store: drop the rollups and go back to the version
		// before them; opening it again runs the migration that fills them.
		for _, table := range []string{"rollup_fleet_minute", "rollup_agent_minute", "rollup_fleet_hour", "rollup_agent_day", "rollup_windows", "rollup_window_counts"} {
			if _, err := s.db.ExecContext(ctx, "DROP TABLE "+table); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.db.ExecContext(ctx, "DROP INDEX records_by_spiffe_outcome"); err != nil { // schema 7's
			t.Fatal(err)
		}
		if _, err := s.db.ExecContext(ctx, `UPDATE schema_version SET version = ?`, rollupsVersion-1); err != nil {
			t.Fatal(err)
		}
		s2, err := Open(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer s2.Close()
		checkRollups(t, s2, "after the migration")
		if s2.postgres {
			var opts string
			if err := s2.db.QueryRowContext(ctx, `SELECT array_to_string(reloptions, ',') FROM pg_class WHERE relname = 'rollup_window_counts'`).Scan(&opts); err != nil || opts != "fillfactor=50" {
				t.Errorf("the windows' storage options: %q %v", opts, err)
			}
		}
	})
}

// TestRollupsConcurrent ships two logs at once through two instances on one
// database while a third reads windows that move on by a day: on
// PostgreSQL the shipments touch the same rollup rows (a row lock each) and
// the windows' lock, and must neither deadlock nor miscount.
func TestRollupsConcurrent(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	a, ka := randomLog(t, "replica-a", 300, rng)
	b, kb := randomLog(t, "replica-b", 300, rng)
	eachStore(t, func(t *testing.T, s1 *Store, dsn string) {
		ctx := context.Background()
		s2, err := Open(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer s2.Close()
		errs := make(chan error, 3)
		var wg sync.WaitGroup
		ship := func(s *Store, name string, keys decisionlog.KeySet, gs []Group) {
			defer wg.Done()
			for i := 0; i < len(gs); i += 10 {
				res, err := s.Append(ctx, Shipment{Log: name, Keys: keys, Groups: gs[i:min(len(gs), i+10)]})
				if err == nil && res.Refused != nil {
					err = res.Refused
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}
		wg.Add(3)
		go ship(s1, "replica-a", ka, a)
		go ship(s2, "replica-b", kb, b)
		go func() {
			defer wg.Done()
			for d := range 3 {
				if _, err := s1.TopAgents(ctx, time.Date(2026, 12, 1+d, 0, 0, 0, 0, time.UTC), 10); err != nil {
					errs <- err
					return
				}
			}
		}()
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		checkRollups(t, s1, "after concurrent shipments")
	})
}

// TestPrepareWindow: a prepared window is there before its first reader and
// counts what the records give; preparing it again changes nothing; a start
// off a UTC day is refused.
func TestPrepareWindow(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	groups, keys := randomLog(t, "replica-a", 100, rng)
	eachStore(t, func(t *testing.T, s *Store, dsn string) {
		ctx := context.Background()
		if res, err := s.Append(ctx, Shipment{Log: "replica-a", Keys: keys, Groups: groups}); err != nil || res.Refused != nil {
			t.Fatalf("%+v %v", res, err)
		}
		day := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
		for i := range 2 {
			if made, err := s.PrepareWindow(ctx, day); err != nil || made != (i == 0) {
				t.Fatalf("preparing %d: made %v, %v", i+1, made, err)
			}
			if got := checkRollups(t, s, "prepared"); !slices.Equal(got, []int64{micros(day)}) {
				t.Fatalf("windows %v", got)
			}
		}
		if _, err := s.PrepareWindow(ctx, day.Add(time.Hour)); !errors.Is(err, ErrBadQuery) {
			t.Fatalf("a window from 01:00: %v", err)
		}
	})
}
