// Package install checks a new user's first hour on the binary exactly as
// `go install` puts it, run from a directory that is not the repository:
// nothing may depend on the working directory holding policies/.
package install

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/test/process"
)

// binary is the installed agentauthz, built once by TestMain.
var binary string

func TestMain(m *testing.M) {
	code := func() int {
		if p := os.Getenv(process.BinaryEnv); p != "" {
			binary = p
			return m.Run()
		}
		root, err := process.ModuleRoot()
		if err != nil {
			panic(err)
		}
		gobin, err := os.MkdirTemp("", "agentauthz-install-")
		if err != nil {
			panic(err)
		}
		defer os.RemoveAll(gobin)
		cmd := exec.Command("go", "install", "./cmd/agentauthz")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "GOBIN="+gobin, "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			panic("go install: " + err.Error() + "\n" + string(out))
		}
		binary = filepath.Join(gobin, "agentauthz")
		return m.Run()
	}()
	os.Exit(code)
}

// emptyDir is a fresh working directory with nothing in it.
func emptyDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("%s is not empty", dir)
	}
	return dir
}

// TestInstalledDemo runs `agentauthz demo` from an empty directory: it plays
// the whole story with the built-in policies and says so.
func TestInstalledDemo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "demo")
	cmd.Dir = emptyDir(t)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("agentauthz demo from an empty directory: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	if !strings.Contains(stderr.String(), "agentauthz: policies: built-in") {
		t.Errorf("demo does not say it plays the built-in policies; stderr:\n%s", stderr.String())
	}
	for _, want := range []string{"payments-agent", "ALLOW", "rogue-agent", "DENY 403"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("demo story lacks %q:\n%s", want, stdout.String())
		}
	}
	if entries, _ := os.ReadDir(cmd.Dir); len(entries) != 0 {
		t.Errorf("demo left %d files in the working directory", len(entries))
	}
}

// TestInstalledServeDev starts `agentauthz serve --dev` from an empty
// directory: it names the built-in policies at start and becomes ready.
func TestInstalledServeDev(t *testing.T) {
	dir := emptyDir(t)
	cmd := exec.Command(binary, "serve", "--dev", "--data-dir", "data",
		"--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--log-format", "json")
	cmd.Dir = dir
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var log []string
	source, httpAddr := "", ""
	timeout := time.After(process.StartTimeout)
	for httpAddr == "" {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("serve --dev exited before serving:\n%s", strings.Join(log, "\n"))
			}
			log = append(log, line)
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) != nil {
				continue
			}
			switch m["@message"] {
			case "policy":
				source, _ = m["source"].(string)
			case "serving":
				httpAddr, _ = m["http"].(string)
			}
		case <-timeout:
			t.Fatalf("serve --dev did not serve within %v:\n%s", process.StartTimeout, strings.Join(log, "\n"))
		}
	}
	go func() {
		for range lines { // keep the pipe drained
		}
	}()
	if !strings.HasPrefix(source, "built-in") {
		t.Errorf("policy source at start = %q, want the built-in policies; log:\n%s", source, strings.Join(log, "\n"))
	}
	deadline := time.Now().Add(process.StartTimeout)
	for {
		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve --dev not ready (%v, %v)", resp, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestInstalledVersion: `agentauthz version` reports the Go toolchain and the
// OPA module the binary was built with, from its own build information.
func TestInstalledVersion(t *testing.T) {
	out, err := exec.Command(binary, "version", "--json").Output()
	if err != nil {
		t.Fatalf("agentauthz version --json: %v", err)
	}
	var v struct{ Version, Go, OPA string }
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("version --json: %v\n%s", err, out)
	}
	root, err := process.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Version}}", "github.com/open-policy-agent/opa")
	cmd.Dir = root
	want, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if v.OPA != strings.TrimSpace(string(want)) || !strings.HasPrefix(v.Go, "go1.") || v.Version == "" {
		t.Errorf("version = %+v, want OPA %s", v, want)
	}
	flag, err := exec.Command(binary, "--version").Output()
	if err != nil || !strings.Contains(string(flag), "opa:         "+v.OPA) {
		t.Errorf("agentauthz --version: %v\n%s", err, flag)
	}
}
