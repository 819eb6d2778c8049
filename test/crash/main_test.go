// Package crash runs `agentauthz serve` as a real process and hurts it:
// kill -9 under load, SIGTERM under load, SIGHUP with a changed policy, a
// full disk. After each, the decision log must verify and hold every
// decision a client got an answer for.
package crash

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/agentauthz/agentauthz/internal/checkreq"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/test/process"
)

// TestMain builds the binary once for every test of the package and hands
// its path to them through process.BinaryEnv.
func TestMain(m *testing.M) {
	flag.Parse()
	if os.Getenv(process.BinaryEnv) == "" && !testing.Short() {
		dir, err := os.MkdirTemp("", "agentauthz-crash-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		bin, err := process.Build(dir)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
		os.Setenv(process.BinaryEnv, bin)
		code := m.Run()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}

func binary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("runs agentauthz as a process")
	}
	return os.Getenv(process.BinaryEnv)
}

// devRequests is a mix of allowed and denied Checks by the dev agents.
func devRequests(t *testing.T, p *process.Proc) []*authv3.CheckRequest {
	t.Helper()
	specs := []checkreq.Request{
		{Method: "POST", Path: "/v1/payments", CertPEM: p.AgentCert(t, "payments-agent"), Via: checkreq.ViaPeer},
		{Method: "GET", Path: "/v1/payments/p-1", CertPEM: p.AgentCert(t, "reader"), Via: checkreq.ViaXFCC},
		{Method: "POST", Path: "/v1/payments", CertPEM: p.AgentCert(t, "sanctions-screener"), Via: checkreq.ViaPeer},
		{Method: "POST", Path: "/v1/sanctions/screenings", CertPEM: p.AgentCert(t, "sanctions-screener"), Via: checkreq.ViaPeer},
		{Method: "GET", Path: "/v1/payments", Via: checkreq.ViaNone},
	}
	var out []*authv3.CheckRequest
	for i, s := range specs {
		s.RequestID = fmt.Sprintf("crash-%d", i)
		req, err := checkreq.Build(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, req)
	}
	return out
}

// verifyReceipts checks that every receipt an upstream got verifies with
// the log's keys against a checkpoint found in the log.
func verifyReceipts(t *testing.T, dataDir string, receipts map[string]string) {
	t.Helper()
	keys, err := decisionlog.LoadKeySet(filepath.Join(dataDir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	cps, err := decisionlog.Checkpoints(filepath.Join(dataDir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	inLog := map[string]bool{}
	for _, cp := range cps {
		inLog[string(cp)] = true
	}
	bad := 0
	for id, rc := range receipts {
		r, err := decisionlog.VerifyReceipt(rc, keys)
		switch {
		case err != nil:
			t.Errorf("receipt of acknowledged decision %s: %v", id, err)
		case !inLog[string(r.SignedCheckpoint())]:
			t.Errorf("the checkpoint of decision %s's receipt (tree size %d) is not in the log", id, r.Checkpoint.Size)
		default:
			continue
		}
		if bad++; bad >= 5 {
			t.FailNow()
		}
	}
	if bad > 0 {
		t.FailNow()
	}
}

// verifyLog checks the log under dataDir with decisionlog.Verify and the
// log's keys, and that every id in acked is in it. It returns the number
// of records.
func verifyLog(t *testing.T, dataDir string, acked map[string]bool) int {
	t.Helper()
	keys, err := decisionlog.LoadKeySet(filepath.Join(dataDir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	logDir := filepath.Join(dataDir, "log")
	res, err := decisionlog.Verify(logDir, keys)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if res.Problem != nil {
		t.Fatalf("log does not verify: %v", res.Problem)
	}
	inLog := map[string]bool{}
	r := decisionlog.NewReader(logDir)
	defer r.Close()
	for {
		e, err := r.Next()
		if err != nil {
			if strings.Contains(err.Error(), "EOF") {
				break
			}
			t.Fatalf("read log: %v", err)
		}
		inLog[e.Record.DecisionID] = true
	}
	missing := 0
	for id := range acked {
		if !inLog[id] {
			if missing++; missing <= 5 {
				t.Errorf("acknowledged decision %s is not in the log", id)
			}
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d acknowledged decisions missing", missing, len(acked))
	}
	return int(res.Records)
}

// auditVerify runs the auditor's CLI on the log.
func auditVerify(t *testing.T, bin, dataDir string) {
	t.Helper()
	out, err := exec.Command(bin, "audit", "verify", "--log", filepath.Join(dataDir, "log")).CombinedOutput()
	if err != nil {
		t.Fatalf("agentauthz audit verify: %v\n%s", err, out)
	}
}

// loadUntil runs load against p in the background. stop ends it and
// returns the result.
func loadUntil(t *testing.T, p *process.Proc, workers int, answered *atomic.Int64) (stop func() process.LoadResult) {
	client, reqs := p.Client(t), devRequests(t, p)
	ctx, cancel := context.WithCancel(context.Background())
	var res process.LoadResult
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		res = process.Load{
			Client: client, Requests: reqs, Workers: workers,
			CallTimeout: 10 * time.Second,
			OnAnswer:    func(string, bool) { answered.Add(1) },
		}.Run(ctx)
	}()
	return func() process.LoadResult {
		cancel()
		wg.Wait()
		return res
	}
}

// waitCount waits until c reaches n, failing after the liveness bound.
func waitCount(t *testing.T, c *atomic.Int64, n int64, p *process.Proc) {
	t.Helper()
	deadline := time.Now().Add(process.StartTimeout)
	for c.Load() < n {
		if time.Now().After(deadline) || p.Exited() {
			t.Fatalf("only %d answers (want %d); exited=%v", c.Load(), n, p.Exited())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func readyz(t *testing.T, p *process.Proc) int {
	t.Helper()
	resp, err := http.Get("http://" + p.HTTPAddr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
