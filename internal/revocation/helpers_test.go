package revocation

import (
	"context"
	"crypto"
	"crypto/sha256"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentauthz/agentauthz/internal/identity"
	"github.com/agentauthz/agentauthz/internal/reason"
	"github.com/agentauthz/agentauthz/internal/testca"
)

// clock is a settable test clock.
type clock struct{ ns atomic.Int64 }

func newClock(t time.Time) *clock { c := &clock{}; c.ns.Store(t.UnixNano()); return c }
func (c *clock) Now() time.Time   { return time.Unix(0, c.ns.Load()) }
func (c *clock) Set(t time.Time)  { c.ns.Store(t.UnixNano()) }

func serialOf(l *testca.Leaf) string { return l.Cert.SerialNumber.Text(16) }

func testLogger(t testing.TB) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Output: testWriter{t}, Level: hclog.Debug})
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// start builds a Checker over cfg and runs it until the test ends.
func start(t *testing.T, cfg Config) (*Checker, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return c, reg
}

// waitFor polls cond until it holds, failing the test after a generous
// deadline. It synchronises with background loops; it asserts no timing.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// issuedBy is the verified chain of a certificate with serial issued directly
// by ca (a trust anchor).
func issuedBy(ca *testca.CA, serial string) []identity.ChainCert {
	return []identity.ChainCert{{Serial: serial, Issuer: ca.Cert, IssuerKey: identity.CAKeyOf(ca.Cert)}}
}

func waitCheck(t *testing.T, c *Checker, tenant string, chain []identity.ChainCert, agent string, want reason.Code) {
	t.Helper()
	var got reason.Code
	serial := ""
	if len(chain) > 0 {
		serial = chain[0].Serial
	}
	waitFor(t, fmt.Sprintf("Check(%s, %s, %s) = %q (last %q)", tenant, serial, agent, string(want), string(got)), func() bool {
		got = c.Check(tenant, chain, agent)
		return got == want
	})
}

// metric returns the value of the metric name with the given labels, or -1
// when it is absent.
func metric(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			if m.Gauge != nil {
				return m.Gauge.GetValue()
			}
			return m.Counter.GetValue()
		}
	}
	return -1
}

// writeFile replaces path atomically, as a CRL publisher should.
func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// crlServer serves a CRL with ETag/Last-Modified support and can be taken
// down.
type crlServer struct {
	*httptest.Server
	mu        sync.Mutex
	crl       []byte
	down      bool
	requests  atomic.Int64
	notMod    atomic.Int64
	condition atomic.Int64 // requests that carried If-None-Match
}

func newCRLServer(t *testing.T, crl []byte) *crlServer {
	s := &crlServer{crl: crl}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		s.mu.Lock()
		down, crl := s.down, s.crl
		s.mu.Unlock()
		if down {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		if r.Header.Get("If-None-Match") != "" {
			s.condition.Add(1)
		}
		// A digest of the content: a weaker tag (it was length and last
		// byte) matched across two CRLs now and then, so a changed CRL was
		// answered 304 and never fetched.
		sum := sha256.Sum256(crl)
		etag := fmt.Sprintf(`"%x"`, sum[:16])
		w.Header().Set("ETag", etag)
		if r.Header.Get("If-None-Match") == etag {
			s.notMod.Add(1)
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Header().Set("Content-Type", "application/pkix-crl")
		w.Write(crl)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *crlServer) set(crl []byte, down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if crl != nil {
		s.crl = crl
	}
	s.down = down
}

// fakeStore is the CA inventory as the publisher sees it.
type fakeStore struct {
	ca     *testca.CA
	mu     sync.Mutex
	gen    int64
	number int64
	crl    []byte
	revs   []*big.Int
	agents map[string]bool
	restr  []byte
	// signer, when set, signs watch events instead of the tenant's CA.
	signer crypto.Signer
}

var errUnknownTenant = fmt.Errorf("not found")

func newFakeStore(ca *testca.CA) *fakeStore {
	s := &fakeStore{ca: ca, agents: map[string]bool{}}
	s.resign()
	return s
}

// resign issues a new CRL; callers hold no lock (testca needs the test
// goroutine).
func (s *fakeStore) resign() {
	s.mu.Lock()
	s.number++
	n, revs := s.number, append([]*big.Int(nil), s.revs...)
	s.mu.Unlock()
	now := time.Now()
	der := s.ca.CRL(n, now.Add(-time.Minute), now.Add(time.Hour), revs...)
	s.mu.Lock()
	s.crl = der
	s.gen++
	s.mu.Unlock()
}

func (s *fakeStore) revokeAgent(id string, serials ...*big.Int) {
	s.mu.Lock()
	s.agents[id] = true
	s.revs = append(s.revs, serials...)
	s.mu.Unlock()
	s.resign()
}

func (s *fakeStore) CurrentCRL(td string) ([]byte, error) {
	if td != s.ca.TrustDomain {
		return nil, fmt.Errorf("tenant %q: %w", td, errUnknownTenant)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.crl, nil
}

func (s *fakeStore) RevokedAgents(td string) ([]string, error) {
	if td != s.ca.TrustDomain {
		return nil, fmt.Errorf("tenant %q: %w", td, errUnknownTenant)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for id := range s.agents {
		out = append(out, id)
	}
	sort.Strings(out)
	return out, nil
}

func (s *fakeStore) PushRestrictions(td string) ([]byte, error) {
	if td != s.ca.TrustDomain {
		return nil, fmt.Errorf("tenant %q: %w", td, errUnknownTenant)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.restr == nil {
		return []byte("{}"), nil
	}
	return s.restr, nil
}

func (s *fakeStore) SignPush(td string, msg []byte) ([]byte, error) {
	if td != s.ca.TrustDomain {
		return nil, fmt.Errorf("tenant %q: %w", td, errUnknownTenant)
	}
	if s.signer != nil {
		return SignPush(s.signer, msg)
	}
	return SignPush(s.ca.Key, msg)
}

func (s *fakeStore) RevocationGeneration() (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen, nil
}

func tempFile(t *testing.T, name string) string { return filepath.Join(t.TempDir(), name) }

func contextWithTimeout(t *testing.T) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), time.Minute)
}

type atomicFlag struct{ v atomic.Bool }

func (f *atomicFlag) get() bool  { return f.v.Load() }
func (f *atomicFlag) set(v bool) { f.v.Store(v) }

type atomicCounter struct{ v atomic.Int64 }

func (c *atomicCounter) add()       { c.v.Add(1) }
func (c *atomicCounter) get() int64 { return c.v.Load() }

func newHTTPServer(t *testing.T, h http.Handler) *httptest.Server {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}
