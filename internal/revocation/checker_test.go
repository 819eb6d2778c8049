package revocation

import (
	"crypto/x509"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentauthz/agentauthz/internal/identity"
	"github.com/agentauthz/agentauthz/internal/reason"
	"github.com/agentauthz/agentauthz/internal/testca"
	"github.com/agentauthz/agentauthz/internal/testenv"
)

const td = "example.test"

// TestTenantWithoutSourceNeedsOptOut: a tenant with no revocation source
// is refused unless revocation is disabled for it explicitly, which is
// logged, shown by Status and by a metric (#15.1).
func TestTenantWithoutSourceNeedsOptOut(t *testing.T) {
	if _, err := New(Config{Tenants: map[string]TenantConfig{"quiet.test": {}}}); err == nil ||
		!strings.Contains(err.Error(), `tenant "quiet.test" has no revocation source`) {
		t.Fatalf("tenant without a source: err = %v", err)
	}
	ca := testca.New(t)
	if _, err := New(Config{Tenants: map[string]TenantConfig{"quiet.test": {Disabled: true, CAs: []*x509.Certificate{ca.Cert},
		CRLFiles: []string{"x.crl"}}}}); err == nil || !strings.Contains(err.Error(), "disabled but sources are listed") {
		t.Fatalf("disabled with a source: err = %v", err)
	}
	var logs strings.Builder
	reg := prometheus.NewRegistry()
	c, err := New(Config{Tenants: map[string]TenantConfig{"quiet.test": {Disabled: true}},
		Logger: hclog.New(&hclog.LoggerOptions{Output: &logs}), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Check("quiet.test", issuedBy(ca, "1f"), "bot"); got != "" {
		t.Errorf("disabled tenant: %q", string(got))
	}
	if got := c.Check("unconfigured.test", issuedBy(ca, "1f"), "bot"); got != "" {
		t.Errorf("unconfigured tenant: %q", string(got))
	}
	if !c.Ready() {
		t.Error("not ready with only a disabled tenant")
	}
	if st := c.Status()["quiet.test"]; !st.Disabled || !strings.Contains(st.Detail, "disabled") {
		t.Errorf("status %+v", st)
	}
	if !strings.Contains(logs.String(), "checking is OFF") || !strings.Contains(logs.String(), "quiet.test") {
		t.Errorf("opt-out not logged: %q", logs.String())
	}
	if got := metric(t, reg, "agentauthz_revocation_disabled", map[string]string{"tenant": "quiet.test"}); got != 1 {
		t.Errorf("agentauthz_revocation_disabled = %v", got)
	}
}

func TestConfigValidation(t *testing.T) {
	ca := testca.New(t)
	_, err := New(Config{Tenants: map[string]TenantConfig{
		"a.test": {CRLFiles: []string{"x.crl"}},                                                     // no CA
		"b.test": {CAs: []*x509.Certificate{ca.Cert}, CRLURLs: []string{"ftp://x/crl"}},             // bad scheme
		"c.test": {CAs: []*x509.Certificate{ca.Cert}, WatchURL: "not a url"},                        // bad url
		"d.test": {CAs: []*x509.Certificate{ca.Cert}, CRLFiles: []string{"x"}, Grace: -time.Second}, // negative
	}})
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	for _, want := range []string{`"a.test"`, `"b.test"`, `"c.test"`, `"d.test"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %s: %v", want, err)
		}
	}
}

func TestUnloadedSourceFailsClosed(t *testing.T) {
	ca := testca.New(t)
	c, err := New(Config{Tenants: map[string]TenantConfig{td: {
		CAs: []*x509.Certificate{ca.Cert}, CRLFiles: []string{"/nonexistent/ca.crl"},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Check(td, issuedBy(ca, "1f"), "bot"); got != reason.RevocationStatusUnknown {
		t.Errorf("before any load: %q", string(got))
	}
	if c.Ready() {
		t.Error("ready before any load")
	}
}

func TestFileSource(t *testing.T) {
	ca := testca.New(t)
	a, b := ca.Issue("bot-a"), ca.Issue("bot-b")
	now := time.Now()
	path := tempFile(t, "ca.crl")
	writeFile(t, path, ca.CRL(1, now, now.Add(time.Hour), a.Cert.SerialNumber))

	c, reg := start(t, Config{Tenants: map[string]TenantConfig{td: {
		CAs: []*x509.Certificate{ca.Cert}, CRLFiles: []string{path}, PollInterval: time.Hour,
	}}})
	waitFor(t, "ready", c.Ready)
	if got := c.Check(td, issuedBy(ca, serialOf(a)), "bot-a"); got != reason.CertificateRevoked {
		t.Errorf("revoked serial: %q", string(got))
	}
	if got := c.Check(td, issuedBy(ca, serialOf(b)), "bot-b"); got != "" {
		t.Errorf("good serial: %q", string(got))
	}

	// A new CRL is picked up through fsnotify (the poll interval is an hour).
	writeFile(t, path, ca.CRL(2, now, now.Add(time.Hour), a.Cert.SerialNumber, b.Cert.SerialNumber))
	waitCheck(t, c, td, issuedBy(ca, serialOf(b)), "bot-b", reason.CertificateRevoked)
	if got := metric(t, reg, "agentauthz_revocation_revoked_entries", map[string]string{"tenant": td}); got != 2 {
		t.Errorf("revoked_entries = %v", got)
	}

	// An older CRL (number going backwards) is refused; data stays.
	writeFile(t, path, ca.CRL(1, now, now.Add(time.Hour)))
	waitFor(t, "refusal counted", func() bool {
		return metric(t, reg, "agentauthz_revocation_refresh_errors_total", map[string]string{"tenant": td, "source": "file"}) >= 1
	})
	if got := c.Check(td, issuedBy(ca, serialOf(b)), "bot-b"); got != reason.CertificateRevoked {
		t.Errorf("after older CRL: %q", string(got))
	}

	// A tampered CRL is refused; data stays.
	bad := ca.CRL(3, now, now.Add(time.Hour))
	bad[len(bad)-3] ^= 1
	writeFile(t, path, bad)
	waitFor(t, "refusal counted", func() bool {
		return metric(t, reg, "agentauthz_revocation_refresh_errors_total", map[string]string{"tenant": td, "source": "file"}) >= 2
	})
	if got := c.Check(td, issuedBy(ca, serialOf(b)), "bot-b"); got != reason.CertificateRevoked {
		t.Errorf("after tampered CRL: %q", string(got))
	}
}

func TestTamperedCRLNeverLoads(t *testing.T) {
	ca := testca.New(t)
	now := time.Now()
	bad := ca.CRL(1, now, now.Add(time.Hour))
	bad[len(bad)-3] ^= 1
	path := tempFile(t, "ca.crl")
	writeFile(t, path, bad)
	c, reg := start(t, Config{Tenants: map[string]TenantConfig{td: {
		CAs: []*x509.Certificate{ca.Cert}, CRLFiles: []string{path}, PollInterval: time.Hour,
	}}})
	waitFor(t, "refusal counted", func() bool {
		return metric(t, reg, "agentauthz_revocation_refresh_errors_total", map[string]string{"tenant": td, "source": "file"}) >= 1
	})
	if c.Ready() {
		t.Error("ready with a tampered CRL")
	}
	if got := c.Check(td, issuedBy(ca, "1234"), "bot"); got != reason.RevocationStatusUnknown {
		t.Errorf("Check = %q", string(got))
	}
}

func TestOtherTenantsCARefused(t *testing.T) {
	mine, theirs := testca.NewDomain(t, "mine.test"), testca.NewDomain(t, "theirs.test")
	now := time.Now()
	leaf := mine.Issue("bot")
	srv := newCRLServer(t, theirs.CRL(1, now, now.Add(time.Hour), leaf.Cert.SerialNumber))
	c, _ := start(t, Config{Tenants: map[string]TenantConfig{
		"mine.test":   {CAs: []*x509.Certificate{mine.Cert}, CRLURLs: []string{srv.URL}, PollInterval: 10 * time.Millisecond},
		"theirs.test": {CAs: []*x509.Certificate{theirs.Cert}, CRLURLs: []string{srv.URL}, PollInterval: 10 * time.Millisecond},
	}})
	// The same CRL is fine for the tenant whose CA signed it.
	waitCheck(t, c, "theirs.test", issuedBy(theirs, serialOf(leaf)), "bot", reason.CertificateRevoked)
	waitCheck(t, c, "theirs.test", issuedBy(theirs, "ffff"), "bot", "")
	before := srv.requests.Load()
	waitFor(t, "more polls", func() bool { return srv.requests.Load() > before+4 })
	// mine.test has only a CRL from a CA it does not know: it is never
	// verified, so mine.test has no revocation data.
	if got := c.Check("mine.test", issuedBy(mine, serialOf(leaf)), "bot"); got != reason.RevocationStatusUnknown {
		t.Errorf("mine.test with only a foreign CRL: %q", string(got))
	}
	if st := c.Status()["mine.test"]; st.Ready {
		t.Errorf("mine.test ready with only a foreign CRL: %+v", st)
	}
}

func TestStaleThenRecovery(t *testing.T) {
	ca := testca.New(t)
	leaf, revoked := ca.Issue("bot"), ca.Issue("gone")
	t0 := time.Now()
	clk := newClock(t0)
	srv := newCRLServer(t, ca.CRL(1, t0, t0.Add(time.Hour), revoked.Cert.SerialNumber))
	c, reg := start(t, Config{Now: clk.Now, Tenants: map[string]TenantConfig{td: {
		CAs: []*x509.Certificate{ca.Cert}, CRLURLs: []string{srv.URL},
		PollInterval: 10 * time.Millisecond, Grace: 10 * time.Minute,
	}}})
	waitFor(t, "ready", c.Ready)
	if got := c.Check(td, issuedBy(ca, serialOf(leaf)), "bot"); got != "" {
		t.Fatalf("fresh: %q", string(got))
	}

	// The source goes down. Within nextUpdate+grace the old data serves.
	srv.set(nil, true)
	before := srv.requests.Load()
	waitFor(t, "failed polls", func() bool { return srv.requests.Load() > before+1 })
	clk.Set(t0.Add(time.Hour + 9*time.Minute))
	if got := c.Check(td, issuedBy(ca, serialOf(leaf)), "bot"); got != "" {
		t.Errorf("within grace: %q", string(got))
	}
	// Past it, every check fails closed, except what is known revoked.
	clk.Set(t0.Add(time.Hour + 10*time.Minute + time.Second))
	if got := c.Check(td, issuedBy(ca, serialOf(leaf)), "bot"); got != reason.RevocationStatusUnknown {
		t.Errorf("past nextUpdate+grace: %q", string(got))
	}
	if got := c.Check(td, issuedBy(ca, serialOf(revoked)), "gone"); got != reason.CertificateRevoked {
		t.Errorf("revoked while stale: %q", string(got))
	}
	if got := metric(t, reg, "agentauthz_revocation_stale", map[string]string{"tenant": td}); got != 1 {
		t.Errorf("stale metric = %v", got)
	}
	if got := metric(t, reg, "agentauthz_revocation_refresh_errors_total", map[string]string{"tenant": td, "source": "url"}); got < 1 {
		t.Errorf("refresh errors = %v", got)
	}

	// The source comes back with a fresh CRL: recovery.
	now := clk.Now()
	srv.set(ca.CRL(2, now, now.Add(time.Hour), revoked.Cert.SerialNumber), false)
	waitCheck(t, c, td, issuedBy(ca, serialOf(leaf)), "bot", "")
	if got := metric(t, reg, "agentauthz_revocation_stale", map[string]string{"tenant": td}); got != 0 {
		t.Errorf("stale metric after recovery = %v", got)
	}
}

func TestURLNotModified(t *testing.T) {
	ca := testca.New(t)
	revoked := ca.Issue("gone")
	now := time.Now()
	srv := newCRLServer(t, ca.CRL(1, now, now.Add(time.Hour), revoked.Cert.SerialNumber))
	c, reg := start(t, Config{Tenants: map[string]TenantConfig{td: {
		CAs: []*x509.Certificate{ca.Cert}, CRLURLs: []string{srv.URL}, PollInterval: 10 * time.Millisecond,
	}}})
	waitFor(t, "two 304s", func() bool { return srv.notMod.Load() >= 2 })
	if got := c.Check(td, issuedBy(ca, serialOf(revoked)), "gone"); got != reason.CertificateRevoked {
		t.Errorf("after 304s: %q", string(got))
	}
	if srv.condition.Load() < 2 {
		t.Errorf("conditional requests = %d", srv.condition.Load())
	}
	if got := metric(t, reg, "agentauthz_revocation_last_refresh_timestamp_seconds", map[string]string{"tenant": td}); got <= 0 {
		t.Errorf("last refresh = %v", got)
	}
	if got := metric(t, reg, "agentauthz_revocation_refresh_errors_total", map[string]string{"tenant": td, "source": "url"}); got != 0 {
		t.Errorf("refresh errors = %v", got)
	}
	// A changed CRL is fetched in full and applied.
	srv.set(ca.CRL(2, now, now.Add(time.Hour)), false)
	waitCheck(t, c, td, issuedBy(ca, serialOf(revoked)), "gone", "")
}

// startPublisher serves a Publisher over store; the returned handler switch
// takes the watch endpoint down while the CRL endpoint stays up.
func startPublisher(t *testing.T, store Store, inlineLimit ...int) (*httptest.Server, *Publisher, func(down bool)) {
	t.Helper()
	cfg := PublisherConfig{Store: store, Logger: testLogger(t), GenerationPoll: 5 * time.Millisecond,
		Heartbeat: 50 * time.Millisecond, NotFound: errUnknownTenant}
	if len(inlineLimit) > 0 {
		cfg.InlineCRLLimit = inlineLimit[0]
	}
	pub, err := NewPublisher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := contextWithTimeout(t)
	done := make(chan struct{})
	go func() { pub.Run(ctx); close(done) }()
	var watchDown atomicFlag
	h := pub.Handler()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == WatchPath && watchDown.get() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		h.ServeHTTP(w, r)
	}))
	srv.Start()
	t.Cleanup(func() { cancel(); <-done; srv.Close() })
	return srv, pub, func(down bool) {
		watchDown.set(down)
		if down {
			srv.CloseClientConnections()
		}
	}
}

func TestPushAppliesRevocations(t *testing.T) {
	ca := testca.New(t)
	a, b, x := ca.Issue("bot-a"), ca.Issue("bot-b"), ca.Issue("bot-x")
	store := newFakeStore(ca)
	srv, _, _ := startPublisher(t, store)
	c, reg := start(t, Config{Tenants: map[string]TenantConfig{td: {
		CAs: []*x509.Certificate{ca.Cert}, WatchURL: srv.URL + WatchPath, PollInterval: time.Hour,
	}}})
	waitFor(t, "ready", c.Ready)
	waitFor(t, "push connected", func() bool {
		return metric(t, reg, "agentauthz_revocation_push_connected", map[string]string{"tenant": td}) == 1
	})
	for _, l := range []*testca.Leaf{a, b, x} {
		if got := c.Check(td, issuedBy(ca, serialOf(l)), l.Cert.Subject.CommonName); got != "" {
			t.Fatalf("%s before revocation: %q", l.Cert.Subject.CommonName, got)
		}
	}
	// Revoke bot-a (serial and agent); the poll interval is an hour, so
	// only the push can deliver this.
	store.revokeAgent("bot-a", a.Cert.SerialNumber)
	waitCheck(t, c, td, issuedBy(ca, serialOf(a)), "bot-a", reason.CertificateRevoked)
	// Agent-level revocation holds for a certificate not on the CRL (a
	// renewal the CA has not yet published, or any other of its certs).
	if got := c.Check(td, issuedBy(ca, "abcdef"), "bot-a"); got != reason.AgentRevoked {
		t.Errorf("other cert of revoked agent: %q", string(got))
	}
	if got := c.Check(td, issuedBy(ca, serialOf(b)), "bot-b"); got != "" {
		t.Errorf("bot-b after bot-a's revocation: %q", string(got))
	}
	// Agent-only revocation.
	store.revokeAgent("bot-x")
	waitCheck(t, c, td, issuedBy(ca, serialOf(x)), "bot-x", reason.AgentRevoked)
	if got := metric(t, reg, "agentauthz_revocation_revoked_agents", map[string]string{"tenant": td}); got != 2 {
		t.Errorf("revoked_agents = %v", got)
	}
}

// TestPushLargeCRLFetched: a CRL above the inline limit is announced by
// ETag and fetched from the CRL endpoint.
func TestPushLargeCRLFetched(t *testing.T) {
	ca := testca.New(t)
	a := ca.Issue("bot-a")
	store := newFakeStore(ca)
	var fetches atomicCounter
	srv, _, _ := startPublisher(t, store, 1)
	proxy := newHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, CRLPath) {
			fetches.add()
		}
		// Stream through to the publisher, flushing as it goes.
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, srv.URL+r.URL.RequestURI(), nil)
		req.Header = r.Header.Clone()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		buf := make([]byte, 32<<10)
		for {
			n, err := resp.Body.Read(buf)
			if n > 0 {
				w.Write(buf[:n])
				w.(http.Flusher).Flush()
			}
			if err != nil {
				return
			}
		}
	}))
	c, _ := start(t, Config{Tenants: map[string]TenantConfig{td: {
		CAs: []*x509.Certificate{ca.Cert}, WatchURL: proxy.URL + WatchPath, PollInterval: time.Hour,
	}}})
	waitFor(t, "ready", c.Ready)
	before := fetches.get()
	store.revokeAgent("bot-a", a.Cert.SerialNumber)
	waitCheck(t, c, td, issuedBy(ca, serialOf(a)), "", reason.CertificateRevoked)
	waitCheck(t, c, td, issuedBy(ca, "abcdef"), "bot-a", reason.AgentRevoked)
	if fetches.get() <= before {
		t.Error("CRL was not fetched after an ETag-only event")
	}
}

func TestPushLostFallsBackToPolling(t *testing.T) {
	ca := testca.New(t)
	a := ca.Issue("bot-a")
	store := newFakeStore(ca)
	srv, _, setWatchDown := startPublisher(t, store)
	c, reg := start(t, Config{Tenants: map[string]TenantConfig{td: {
		CAs: []*x509.Certificate{ca.Cert}, WatchURL: srv.URL + WatchPath, PollInterval: 20 * time.Millisecond,
	}}})
	connected := func(v float64) func() bool {
		return func() bool {
			return metric(t, reg, "agentauthz_revocation_push_connected", map[string]string{"tenant": td}) == v
		}
	}
	waitFor(t, "push connected", connected(1))

	setWatchDown(true)
	waitFor(t, "push disconnected", connected(0))
	waitFor(t, "fallback polling", func() bool {
		return metric(t, reg, "agentauthz_revocation_push_fallback_polling", map[string]string{"tenant": td}) == 1
	})
	// With the channel down, the CRL poll still delivers the revocation.
	store.revokeAgent("bot-a", a.Cert.SerialNumber)
	waitCheck(t, c, td, issuedBy(ca, serialOf(a)), "bot-a", reason.CertificateRevoked)

	setWatchDown(false)
	waitFor(t, "push reconnected", connected(1))
	if got := metric(t, reg, "agentauthz_revocation_push_fallback_polling", map[string]string{"tenant": td}); got != 0 {
		t.Errorf("fallback after reconnect = %v", got)
	}
	// The reconnect resynchronised the agent list, which only the push
	// channel carries.
	waitCheck(t, c, td, issuedBy(ca, "abcdef"), "bot-a", reason.AgentRevoked)
}

func TestPushIdleStreamIsDropped(t *testing.T) {
	ca := testca.New(t)
	store := newFakeStore(ca)
	var hits atomicCounter
	// A server that sends the first event and then nothing, not even a
	// heartbeat.
	pub, err := NewPublisher(PublisherConfig{Store: store, Heartbeat: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	h := pub.Handler()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == WatchPath {
			hits.add()
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	cfg := Config{Logger: testLogger(t), Tenants: map[string]TenantConfig{td: {
		CAs: []*x509.Certificate{ca.Cert}, WatchURL: srv.URL + WatchPath, PollInterval: time.Hour,
	}}}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.idleTimeout = 50 * time.Millisecond
	ctx, cancel := contextWithTimeout(t)
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "reconnects after idle", func() bool { return hits.get() >= 3 })
	if !c.Ready() {
		t.Error("not ready after events")
	}
}

func TestWatchURLs(t *testing.T) {
	cases := []struct{ in, watch, crl string }{
		{"http://127.0.0.1:9193/v1/watch", "http://127.0.0.1:9193/v1/watch?tenant=example.test", "http://127.0.0.1:9193/v1/crl/example.test"},
		{"http://h/v1/watch?tenant=example.test", "http://h/v1/watch?tenant=example.test", "http://h/v1/crl/example.test"},
		{"https://h/prefix/v1/watch", "https://h/prefix/v1/watch?tenant=example.test", "https://h/prefix/v1/crl/example.test"},
	}
	for _, tc := range cases {
		w, c, err := watchURLs(tc.in, td)
		if err != nil || w != tc.watch || c != tc.crl {
			t.Errorf("watchURLs(%q) = %q, %q, %v; want %q, %q", tc.in, w, c, err, tc.watch, tc.crl)
		}
	}
}

func TestCheckDoesNotAllocate(t *testing.T) {
	testenv.SkipAllocsUnderRace(t)
	c, ca := benchChecker(t, 10_000)
	revoked := issuedBy(ca, big.NewInt(1).Text(16))
	if c.Check(td, revoked, "bot") == "" {
		t.Fatal("revoked serial allowed")
	}
	// Serials outside the compact table are looked up in the fallback map.
	chains := [][]identity.ChainCert{issuedBy(ca, "deadbeef"), revoked, issuedBy(ca, revoked16), issuedBy(ca, good16),
		issuedBy(ca, "-"+good16), issuedBy(ca, good16+good16+good16[:10])}
	// A two-certificate chain: the intermediate's issuer holds no CRL.
	inter := testca.New(t)
	chains = append(chains, append(issuedBy(inter, "5"), issuedBy(ca, "6")...))
	allocs := testing.AllocsPerRun(1000, func() {
		for _, ch := range chains {
			c.Check(td, ch, "bot")
		}
		c.Check(td, chains[0], "revoked-bot")
	})
	if allocs != 0 {
		t.Errorf("Check allocates %v times per call", allocs)
	}
}

func TestSetCAsRotation(t *testing.T) {
	oldCA, newCA := testca.New(t), testca.New(t)
	a := oldCA.Issue("bot-a")
	now := time.Now()
	path := tempFile(t, "ca.crl")
	writeFile(t, path, oldCA.CRL(1, now, now.Add(time.Hour), a.Cert.SerialNumber))
	c, reg := start(t, Config{Tenants: map[string]TenantConfig{td: {
		CAs: []*x509.Certificate{oldCA.Cert}, CRLFiles: []string{path}, PollInterval: time.Hour,
	}}})
	waitCheck(t, c, td, issuedBy(oldCA, serialOf(a)), "bot-a", reason.CertificateRevoked)

	// The new CA's CRL is refused until the bundle lists it. (testca
	// numbers serials alike in every CA; skip ahead to avoid a collision.)
	newCA.Issue("skip")
	b := newCA.Issue("bot-b")
	writeFile(t, path, newCA.CRL(1, now, now.Add(time.Hour), b.Cert.SerialNumber))
	waitFor(t, "refusal counted", func() bool {
		return metric(t, reg, "agentauthz_revocation_refresh_errors_total", map[string]string{"tenant": td, "source": "file"}) >= 1
	})
	if got := c.Check(td, issuedBy(newCA, serialOf(b)), "bot-b"); got != reason.RevocationStatusUnknown {
		t.Errorf("unlisted CA's CRL applied: %q", string(got))
	}

	// Both CAs: the old CA's CRL stays, the new one's is accepted.
	if err := c.SetCAs(map[string][]*x509.Certificate{td: {newCA.Cert, oldCA.Cert}}); err != nil {
		t.Fatal(err)
	}
	if got := c.Check(td, issuedBy(oldCA, serialOf(a)), "bot-a"); got != reason.CertificateRevoked {
		t.Errorf("old CA's CRL lost on SetCAs: %q", string(got))
	}
	writeFile(t, path, newCA.CRL(2, now, now.Add(time.Hour), b.Cert.SerialNumber))
	waitCheck(t, c, td, issuedBy(newCA, serialOf(b)), "bot-b", reason.CertificateRevoked)
	if got := c.Check(td, issuedBy(oldCA, serialOf(a)), "bot-a"); got != reason.CertificateRevoked {
		t.Errorf("old CA's CRL replaced by the new CA's: %q", string(got))
	}

	// Old CA removed: its CRL goes, the new CA's stays.
	if err := c.SetCAs(map[string][]*x509.Certificate{td: {newCA.Cert}}); err != nil {
		t.Fatal(err)
	}
	if got := c.Check(td, issuedBy(oldCA, serialOf(a)), "bot-a"); got != reason.RevocationStatusUnknown {
		t.Errorf("removed CA's CRL still applied: %q", string(got))
	}
	if got := c.Check(td, issuedBy(newCA, serialOf(b)), "bot-b"); got != reason.CertificateRevoked {
		t.Errorf("new CA's CRL lost: %q", string(got))
	}
	// A tenant not checked here is ignored; a checked tenant without CAs
	// refuses the whole call, and nothing changes.
	if err := c.SetCAs(map[string][]*x509.Certificate{td: {newCA.Cert}, "unchecked.test": nil}); err != nil {
		t.Errorf("SetCAs with an unchecked tenant without CAs: %v", err)
	}
	if err := c.SetCAs(map[string][]*x509.Certificate{td: nil}); err == nil {
		t.Error("SetCAs without CAs accepted")
	}
	if got := c.Check(td, issuedBy(newCA, serialOf(b)), "bot-b"); got != reason.CertificateRevoked {
		t.Errorf("refused SetCAs changed the CAs: %q", string(got))
	}
}
