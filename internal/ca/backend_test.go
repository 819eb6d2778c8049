package ca

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

// backend is where a test's inventory lives: SQLite in the data directory
// (dsn "") or a PostgreSQL database of its own.
type backend struct{ name, dsn string }

func (b backend) open(dir string, opts ...Option) (*Authority, error) {
	if b.dsn != "" {
		opts = append(opts, WithStore(b.dsn))
	}
	return Open(dir, opts...)
}

// fresh is b with a new, empty database (for a subtest).
func (b backend) fresh(t *testing.T) backend {
	if b.dsn != "" {
		b.dsn = pgShared.Database(t)
	}
	return b
}

// eachBackend runs f on a fresh SQLite inventory and on a fresh PostgreSQL
// one: the same behaviour is required of both.
func eachBackend(t *testing.T, f func(t *testing.T, b backend)) {
	t.Run("sqlite", func(t *testing.T) { f(t, backend{name: "sqlite"}) })
	t.Run("postgres", func(t *testing.T) { f(t, backend{name: "postgres", dsn: pgShared.Database(t)}) })
}

// newTestAuthority is an authority on SQLite with the acme.example CA.
func newTestAuthority(t *testing.T) (*Authority, *clock) {
	t.Helper()
	return newTestAuthorityOn(t, backend{name: "sqlite"})
}

// newTestAuthorityOn is an authority on b with the acme.example CA.
func newTestAuthorityOn(t *testing.T, b backend) (*Authority, *clock) {
	t.Helper()
	c := &clock{t: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)}
	a, err := b.open(t.TempDir(), WithClock(c.now))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	if _, err := a.Init(InitRequest{TrustDomain: td, Org: "Acme Corp", CRLURL: "http://crl.acme.example/acme.crl", Operator: "alice"}); err != nil {
		t.Fatal(err)
	}
	return a, c
}

// TestTwoInstancesOnePostgres: two authorities with their own data
// directories on one PostgreSQL inventory, as two control-plane instances.
// Without the keys of the first, the second changes nothing; with copies of
// them, both change the inventory at once and the change log stays one
// gap-free chain that verifies.
func TestTwoInstancesOnePostgres(t *testing.T) {
	dsn := pgShared.Database(t)
	c := &clock{t: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)}
	dirA, dirB := t.TempDir(), t.TempDir()
	a, err := Open(dirA, WithStore(dsn), WithClock(c.now))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if _, err := a.Init(InitRequest{TrustDomain: td, Operator: "alice"}); err != nil {
		t.Fatal(err)
	}
	b, err := Open(dirB, WithStore(dsn), WithClock(c.now), MustExist())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if tds, _ := b.TrustDomains(); len(tds) != 1 || tds[0] != td {
		t.Fatalf("instance B sees trust domains %v", tds)
	}
	// No keys here yet: refused, nothing written.
	if _, err := b.Issue(issueReq("early")); err == nil {
		t.Fatal("instance B issued without the CA key")
	}
	if err := b.RecordEvent(td, "", "", "operator_issue", "bob", "x"); !errors.Is(err, ErrChangeLogKey) {
		t.Fatalf("instance B signed the change log with a key of its own: %v", err)
	}
	testenv.CopyTree(t, filepath.Join(dirA, "ca"), filepath.Join(dirB, "ca"))
	testenv.CopyTree(t, filepath.Join(dirA, changeLogDir), filepath.Join(dirB, changeLogDir))

	const n = 15
	errs := make(chan error, 2)
	for i, auth := range []*Authority{a, b} {
		go func() {
			for j := range n {
				id := fmt.Sprintf("bot-%d-%d", i, j)
				_, err := auth.Issue(issueReq(id))
				if err == nil {
					_, err = auth.Restrict(RestrictRequest{TrustDomain: td, AgentID: id, Quarantine: true, Reason: "INC-9", Operator: "carol"})
				}
				if err == nil && j%3 == 0 {
					_, err = auth.Revoke(td, id, ReasonKeyCompromise, "carol")
				}
				if err != nil {
					errs <- fmt.Errorf("instance %d: %w", i, err)
					return
				}
			}
			errs <- nil
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	keys, err := ChangeLogKeys(dirA)
	if err != nil {
		t.Fatal(err)
	}
	for _, auth := range []*Authority{a, b} {
		res, err := auth.VerifyChangeLog(keys...)
		if err != nil || res.Problem != nil || res.Events != res.LastSeq {
			t.Fatalf("change log: %+v %v", res, err)
		}
		// ca_init, then per agent issue + restrict, and for every third
		// a revoke of its certificate and the agent revocation.
		if want := int64(1 + 2*2*n + 2*2*((n+2)/3)); res.Events != want {
			t.Fatalf("%d events, want %d", res.Events, want)
		}
		rs, _ := auth.ListRestrictions(td)
		ra, _ := auth.RevokedAgents(td)
		if len(rs) != 2*n || len(ra) != 2*((n+2)/3) {
			t.Fatalf("%d restrictions, %d revoked agents", len(rs), len(ra))
		}
	}
	// A rotation through A: B refuses to sign with the retired key until
	// it has A's changelog/ too.
	if _, err := a.RotateChangeLogKey("alice", "rotation drill"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Restrict(RestrictRequest{TrustDomain: td, AgentID: "bot-1-1", MaxTrust: new(int), Reason: "x", Operator: "carol"}); !errors.Is(err, ErrChangeLogKey) {
		t.Fatalf("instance B signed with the retired key: %v", err)
	}
	testenv.CopyTree(t, filepath.Join(dirA, changeLogDir), filepath.Join(dirB, changeLogDir))
	if _, err := b.Restrict(RestrictRequest{TrustDomain: td, AgentID: "bot-1-1", MaxTrust: new(int), Reason: "x", Operator: "carol"}); err != nil {
		t.Fatal(err)
	}
	if res, err := b.VerifyChangeLog(keys[0]); err != nil || res.Problem != nil || len(res.Keys) != 2 {
		t.Fatalf("after the rotation: %+v %v", res, err)
	}
}

// TestPostgresSchema: an empty database is no inventory for MustExist,
// instances opening at once migrate it once, and a newer schema is refused.
func TestPostgresSchema(t *testing.T) {
	dsn := pgShared.Database(t)
	if _, err := Open(t.TempDir(), WithStore(dsn), MustExist()); !errors.Is(err, ErrNoStore) {
		t.Fatalf("empty database with MustExist: %v", err)
	}
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			a, err := Open(t.TempDir(), WithStore(dsn))
			if err == nil {
				a.Close()
			}
			errs <- err
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	a, err := Open(t.TempDir(), WithStore(dsn))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	var v int
	if err := a.db.QueryRow(`SELECT version FROM ` + pgSchemaTable).Scan(&v); err != nil || v != len(pgMigrations) {
		t.Fatalf("schema version %d %v", v, err)
	}
	if _, err := a.db.Exec(`UPDATE ` + pgSchemaTable + ` SET version = 99`); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(t.TempDir(), WithStore(dsn)); err == nil || !strings.Contains(err.Error(), "newer than this binary") {
		t.Fatalf("newer schema: %v", err)
	}
	_, err = Open(t.TempDir(), WithStore("postgres://u:s3cret@127.0.0.1:1/x?sslmode=disable"))
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("unreachable database: %v", err)
	}
}

// TestPostgresRestart: an inventory whose PostgreSQL restarts (fast
// shutdown, connections cut) works again without reopening; a change
// refused while it was down left nothing behind, and the change log stays
// whole.
func TestPostgresRestart(t *testing.T) {
	pg := testenv.StartPostgres(t) // its own cluster: the shared one must not restart under other tests
	a, err := Open(t.TempDir(), WithStore(pg.DSN))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if _, err := a.Init(InitRequest{TrustDomain: td, Operator: "alice"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Issue(issueReq("before")); err != nil {
		t.Fatal(err)
	}
	pg.Restart(t)
	var issued bool
	deadline := time.Now().Add(20 * time.Second)
	for !issued {
		// The first call may meet a connection cut by the restart.
		_, err := a.Issue(issueReq("after"))
		switch {
		case err == nil:
			issued = true
		case errors.Is(err, ErrExists):
			t.Fatal("a failed issue was committed after all")
		case time.Now().After(deadline):
			t.Fatalf("inventory unusable after the restart: %v", err)
		default:
			time.Sleep(100 * time.Millisecond)
		}
	}
	keys, err := ChangeLogKeys(a.DataDir())
	if err != nil {
		t.Fatal(err)
	}
	res, err := a.VerifyChangeLog(keys...)
	if err != nil || res.Problem != nil || res.Events != 3 {
		t.Fatalf("change log after the restart: %+v %v", res, err)
	}
}
