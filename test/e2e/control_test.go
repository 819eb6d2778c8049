package e2e

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
)

// TestControlPlaneKill9: the control plane is killed with SIGKILL while a
// replica under load ships to it, and started again on the same address.
// Nothing the control plane acknowledged is lost, nothing is stored twice,
// the replica never stops answering, and once it is stopped (SIGINT) the
// control plane holds exactly the replica's log, which verifies.
func TestControlPlaneKill9(t *testing.T) {
	bin := buildBinary(t)
	caDir := t.TempDir()
	run(t, bin, "ca", "init", "--data-dir", caDir, "--trust-domain", tenant)
	agentDir := t.TempDir()
	run(t, bin, "agent", "issue", "--data-dir", caDir, "bot-0", "--trust", "L2", "--scope", "payments:read", "--out-dir", agentDir)
	pemBytes, err := os.ReadFile(filepath.Join(agentDir, "bot-0.pem"))
	if err != nil {
		t.Fatal(err)
	}
	bot := agent{"bot-0", pemBytes}
	run(t, bin, "operator", "issue", "audrey", "--role", "auditor", "--data-dir", caDir, "--out-dir", agentDir)

	// A fixed port, so the restarted control plane is where the replica
	// looks for it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cp := start(t, bin, "control", "serve", "--data-dir", caDir, "--addr", addr)
	url := cp.waitFor(t, regexp.MustCompile(`listening on (https://\S+)`))

	policyDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(policyDir, "authz.rego"), []byte(allowAll), 0o644); err != nil {
		t.Fatal(err)
	}
	r := startReplica(t, bin, 0, caDir, url, policyDir)

	ctx, stopLoad := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var answered, failed atomic.Int64
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if code, _ := r.check(ctx, bot); code == 0 {
					answered.Add(1)
				} else if ctx.Err() == nil {
					failed.Add(1)
				}
			}
		}()
	}
	time.Sleep(1500 * time.Millisecond)
	if err := cp.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-cp.done
	before := answered.Load()
	time.Sleep(1500 * time.Millisecond) // the replica keeps answering alone
	if answered.Load() == before {
		t.Fatal("the replica stopped answering while the control plane was down")
	}
	cp2 := start(t, bin, "control", "serve", "--data-dir", caDir, "--addr", addr)
	cp2.waitFor(t, regexp.MustCompile(`listening on (https://\S+)`))
	time.Sleep(1500 * time.Millisecond)
	stopLoad()
	wg.Wait()
	if failed.Load() != 0 {
		t.Errorf("%d checks failed", failed.Load())
	}
	r.proc.stop(t) // SIGINT: the replica ships what is left, then exits

	local := 0
	lr := decisionlog.NewReader(filepath.Join(r.dir, "log"))
	for {
		_, err := lr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		local++
	}
	lr.Close()
	auditor := []string{"--server", url, "--data-dir", caDir,
		"--cert", filepath.Join(agentDir, "audrey.pem"), "--key", filepath.Join(agentDir, "audrey.key")}
	stored := strings.Count(run(t, bin, append([]string{"audit", "query", "--json"}, auditor...)...), "\n")
	if stored != local {
		t.Errorf("the replica wrote %d records, the control plane holds %d", local, stored)
	}
	if out := run(t, bin, append([]string{"audit", "verify", "--log-name", "replica-0"}, auditor...)...); !strings.HasPrefix(out, "ok: ") {
		t.Errorf("audit verify --server: %s", out)
	}
	t.Logf("%d decisions answered, %d records shipped across a kill -9 of the control plane", answered.Load(), stored)
}
