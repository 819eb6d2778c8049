//go:build unix

package testenv

import (
	"database/sql"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" driver
)

// Postgres is a PostgreSQL cluster a test started in its own temporary
// directory, on a loopback port, with trust authentication for the local
// superuser; it is stopped when the test ends.
type Postgres struct {
	// DSN reaches the cluster's "postgres" database.
	DSN     string
	Port    int
	dataDir string
	pgCtl   string
	logFile string
	cred    *syscall.Credential // run as this user (the tests run as root)
}

func (p *Postgres) command(name string, args ...string) *exec.Cmd {
	c := exec.Command(name, args...)
	if p.cred != nil {
		c.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	}
	c.Dir = filepath.Dir(p.dataDir)
	return c
}

// postgresBin finds the directory of initdb and pg_ctl: on PATH, else the
// newest /usr/lib/postgresql/*/bin (Debian's postgresql package).
func postgresBin() string {
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		if _, err := exec.LookPath("initdb"); err == nil {
			return filepath.Dir(p)
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(dirs[i], "pg_ctl")); err == nil {
			return dirs[i]
		}
	}
	return ""
}

// StartPostgres starts a fresh cluster, or ends the test through Missing
// when PostgreSQL is not installed.
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	bin := postgresBin()
	if bin == "" {
		Missing(t, "PostgreSQL (initdb, pg_ctl)", "apt-get install -y postgresql")
		return nil
	}
	// Not t.TempDir: when the tests run as root, the cluster runs as the
	// postgres user (PostgreSQL refuses root), which must reach the
	// directory; /tmp lets it, a test's private temp dir does not.
	dir, err := os.MkdirTemp("", "agentauthz-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := &Postgres{dataDir: filepath.Join(dir, "data"), pgCtl: filepath.Join(bin, "pg_ctl"), logFile: filepath.Join(dir, "postgres.log")}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			Missing(t, "the postgres system user (PostgreSQL does not run as root)", "apt-get install -y postgresql")
			return nil
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		p.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	initdb := p.command(filepath.Join(bin, "initdb"), "-D", p.dataDir, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	p.Port = freePort(t)
	p.DSN = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", p.Port)
	p.Start(t)
	t.Cleanup(func() { p.stop("immediate") })
	return p
}

// Start starts (or restarts) the cluster and waits until it accepts
// connections.
func (p *Postgres) Start(t testing.TB) {
	t.Helper()
	opts := fmt.Sprintf("-c listen_addresses=127.0.0.1 -c port=%d -c unix_socket_directories='' -c fsync=on -c max_connections=100", p.Port)
	cmd := p.command(p.pgCtl, "-D", p.dataDir, "-l", p.logFile, "-o", opts, "-w", "-t", "60", "start")
	if out, err := cmd.CombinedOutput(); err != nil {
		log, _ := os.ReadFile(p.logFile)
		t.Fatalf("pg_ctl start: %v\n%s\n%s", err, out, log)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", p.Port), time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("postgres on port %d: %v", p.Port, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Restart stops the cluster (mode fast: connections are cut, as in a
// failover or an operator's restart) and starts it again.
func (p *Postgres) Restart(t testing.TB) {
	t.Helper()
	if err := p.stop("fast"); err != nil {
		t.Fatalf("pg_ctl stop: %v", err)
	}
	p.Start(t)
}

func (p *Postgres) stop(mode string) error {
	out, err := p.command(p.pgCtl, "-D", p.dataDir, "-m", mode, "-w", "stop").CombinedOutput()
	if err != nil && !strings.Contains(string(out), "not running") && !strings.Contains(string(out), "No such file") {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

// freePort asks the kernel for a free loopback port. PostgreSQL binds it
// itself, so there is a small window in which another process could take it;
// Start fails loudly then.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Shared is one PostgreSQL cluster for all the tests of a package, started on
// first use, each test getting its own database. The package's TestMain calls
// Stop after m.Run.
type Shared struct {
	once sync.Once
	pg   *Postgres
	mu   sync.Mutex
	n    int
	fns  []func()
}

// sharedT keeps the cluster's cleanups for Stop: the cluster outlives the
// test that started it.
type sharedT struct {
	testing.TB
	s *Shared
}

func (c sharedT) Cleanup(f func()) { c.s.mu.Lock(); c.s.fns = append(c.s.fns, f); c.s.mu.Unlock() }

// Database returns the DSN of a new, empty database on the shared cluster, or
// ends the test through Missing when PostgreSQL is not installed.
func (s *Shared) Database(t testing.TB) string {
	t.Helper()
	s.once.Do(func() { s.pg = StartPostgres(sharedT{TB: t, s: s}) })
	if s.pg == nil {
		Missing(t, "PostgreSQL (the shared cluster did not start)", "apt-get install -y postgresql")
		return ""
	}
	s.mu.Lock()
	s.n++
	name := fmt.Sprintf("t%d", s.n)
	s.mu.Unlock()
	db, err := sql.Open("pgx", s.pg.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("CREATE DATABASE " + name); err != nil {
		t.Fatalf("create database %s: %v", name, err)
	}
	return strings.Replace(s.pg.DSN, "/postgres?", "/"+name+"?", 1)
}

// Stop stops the shared cluster, if it was started.
func (s *Shared) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.fns) - 1; i >= 0; i-- {
		s.fns[i]()
	}
	s.fns = nil
}
