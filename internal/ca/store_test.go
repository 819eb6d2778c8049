package ca

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// openChildEnv names the data directory in which TestOpenFreshStoreChild,
// re-run as a child process, opens the inventory; openChildTDEnv the trust
// domain it creates there.
const (
	openChildEnv   = "AGENTAUTHZ_TEST_OPEN_CHILD_DIR"
	openChildTDEnv = "AGENTAUTHZ_TEST_OPEN_CHILD_TD"
)

// openAndInit opens the inventory of dir and creates a CA for trustDomain:
// one opener's write.
func openAndInit(dir, trustDomain string) error {
	a, err := Open(dir, WithClock(func() time.Time { return devTestNow }))
	if err != nil {
		return err
	}
	defer a.Close()
	_, err = a.Init(InitRequest{TrustDomain: trustDomain, Operator: "test"})
	return err
}

// TestOpenFreshStoreChild is the other process of
// TestOpenFreshStoreConcurrently: it runs openAndInit when released and
// prints "ok" or its error.
func TestOpenFreshStoreChild(t *testing.T) {
	dir := os.Getenv(openChildEnv)
	if dir == "" {
		t.Skip("helper process of TestOpenFreshStoreConcurrently")
	}
	raceChildWait(t)
	result := "ok"
	if err := openAndInit(dir, os.Getenv(openChildTDEnv)); err != nil {
		result = err.Error()
	}
	fmt.Println(raceResult + result)
}

// TestOpenFreshStoreConcurrently opens one inventory that does not exist yet
// from several goroutines and two other processes at once, each creating a
// CA of its own: all of them must succeed (nobody sees the store as busy,
// let alone corrupted, while another creates it), and the inventory must
// hold every CA, at the current schema version.
func TestOpenFreshStoreConcurrently(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data") // created by the openers
	const goroutines, children = 6, 2
	type outcome struct{ who, td, err string }
	results := make(chan outcome, goroutines+children)

	var kids []*raceChild
	for i := range children {
		td := fmt.Sprintf("child-%d.example", i)
		c := startRaceChild(t, "TestOpenFreshStoreChild", openChildEnv+"="+dir, openChildTDEnv+"="+td)
		kids = append(kids, c)
		go func() {
			r := <-c.done
			out := outcome{who: fmt.Sprintf("child %d", i), td: td}
			switch {
			case r.err != nil:
				out.err = r.err.Error()
			case r.text != "ok":
				out.err = r.text
			}
			results <- out
		}()
	}

	start := make(chan struct{})
	for i := range goroutines {
		go func() {
			<-start
			out := outcome{who: fmt.Sprintf("goroutine %d", i), td: fmt.Sprintf("goroutine-%d.example", i)}
			if err := openAndInit(dir, out.td); err != nil {
				out.err = err.Error()
			}
			results <- out
		}()
	}
	// Everyone is waiting: release them together.
	close(start)
	for _, c := range kids {
		c.release(t)
	}

	var want []string
	for range goroutines + children {
		r := <-results
		if r.err != "" {
			t.Errorf("%s: %s", r.who, r.err)
		}
		want = append(want, r.td)
	}
	if t.Failed() {
		t.FailNow()
	}

	a, err := Open(dir, MustExist())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	var v int
	if err := a.db.QueryRow("PRAGMA user_version").Scan(&v); err != nil || v != schemaVersion {
		t.Errorf("user_version %d %v, want %d", v, err, schemaVersion)
	}
	var mode string
	if err := a.db.QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal_mode %q %v, want wal", mode, err)
	}
	var check string
	if err := a.db.QueryRow("PRAGMA integrity_check").Scan(&check); err != nil || check != "ok" {
		t.Errorf("integrity_check %q %v", check, err)
	}
	var metaRows int
	if err := a.db.QueryRow("SELECT count(*) FROM meta").Scan(&metaRows); err != nil || metaRows != 1 {
		t.Errorf("%d meta rows %v, want 1 (the schema was created more than once?)", metaRows, err)
	}
	tds, err := a.TrustDomains()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(want)
	if !slices.Equal(tds, want) {
		t.Errorf("trust domains %v, want %v", tds, want)
	}
	for _, td := range want {
		if _, err := a.CAInfo(td); err != nil {
			t.Errorf("CA %s: %v", td, err)
		}
		evs, err := a.Events(td, "")
		if err != nil || len(evs) != 1 || evs[0].Event != "ca_init" {
			t.Errorf("events of %s: %+v %v, want one ca_init", td, evs, err)
		}
	}
}

// holdLock opens the database at path on one connection of its own (no
// busy timeout, no WAL unless the database already is), runs stmts there
// and keeps that connection, with whatever lock the statements took, until
// the test ends or the returned function is called.
func holdLock(t *testing.T, path string, stmts ...string) (release func()) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range stmts {
		if _, err := conn.ExecContext(context.Background(), s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	done := false
	release = func() {
		if done {
			return
		}
		done = true
		conn.ExecContext(context.Background(), "ROLLBACK")
		conn.Close()
		db.Close()
	}
	t.Cleanup(release)
	return release
}

// checkBusy checks that err says the inventory at path is in use, not that
// it is corrupted.
func checkBusy(t *testing.T, err error, path string) {
	t.Helper()
	var se *StoreError
	switch {
	case err == nil:
		t.Fatal("no error while another connection holds the lock")
	case errors.Is(err, ErrCorruptStore):
		t.Fatalf("a locked store is reported as corrupted: %v", err)
	case !errors.Is(err, ErrStoreBusy) || !errors.As(err, &se):
		t.Fatalf("want ErrStoreBusy in a *StoreError, got %v", err)
	case se.Path != path || !strings.Contains(err.Error(), path):
		t.Fatalf("error does not name %s: %v", path, err)
	case !strings.Contains(err.Error(), "in use by another process"):
		t.Fatalf("error does not say the store is in use: %v", err)
	}
}

// TestOpenLockedStore holds the inventory's lock from another connection
// for longer than the (shortened) busy timeout: opening or writing must
// fail with ErrStoreBusy, naming the file, never with ErrCorruptStore; once
// the lock is released the same store opens and works.
func TestOpenLockedStore(t *testing.T) {
	const timeout = 100 * time.Millisecond
	t.Run("new store, exclusive lock", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, "inventory.db")
		// Not in WAL mode yet: an exclusive lock keeps every reader out,
		// so Open cannot even set the store up.
		release := holdLock(t, path, "BEGIN EXCLUSIVE", "CREATE TABLE other (x)")
		_, err := Open(dir, withBusyTimeout(timeout))
		checkBusy(t, err, path)
		release()
		if err := openAndInit(dir, td); err != nil {
			t.Fatalf("after the lock is released: %v", err)
		}
	})
	t.Run("migration waits for a writer", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, "inventory.db")
		// A WAL store at schema version 0 whose write lock is taken: Open
		// reads it fine but cannot migrate it.
		release := holdLock(t, path, "PRAGMA journal_mode = WAL", "BEGIN IMMEDIATE", "CREATE TABLE other (x)")
		_, err := Open(dir, withBusyTimeout(timeout))
		checkBusy(t, err, path)
		release()
		if err := openAndInit(dir, td); err != nil {
			t.Fatalf("after the lock is released: %v", err)
		}
	})
	t.Run("write to an existing store", func(t *testing.T) {
		a, _ := newTestAuthority(t)
		path := filepath.Join(a.DataDir(), "inventory.db")
		release := holdLock(t, path, "BEGIN IMMEDIATE", "UPDATE meta SET value = value")
		b, err := Open(a.DataDir(), withBusyTimeout(timeout))
		if err != nil {
			t.Fatalf("readers are not blocked in WAL mode: %v", err)
		}
		defer b.Close()
		if tds, err := b.TrustDomains(); err != nil || !slices.Equal(tds, []string{td}) {
			t.Fatalf("read while locked: %v %v", tds, err)
		}
		_, err = b.Issue(issueReq("bot"))
		checkBusy(t, err, path)
		release()
		if _, err := b.Issue(issueReq("bot")); err != nil {
			t.Fatalf("after the lock is released: %v", err)
		}
	})
}

// TestOpenNotADatabase checks that a file of random bytes is still reported
// as a corrupted store, not as a busy one, and is left as it was.
func TestOpenNotADatabase(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "inventory.db")
	garbage := make([]byte, 16<<10)
	if _, err := rand.Read(garbage); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(dir, withBusyTimeout(100*time.Millisecond))
	var se *StoreError
	if !errors.Is(err, ErrCorruptStore) || errors.Is(err, ErrStoreBusy) || !errors.As(err, &se) || se.Path != path {
		t.Fatalf("random bytes: %v", err)
	}
	if b, err := os.ReadFile(path); err != nil || !bytes.Equal(b, garbage) {
		t.Fatalf("the file was changed (%v)", err)
	}
}

// TestInitBusyKeepsOtherFiles covers two ca init runs for one trust domain
// in two processes: the one whose transaction never began (the store stayed
// locked past the busy timeout) must not remove the CA files the other wrote
// meanwhile. The other process is simulated: a lock held from another
// connection, and its files written while Init waits for the lock.
func TestInitBusyKeepsOtherFiles(t *testing.T) {
	a, _ := newTestAuthority(t)
	b, err := Open(a.DataDir(), withBusyTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	path := filepath.Join(a.DataDir(), "inventory.db")
	for attempt, other := 1, "other.example"; ; attempt++ {
		release := holdLock(t, path, "BEGIN IMMEDIATE", "UPDATE meta SET value = value")
		done := make(chan error, 1)
		go func() { _, err := b.Init(InitRequest{TrustDomain: other, Operator: "bob"}); done <- err }()
		// Past Init's check that no key exists, it waits for the lock; the
		// other process writes its files now.
		time.Sleep(200 * time.Millisecond)
		if err := os.MkdirAll(filepath.Dir(b.KeyPath(other)), 0o700); err != nil {
			t.Fatal(err)
		}
		key, cert := []byte("the other process's key"), []byte("the other process's certificate")
		if err := os.WriteFile(b.KeyPath(other), key, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(b.CertPath(other), cert, 0o644); err != nil {
			t.Fatal(err)
		}
		err := <-done
		release()
		if errors.Is(err, ErrExists) && attempt < 3 {
			// Init had not passed its check yet: not the case under test.
			other = fmt.Sprintf("other%d.example", attempt)
			continue
		}
		checkBusy(t, err, path)
		for p, want := range map[string][]byte{b.KeyPath(other): key, b.CertPath(other): cert} {
			if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("%s after the busy Init: %q, %v; want the other process's file kept", p, got, err)
			}
		}
		return
	}
}

// TestConsoleSecretsMigration: a version-5 store, whose console tables held
// a session's CSRF token and a pending OIDC sign-in's nonce and verifier in
// the clear, opens at the current version with those rows and columns gone.
func TestConsoleSecretsMigration(t *testing.T) {
	dir := t.TempDir()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "inventory.db"))
	if err != nil {
		t.Fatal(err)
	}
	for v, m := range migrations[:5] {
		if _, err := db.Exec(m); err != nil {
			t.Fatalf("migration %d: %v", v, err)
		}
	}
	for _, q := range []string{
		`PRAGMA user_version = 5`,
		`INSERT INTO console_sessions (hash, operator, role, csrf, expires) VALUES ('h', 'erin', 'responder', 'csrf-in-clear', 9999999999999)`,
		`INSERT INTO console_oidc (hash, nonce, verifier, expires) VALUES ('h', 'nonce-in-clear', 'verifier-in-clear', 9999999999999)`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	db.Close()

	a, err := Open(dir, MustExist())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	var n int
	if err := a.db.QueryRow(`SELECT (SELECT COUNT(*) FROM console_sessions) + (SELECT COUNT(*) FROM console_oidc)`).Scan(&n); err != nil || n != 0 {
		t.Errorf("console rows kept across the upgrade: %d %v", n, err)
	}
	for _, col := range []string{"csrf", "nonce", "verifier"} {
		if err := a.db.QueryRow(`SELECT COUNT(*) FROM pragma_table_info('console_sessions') WHERE name = ?1`+
			` UNION ALL SELECT COUNT(*) FROM pragma_table_info('console_oidc') WHERE name = ?1`, col).Scan(&n); err != nil || n != 0 {
			t.Errorf("column %s still there: %d %v", col, n, err)
		}
	}
	now := time.Now()
	if err := a.PutConsoleOIDC("h2", ConsoleOIDC{Sealed: "s", Expires: now.Add(time.Minute)}, now, 10); err != nil {
		t.Fatal(err)
	}
	if p, err := a.ClaimConsoleOIDC("h2", now); err != nil || p.Sealed != "s" {
		t.Errorf("pending sign-in after the upgrade: %+v %v", p, err)
	}
}
