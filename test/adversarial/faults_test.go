package adversarial

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/testca"
)

// Service-level fault tests. The package-level counterparts are
// internal/policy TestEvalTimeout, internal/decisionlog
// TestUnavailableThenRecovers and TestUnavailableWhenDirIsAFile,
// internal/revocation TestStaleThenRecovery and internal/server
// TestTrustBundleCorruptedAtRuntime; the process-level ones (SIGHUP,
// SIGTERM, a full disk, kill -9) are in test/crash.

// eventually polls cond until it holds, failing after liveness.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(liveness)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, liveness)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestFaultPolicyOverBudget: an evaluation that exceeds policy.eval_timeout
// is a denial with policy_error (403), recorded; other requests are
// unaffected.
func TestFaultPolicyOverBudget(t *testing.T) {
	ca := testca.New(t)
	svc := startService(t, slowConfig(t, ca.WriteBundle(), 50*time.Millisecond, 10*time.Minute))
	leaf := issueSpec(ca, catalogueAgents()["reader"])
	slow := within(t, "over-budget Check", func() verdict { return reduce(mustCheck(t, svc, readerRequest(t, leaf, "/slow"))) })
	if slow.Allowed || slow.Reason != "policy_error" || slow.Status != 403 {
		t.Errorf("over budget: allowed=%v reason=%s status=%d, want policy_error 403", slow.Allowed, slow.Reason, slow.Status)
	}
	if fast := reduce(mustCheck(t, svc, readerRequest(t, leaf, "/fast"))); !fast.Allowed {
		t.Errorf("a request within budget after the fault: %s", fast.Reason)
	}
	if rec := svc.verifyLog(t)[slow.DecisionID]; rec == nil || rec.Decision.Reasons[0] != "policy_error" {
		t.Errorf("over-budget denial not recorded: %+v", rec)
	}
}

// TestFaultDecisionLogUnavailableThenRecovers: when the next segment cannot
// be created (the log directory is replaced by a plain file; root ignores
// permission bits, so this is the file-system trick that works for every
// user), Checks are denied with decision_log_unavailable (503) and /readyz
// fails; once the directory is back the service allows again by itself, and
// the log verifies with every acknowledged decision in it.
func TestFaultDecisionLogUnavailableThenRecovers(t *testing.T) {
	ca := testca.New(t)
	cfg := newConfig(t, ca.WriteBundle(), nil)
	// Below the configurable minimum on purpose: every batch opens a new
	// segment, so the broken directory is noticed by the next Check.
	cfg.DecisionLog.SegmentMaxBytes = 1
	svc := startService(t, cfg)
	leaf := issueSpec(ca, catalogueAgents()["reader"])
	acked := []string{}
	check := func() verdict {
		v := reduce(mustCheck(t, svc, readerRequest(t, leaf, "/v1/payments/p-1")))
		if v.Allowed {
			acked = append(acked, v.DecisionID)
		}
		return v
	}
	if v := check(); !v.Allowed {
		t.Fatalf("before the fault: %s", v.Reason)
	}
	eventually(t, "ready", func() bool { c, _ := httpGet(t, "http://"+svc.httpAddr+"/readyz"); return c == 200 })

	dir := cfg.DecisionLog.Dir
	if err := os.Rename(dir, dir+".away"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		v := check()
		if v.Allowed || v.Reason != "decision_log_unavailable" || v.Status != 503 {
			t.Fatalf("log unwritable: allowed=%v reason=%s status=%d, want decision_log_unavailable 503", v.Allowed, v.Reason, v.Status)
		}
	}
	if code, _ := httpGet(t, "http://"+svc.httpAddr+"/readyz"); code != 503 {
		t.Errorf("/readyz while the log is unwritable: %d, want 503", code)
	}

	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dir+".away", dir); err != nil {
		t.Fatal(err)
	}
	eventually(t, "allowed again after the disk recovered", func() bool { return check().Allowed })
	eventually(t, "ready again", func() bool { c, _ := httpGet(t, "http://"+svc.httpAddr+"/readyz"); return c == 200 })
	logged := svc.verifyLog(t)
	for _, id := range acked {
		if logged[id] == nil {
			t.Errorf("acknowledged decision %s is missing", id)
		}
	}
}

// crlServer serves a CRL until it is told to fail.
type crlServer struct {
	der  atomic.Pointer[[]byte]
	down atomic.Bool
	hits atomic.Int64
}

func (s *crlServer) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	s.hits.Add(1)
	if s.down.Load() {
		http.Error(w, "gone", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/pkix-crl")
	w.Write(*s.der.Load())
}

// TestFaultCRLSourceGoesAway: when the CRL URL stops answering, the last
// CRL keeps being used (a revoked serial stays revoked, others allowed)
// until its nextUpdate plus grace; after that every check fails closed
// with revocation_status_unknown except what is known revoked, while
// /readyz stays 200 (staleness is a per-request denial); a fresh CRL
// recovers.
//
// The two phases use two CRLs so that neither depends on the machine's
// speed: the first is fresh for a minute, which the "last data in force"
// check cannot outlast; the second, loaded once the source is back, goes
// stale within seconds.
func TestFaultCRLSourceGoesAway(t *testing.T) {
	t.Parallel() // waits for the CRL to go stale
	ca := testca.New(t)
	agents := catalogueAgents()
	good, gone, later := issueSpec(ca, agents["reader"]), issueSpec(ca, agents["payer"]), issueSpec(ca, agents["noowner"])
	srv := &crlServer{}
	t0 := time.Now()
	der := ca.CRL(1, t0.Add(-time.Minute), t0.Add(time.Minute), gone.Cert.SerialNumber)
	srv.der.Store(&der)
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	svc := startService(t, newConfig(t, ca.WriteBundle(), func(c *config.Config) {
		c.TrustBundles[0].Revocation = config.Revocation{
			CRLURLs:      []string{hs.URL},
			PollInterval: config.Duration(100 * time.Millisecond),
			Grace:        config.Duration(time.Millisecond),
		}
	}))
	reasonOf := func(l *testca.Leaf) string {
		return reduce(mustCheck(t, svc, readerRequest(t, l, "/v1/payments/p-1"))).Reason
	}
	eventually(t, "CRL loaded", func() bool { return reasonOf(good) == "allowed" })
	if r := reasonOf(gone); r != "certificate_revoked" {
		t.Fatalf("revoked serial: %s", r)
	}

	// Source down, CRL 1 still fresh for about a minute: the last data is in force.
	srv.down.Store(true)
	before := srv.hits.Load()
	eventually(t, "failed polls", func() bool { return srv.hits.Load() > before+1 })
	if r := reasonOf(good); r != "allowed" {
		t.Errorf("source down, CRL still fresh: %s, want allowed (last data in force)", r)
	}
	if r := reasonOf(gone); r != "certificate_revoked" {
		t.Errorf("source down, CRL still fresh: revoked serial %s", r)
	}

	// Back with CRL 2, which expires in 3 s; then down again until it is stale.
	now := time.Now()
	short := ca.CRL(2, now.Add(-time.Minute), now.Add(3*time.Second), gone.Cert.SerialNumber, later.Cert.SerialNumber)
	srv.der.Store(&short)
	srv.down.Store(false)
	eventually(t, "CRL 2 loaded", func() bool { return reasonOf(later) == "certificate_revoked" })
	srv.down.Store(true)
	eventually(t, "stale CRL fails closed", func() bool { return reasonOf(good) == "revocation_status_unknown" })
	if r := reasonOf(gone); r != "certificate_revoked" {
		t.Errorf("revoked serial while stale: %s, want certificate_revoked", r)
	}
	// Staleness is a per-request denial, not unreadiness: the service still
	// decides (and records) every request (docs/revocation.md).
	if code, body := httpGet(t, "http://"+svc.httpAddr+"/readyz"); code != 200 {
		t.Errorf("/readyz while stale: %d %s, want 200", code, body)
	}

	now = time.Now()
	fresh := ca.CRL(3, now.Add(-time.Minute), now.Add(time.Hour), gone.Cert.SerialNumber)
	srv.der.Store(&fresh)
	srv.down.Store(false)
	eventually(t, "recovery with a fresh CRL", func() bool { return reasonOf(good) == "allowed" })
	if r := reasonOf(gone); r != "certificate_revoked" {
		t.Errorf("revoked serial after recovery: %s", r)
	}
	svc.verifyLog(t)
}
