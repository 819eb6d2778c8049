package ca

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/identity"
)

// devChildEnv names the data directory in which TestEnsureDevChild, re-run
// as a child process, calls EnsureDev.
const devChildEnv = "AGENTAUTHZ_TEST_ENSUREDEV_CHILD_DIR"

var devTestNow = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

// devOutcome is one EnsureDev caller's result.
type devOutcome struct {
	Who string  `json:"who"`
	Env *DevEnv `json:"env"`
	Err string  `json:"err"`
}

// TestEnsureDevChild is the other process of TestEnsureDevConcurrent: it
// calls EnsureDev when released and prints its outcome as JSON.
func TestEnsureDevChild(t *testing.T) {
	dir := os.Getenv(devChildEnv)
	if dir == "" {
		t.Skip("helper process of TestEnsureDevConcurrent")
	}
	raceChildWait(t)
	out := devOutcome{Who: fmt.Sprintf("process %d", os.Getpid())}
	env, err := EnsureDev(dir, devTestNow)
	out.Env = env
	if err != nil {
		out.Err = err.Error()
	}
	b, err := json.Marshal(out)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println(raceResult + string(b))
}

// TestEnsureDevConcurrent runs EnsureDev on one fresh data directory from
// several goroutines and two other processes at once: every caller must
// get the same environment, with one CA and one certificate per sample
// agent (nobody re-issued what another had just issued), matching what is
// on disk and verifying against the CA.
func TestEnsureDevConcurrent(t *testing.T) {
	if !haveFlock {
		t.Skip("EnsureDev takes no lock without flock(2)")
	}
	dir := filepath.Join(t.TempDir(), "data") // created by the callers
	const goroutines, children = 4, 2
	results := make(chan devOutcome, goroutines+children)

	var kids []*raceChild
	for i := range children {
		c := startRaceChild(t, "TestEnsureDevChild", devChildEnv+"="+dir)
		kids = append(kids, c)
		go func() {
			r := <-c.done
			out := devOutcome{Who: fmt.Sprintf("child %d", i)}
			if r.err == nil {
				r.err = json.Unmarshal([]byte(r.text), &out)
			}
			if r.err != nil {
				out.Err = r.err.Error()
			}
			results <- out
		}()
	}

	start := make(chan struct{})
	for i := range goroutines {
		go func() {
			<-start
			out := devOutcome{Who: fmt.Sprintf("goroutine %d", i)}
			env, err := EnsureDev(dir, devTestNow)
			out.Env = env
			if err != nil {
				out.Err = err.Error()
			}
			results <- out
		}()
	}
	// Everyone is waiting: release them together.
	close(start)
	for _, c := range kids {
		c.release(t)
	}

	var first devOutcome
	for i := range goroutines + children {
		r := <-results
		if r.Err != "" || r.Env == nil {
			t.Fatalf("%s: EnsureDev failed: %s", r.Who, r.Err)
		}
		if i == 0 {
			first = r
			continue
		}
		if !reflect.DeepEqual(r.Env, first.Env) {
			t.Errorf("%s got another environment than %s:\n%+v\n%+v", r.Who, first.Who, r.Env, first.Env)
		}
	}
	checkDevEnv(t, dir, first.Env)

	if fi, err := os.Stat(filepath.Join(dir, devLockName)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("lock file: %v %v", fi, err)
	}
}

// checkDevEnv checks that env is the environment in dir: one dev CA, and for
// each sample agent one active certificate, the one in its file, issued by
// that CA for clientAuth, with the key beside it.
func checkDevEnv(t *testing.T, dir string, env *DevEnv) {
	t.Helper()
	a, err := Open(dir, WithClock(func() time.Time { return devTestNow }))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if cas, err := a.ListCAs(); err != nil || len(cas) != 1 || cas[0].TrustDomain != DevTrustDomain {
		t.Fatalf("CAs: %+v %v", cas, err)
	}
	if env.BundlePath != a.CertPath(DevTrustDomain) {
		t.Errorf("bundle %s, want %s", env.BundlePath, a.CertPath(DevTrustDomain))
	}
	b, err := os.ReadFile(env.BundlePath)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(b) {
		t.Fatalf("bundle %s holds no certificate", env.BundlePath)
	}
	if len(env.Agents) != len(devAgents()) {
		t.Fatalf("%d agents, want %d", len(env.Agents), len(devAgents()))
	}
	for _, ag := range env.Agents {
		recs, err := a.List(ListFilter{TrustDomain: DevTrustDomain, AgentID: ag.ID})
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) != 1 || recs[0].Serial != ag.Serial || recs[0].Status != "active" {
			t.Errorf("%s: inventory %+v, want one active certificate %s", ag.ID, recs, ag.Serial)
			continue
		}
		cb, err := os.ReadFile(ag.CertPath)
		if err != nil {
			t.Fatal(err)
		}
		certs, err := parseCertsPEM(cb)
		if err != nil {
			t.Fatal(err)
		}
		c := certs[0]
		if got := serialString(c.SerialNumber); got != ag.Serial {
			t.Errorf("%s: file holds serial %s, env says %s", ag.ID, got, ag.Serial)
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: devTestNow,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("%s: does not verify against the dev CA: %v", ag.ID, err)
		}
		if _, err := identity.ParseNative(c, DevTrustDomain); err != nil {
			t.Errorf("%s: %v", ag.ID, err)
		}
		kb, err := os.ReadFile(ag.KeyPath)
		if err != nil {
			t.Fatal(err)
		}
		if k, err := parseKeyPEM(kb); err != nil || !publicKeysEqual(k.Public(), c.PublicKey) {
			t.Errorf("%s: key does not match the certificate (%v)", ag.ID, err)
		}
	}
}

// TestEnsureDevLockTimeout: a caller that cannot take the lock in time gives
// up with an error naming the lock file, whoever holds it.
func TestEnsureDevLockTimeout(t *testing.T) {
	if !haveFlock {
		t.Skip("EnsureDev takes no lock without flock(2)")
	}
	dir := t.TempDir()
	lockPath := filepath.Join(dir, devLockName)
	const short = 20 * time.Millisecond

	// Held by another caller in this process.
	unlock, err := lockDev(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ensureDev(dir, devTestNow, short); err == nil || !strings.Contains(err.Error(), lockPath) {
		t.Fatalf("EnsureDev while locked in-process: %v, want an error naming %s", err, lockPath)
	}
	unlock()

	// Held through another open file description, as another process
	// would hold it.
	f, err := os.OpenFile(lockPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := tryLockFile(f); !ok || err != nil {
		t.Fatalf("flock: %v %v", ok, err)
	}
	if _, err := ensureDev(dir, devTestNow, short); err == nil || !strings.Contains(err.Error(), lockPath) {
		t.Fatalf("EnsureDev while locked elsewhere: %v, want an error naming %s", err, lockPath)
	}
	f.Close()

	// Released: it works, and nothing was left half done.
	env, err := EnsureDev(dir, devTestNow)
	if err != nil {
		t.Fatal(err)
	}
	checkDevEnv(t, dir, env)
}
