package crash

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/agentauthz/agentauthz/internal/checkreq"
	"github.com/agentauthz/agentauthz/test/process"
)

// TestSIGTERMDrainsWithoutLosingRecords: SIGTERM under concurrent load
// drains in-flight Checks and exits 0; every decision a client got an
// answer for, up to the last one, is in the log, which verifies.
func TestSIGTERMDrainsWithoutLosingRecords(t *testing.T) {
	bin := binary(t)
	data := t.TempDir()
	p := process.Start(t, process.Options{Binary: bin, DataDir: data})
	var answered atomic.Int64
	stop := loadUntil(t, p, 8, &answered)
	waitCount(t, &answered, 300, p)
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), process.StartTimeout)
	defer cancel()
	waitErr := p.Wait(ctx)
	res := stop()
	if waitErr != nil {
		t.Fatalf("exit after SIGTERM: %v", waitErr)
	}
	if p.CountLog("stopped") != 1 {
		t.Errorf("no clean \"stopped\" log line")
	}
	acked := map[string]bool{}
	for _, id := range res.Acked {
		acked[id] = true
	}
	n := verifyLog(t, data, acked)
	t.Logf("%d answered (%d allowed, %d denied) before and during the drain, %d records, %d refused after stop",
		len(res.Acked), res.Allowed, res.Denied, n, res.Errors)
}

// copyDir copies the files of src (not recursive) into a new dir dst.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// swapLink points link at target atomically (rename over the old link).
func swapLink(t *testing.T, link, target string) {
	t.Helper()
	tmp := link + ".new"
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, link); err != nil {
		t.Fatal(err)
	}
}

// TestSIGHUPReloadsPolicy: the policy directory is a symlink swapped to a
// new version, which no file watch sees; SIGHUP reloads it and the next
// decision follows the new policy. A broken policy on SIGHUP is refused
// and the previous one keeps serving.
func TestSIGHUPReloadsPolicy(t *testing.T) {
	bin := binary(t)
	root, err := process.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	v1, v2, v3 := filepath.Join(work, "v1"), filepath.Join(work, "v2"), filepath.Join(work, "v3")
	copyDir(t, filepath.Join(root, "policies"), v1)
	copyDir(t, v1, v2)
	copyDir(t, v1, v3)
	// v2 quarantines the reader agent through the restrictions overlay.
	data, err := os.ReadFile(filepath.Join(v2, "data.json"))
	if err != nil {
		t.Fatal(err)
	}
	quarantined := strings.Replace(string(data), `"restrictions": {}`, `"restrictions": {"spiffe://dev.agentauthz.local/agent/reader": {"quarantined": true}}`, 1)
	if quarantined == string(data) {
		t.Fatal("shipped data.json has no empty restrictions object to edit")
	}
	os.WriteFile(filepath.Join(v2, "data.json"), []byte(quarantined), 0o644)
	// v3 does not compile.
	os.WriteFile(filepath.Join(v3, "authz.rego"), []byte("package agentauthz.authz\n\ndecision := {\n"), 0o644)

	link := filepath.Join(work, "policies")
	swapLink(t, link, v1)
	p := process.Start(t, process.Options{Binary: bin, DataDir: filepath.Join(work, "data"), Policies: link})
	client := p.Client(t)
	req, err := checkreq.Build(checkreq.Request{Method: "GET", Path: "/v1/payments/p-1", CertPEM: p.AgentCert(t, "reader"), Via: checkreq.ViaPeer})
	if err != nil {
		t.Fatal(err)
	}
	decide := func() string {
		resp, err := client.Check(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		return reasonOf(resp)
	}
	if r := decide(); r != "allowed" {
		t.Fatalf("v1: %s", r)
	}
	hup := func(msg string) {
		t.Helper()
		before := p.CountLog(msg)
		if err := p.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		if _, err := p.WaitLog(func(m map[string]any) bool { return m["@message"] == msg && p.CountLog(msg) > before }, process.StartTimeout); err != nil {
			t.Fatalf("no %q after SIGHUP: %v", msg, err)
		}
	}

	swapLink(t, link, v2)
	hup("reloaded")
	if r := decide(); r != "agent_quarantined" {
		t.Fatalf("after SIGHUP with v2: %s, want agent_quarantined", r)
	}

	swapLink(t, link, v3)
	hup("reload failed; previous configuration keeps serving")
	if r := decide(); r != "agent_quarantined" {
		t.Fatalf("after SIGHUP with a broken policy: %s, want v2's agent_quarantined", r)
	}

	swapLink(t, link, v1)
	hup("reloaded")
	if r := decide(); r != "allowed" {
		t.Fatalf("back to v1: %s", r)
	}
}

func reasonOf(resp *authv3.CheckResponse) string {
	return resp.GetDynamicMetadata().GetFields()["reason"].GetStringValue()
}
