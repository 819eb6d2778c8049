package cli

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/hashicorp/go-hclog"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/alerts"
	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/pgsql"
	"github.com/agentauthz/agentauthz/internal/recordstore"
	"github.com/agentauthz/agentauthz/internal/testenv"
)

// shipTestLog writes n real decision records to a replica's log named name
// and ships them, as the control plane stores them, into the record store st.
// With probe, the records are one agent's scope-probing burst (operations
// denied scope_missing, seconds apart), which the anomaly detector alerts on.
func shipTestLog(t *testing.T, st *recordstore.Store, name string, n int, probe bool) {
	t.Helper()
	dir := t.TempDir()
	l, err := decisionlog.Open(decisionlog.Options{Dir: filepath.Join(dir, "log"), KeyDir: filepath.Join(dir, "keys"), Name: name})
	if err != nil {
		t.Fatal(err)
	}
	keys := l.PublicKeys()
	base := time.Now().UTC().Add(-time.Hour)
	for i := range n {
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
		if probe {
			rec.Agent = decisionlog.Agent{ID: "prober", SPIFFEID: "spiffe://acme.test/agent/prober", Tenant: "acme.test", TrustLevel: "L2"}
			rec.Request.Operation = []string{"accounts:close", "limits:raise", "refunds:issue"}[i%3]
			rec.Decision = decisionlog.Decision{Allowed: false, HTTPStatus: 403, Reasons: []string{"scope_missing"}}
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
	sh := recordstore.Shipment{Log: name, Keys: keys, Head: uint64(n)}
	var g recordstore.Group
	for {
		e, cp, err := r.NextOrCheckpoint()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if cp != nil {
			g.Checkpoint = string(cp)
			sh.Groups = append(sh.Groups, g)
			g = recordstore.Group{}
			continue
		}
		g.Records = append(g.Records, e.Raw)
	}
	res, err := st.Append(context.Background(), sh)
	if err != nil || res.Refused != nil || res.Stored != n {
		t.Fatalf("ship %s: %+v, %v", name, res, err)
	}
}

// TestMigrateStore: a control plane's SQLite data directory, populated as
// users do (a CA, agents issued, revoked and restricted, a rotated change-log
// key, records shipped from two replica logs, an alert), moves to PostgreSQL with
// control migrate-store, and the PostgreSQL stores, opened as control serve
// --store opens them, hold the same: a change log that verifies to the same
// head, the same agents and restrictions, the same records and roots per
// log, the same rollups, the same alerts. A second run into the now filled database, a bad
// URL and a running control plane are refused; the SQLite files are not
// changed.
func TestMigrateStore(t *testing.T) {
	ctx := context.Background()
	t.Setenv("AGENTAUTHZ_STORE", "")
	dir := t.TempDir()
	cli(t, "ca", "init", "--trust-domain", "acme.test", "--data-dir", dir)
	for _, a := range []string{"payments-agent", "loan-servicer", "merchant-onboarder"} {
		cli(t, "agent", "issue", a, "--trust", "L2", "--scope", "payments:initiate", "--scope", "ledger:read", "--owner", "team-pay", "--data-dir", dir, "--out-dir", filepath.Join(dir, "out"))
	}
	cli(t, "agent", "revoke", "loan-servicer", "--reason", "keyCompromise", "--data-dir", dir)
	cli(t, "agent", "restrict", "payments-agent", "--max-trust", "L1", "--remove-scope", "ledger:read", "--reason", "INC-7", "--data-dir", dir)
	cli(t, "ca", "rotate-changelog-key", "--reason", "yearly", "--data-dir", dir)
	cli(t, "agent", "restrict", "merchant-onboarder", "--quarantine", "--reason", "INC-8", "--data-dir", dir)
	src, err := recordstore.Open(ctx, filepath.Join(dir, "records.db"))
	if err != nil {
		t.Fatal(err)
	}
	shipTestLog(t, src, "replica-0", 450, false) // more than one copy batch
	shipTestLog(t, src, "replica-1", 7, true)
	// The control plane's anomaly detector reads them: an alert, and its
	// state and cursors saved when it stops.
	auth, err := ca.Open(dir, ca.MustExist())
	if err != nil {
		t.Fatal(err)
	}
	wantAlerts := runDetector(t, auth, src, "")
	if len(wantAlerts) == 0 {
		t.Fatal("the scope-probing burst raised no alert")
	}
	auth.Close()
	src.Close()

	// What the SQLite stores hold, read the way the commands read them.
	wantChangeLog := cli(t, "audit", "verify", "--changelog", dir)
	wantAgents := cli(t, "agent", "list", "--json", "--data-dir", dir)
	wantShow := cli(t, "agent", "show", "payments-agent", "--json", "--data-dir", dir)
	wantRecords, wantRollups := recordState(t, filepath.Join(dir, "records.db"))
	sums := storeHashes(t, dir)

	pg := testenv.StartPostgres(t)
	code, _, stderr := run(t, "control", "migrate-store", "--data-dir", dir, "--to", "mysql://x")
	if code == ExitOK || !strings.Contains(stderr, "agentauthz: error: --to must be a postgres:// URL") || !strings.Contains(stderr, "agentauthz: hint: ") {
		t.Errorf("a bad URL: exit %d\n%s", code, stderr)
	}
	code, _, stderr = run(t, "control", "migrate-store", "--data-dir", dir, "--to", "postgres://postgres@127.0.0.1:1/none?sslmode=disable")
	if code == ExitOK || !strings.Contains(stderr, "agentauthz: error: ") || !strings.Contains(stderr, "connect") || !strings.Contains(stderr, "agentauthz: hint: ") {
		t.Errorf("an unreachable database: exit %d\n%s", code, stderr)
	}
	// A control plane on the data directory holds it.
	unlock, err := ca.LockDataDir(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	code, _, stderr = run(t, "control", "migrate-store", "--data-dir", dir, "--to", pg.DSN)
	unlock()
	if code == ExitOK || !strings.Contains(stderr, "a control plane is running on this data directory") || !strings.Contains(stderr, "hint: stop agentauthz control serve") {
		t.Errorf("while a control plane runs: exit %d\n%s", code, stderr)
	}

	// A destination that holds records already is refused before anything
	// is copied.
	other, err := recordstore.Open(ctx, pg.DSN)
	if err != nil {
		t.Fatal(err)
	}
	shipTestLog(t, other, "elsewhere", 1, false)
	code, _, stderr = run(t, "control", "migrate-store", "--data-dir", dir, "--to", pg.DSN)
	if code == ExitOK || !strings.Contains(stderr, "already holds decision records") || !strings.Contains(stderr, "nothing was copied") {
		t.Errorf("into a database with records: exit %d\n%s", code, stderr)
	}
	if _, err := ca.Open(dir, ca.MustExist(), ca.WithStore(pg.DSN)); !errors.Is(err, ca.ErrNoStore) {
		t.Errorf("the inventory after a refused run: %v, want none", err)
	}
	other.Close()
	db, err := pgsql.Open(pg.DSN)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, "DELETE FROM records; DELETE FROM checkpoints; DELETE FROM logs"); err != nil {
		t.Fatal(err)
	}
	db.Close()

	out := cli(t, "control", "migrate-store", "--data-dir", dir, "--to", pg.DSN)
	t.Logf("summary:\n%s", out)
	for _, want := range []string{"events ", "change log verified on the destination", "records: 457 records of 2 logs copied", "replica-0 ", "450 records",
		fmt.Sprintf("alerts: %d alerts copied, with the detector's saved state and cursors", len(wantAlerts))} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	if got := storeHashes(t, dir); !reflect.DeepEqual(got, sums) {
		t.Errorf("the data directory changed:\nbefore %v\nafter  %v", sums, got)
	}

	// The PostgreSQL stores, as control serve --store opens them.
	t.Setenv("AGENTAUTHZ_STORE", pg.DSN)
	if got := cli(t, "audit", "verify", "--changelog", dir); got != wantChangeLog {
		t.Errorf("change log on PostgreSQL:\n%s\nwant\n%s", got, wantChangeLog)
	}
	if got := cli(t, "agent", "list", "--json", "--data-dir", dir); got != wantAgents {
		t.Errorf("agents on PostgreSQL:\n%s\nwant\n%s", got, wantAgents)
	}
	if got := cli(t, "agent", "show", "payments-agent", "--json", "--data-dir", dir); got != wantShow {
		t.Errorf("agent (restriction, history) on PostgreSQL:\n%s\nwant\n%s", got, wantShow)
	}
	gotRecords, gotRollups := recordState(t, pg.DSN)
	if !reflect.DeepEqual(gotRecords, wantRecords) {
		t.Errorf("records on PostgreSQL:\n%v\nwant\n%v", gotRecords, wantRecords)
	}
	if !reflect.DeepEqual(gotRollups, wantRollups) {
		t.Errorf("rollups on PostgreSQL:\n%v\nwant\n%v", gotRollups, wantRollups)
	}
	// The alerts are there, and the detector goes on from its cursors: the
	// copied records raise no alert again.
	pgAuth, err := ca.Open(dir, ca.MustExist(), ca.WithStore(pg.DSN))
	if err != nil {
		t.Fatal(err)
	}
	pgRecords, err := recordstore.Open(ctx, pg.DSN)
	if err != nil {
		t.Fatal(err)
	}
	if got := runDetector(t, pgAuth, pgRecords, pg.DSN); !reflect.DeepEqual(got, wantAlerts) {
		t.Errorf("alerts on PostgreSQL:\n%v\nwant\n%v", got, wantAlerts)
	}
	pgRecords.Close()
	pgAuth.Close()
	// A new change on PostgreSQL chains onto the copied log.
	cli(t, "agent", "lift", "merchant-onboarder", "--reason", "INC-8 closed", "--data-dir", dir)
	if got := cli(t, "audit", "verify", "--changelog", dir); !strings.HasPrefix(got, "ok: ") {
		t.Errorf("change log after a new change on PostgreSQL:\n%s", got)
	}

	t.Setenv("AGENTAUTHZ_STORE", "")
	code, _, stderr = run(t, "control", "migrate-store", "--data-dir", dir, "--to", pg.DSN)
	if code == ExitOK || !strings.Contains(stderr, "the destination already holds") || !strings.Contains(stderr, "nothing was copied") ||
		!strings.Contains(stderr, "hint: the destination must be an empty database") {
		t.Errorf("a second run into the filled database: exit %d\n%s", code, stderr)
	}
}

// recordState is what a record store answers about its records: every log
// with its size and root and the records' lines, and the rollup views.
func recordState(t *testing.T, dsn string) (records map[string]string, rollups []string) {
	t.Helper()
	ctx := context.Background()
	s, err := recordstore.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	records = map[string]string{}
	logs, err := s.Logs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range logs {
		c, err := s.LogCursor(ctx, l.Log)
		if err != nil {
			t.Fatal(err)
		}
		recs, err := s.Range(ctx, l.Log, 0, l.Stored, 1000)
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		fmt.Fprintf(&b, "size %d root %s head %d:", c.Size, c.Root, l.Head)
		for _, r := range recs {
			fmt.Fprintf(&b, " %d:%s", r.Index, r.Line)
		}
		records[l.Log] = b.String()
	}
	since := time.Now().UTC().Truncate(24 * time.Hour).Add(-24 * time.Hour)
	d, err := s.DenialsByReason(ctx, since)
	if err != nil {
		t.Fatal(err)
	}
	ops, err := s.Operations(ctx, since, 10)
	if err != nil {
		t.Fatal(err)
	}
	top, err := s.TopAgents(ctx, since, 10)
	if err != nil {
		t.Fatal(err)
	}
	return records, []string{fmt.Sprint(d), fmt.Sprint(ops), fmt.Sprint(top)}
}

// storeHashes is the SHA-256 of each SQLite file (and write-ahead log) of
// the data directory.
func storeHashes(t *testing.T, dir string) map[string][sha256.Size]byte {
	t.Helper()
	out := map[string][sha256.Size]byte{}
	for _, name := range []string{"inventory.db", "inventory.db-wal", "records.db", "records.db-wal", "alerts.db", "alerts.db-wal"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if errors.Is(err, os.ErrNotExist) || err == nil && len(b) == 0 { // an empty WAL is none (a reader may create one)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		out[name] = sha256.Sum256(b)
	}
	return out
}

// runDetector runs the control plane's anomaly detector on the stores until
// it holds an alert and has run a while longer, stops it (which saves its
// state) and returns the alerts it holds, as JSON. The detector must log no
// error (a saved state it cannot load would be one).
func runDetector(t *testing.T, auth *ca.Authority, st *recordstore.Store, store string) []string {
	t.Helper()
	ctx := context.Background()
	var logged syncBuffer
	s, err := alerts.New(alerts.Config{Authority: auth, Records: st, Store: store, Poll: 10 * time.Millisecond,
		Logger: hclog.New(&hclog.LoggerOptions{Output: &logged})})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(rctx) }()
	var out []string
	for deadline := time.Now().Add(20 * time.Second); len(out) == 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		as, err := s.List(ctx, alerts.Filter{})
		if err != nil {
			t.Fatal(err)
		}
		out = out[:0]
		for _, a := range as {
			b, err := json.Marshal(a)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, string(b))
		}
	}
	time.Sleep(200 * time.Millisecond) // more steps: the records after the alert
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logged.String(), "[ERROR]") {
		t.Errorf("the detector logged an error:\n%s", logged.String())
	}
	return out
}
