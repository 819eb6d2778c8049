// Package process builds the agentauthz binary and runs `agentauthz serve`
// as a real child process for the crash, signal and soak tests. The
// process's ports come from its own "serving" log line (it listens on
// 127.0.0.1:0), never from a port picked and released by the test.
package process

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// BinaryEnv names a prebuilt binary to use instead of building one.
const BinaryEnv = "AGENTAUTHZ_TEST_BINARY"

// StartTimeout bounds how long a process may take to report "serving" and
// become ready. Exceeding it is a hang, not a slow machine.
const StartTimeout = 60 * time.Second

// ModuleRoot finds the directory holding go.mod, walking up from the
// working directory.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// Build compiles ./cmd/agentauthz into dir and returns the binary's path,
// or returns $AGENTAUTHZ_TEST_BINARY when set. Call it once from TestMain
// and share the path: linking takes seconds.
func Build(dir string) (string, error) {
	if p := os.Getenv(BinaryEnv); p != "" {
		return p, nil
	}
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "agentauthz")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/agentauthz")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %w\n%s", err, b)
	}
	return out, nil
}

// Proc is one running `agentauthz serve`.
type Proc struct {
	Cmd      *exec.Cmd
	DataDir  string
	GRPCAddr string
	HTTPAddr string

	mu     sync.Mutex
	lines  []string // stderr, line by line
	notify chan struct{}
	exited chan struct{}
	err    error // Wait's result, once exited is closed
}

// Options for Start.
type Options struct {
	Binary   string
	DataDir  string
	Policies string   // --policies; default <module>/policies
	Args     []string // extra serve flags
	// Setup runs on the command before it starts (e.g. to set SysProcAttr).
	Setup func(*exec.Cmd)
}

// Start runs `serve --dev` on loopback with JSON logs and waits until it
// reports its addresses and /readyz answers 200. The process is killed
// when the test ends if it is still running.
func Start(t testing.TB, o Options) *Proc {
	t.Helper()
	if o.Policies == "" {
		root, err := ModuleRoot()
		if err != nil {
			t.Fatal(err)
		}
		o.Policies = filepath.Join(root, "policies")
	}
	args := append([]string{"serve", "--dev", "--data-dir", o.DataDir,
		"--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--policies", o.Policies, "--log-format", "json"}, o.Args...)
	p := &Proc{Cmd: exec.Command(o.Binary, args...), DataDir: o.DataDir, notify: make(chan struct{}, 1), exited: make(chan struct{})}
	if o.Setup != nil {
		o.Setup(p.Cmd)
	}
	stderr, err := p.Cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.mu.Unlock()
			select {
			case p.notify <- struct{}{}:
			default:
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	go func() {
		<-scanned // Wait closes the pipe: read it to the end first
		err := p.Cmd.Wait()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.exited)
	}()
	t.Cleanup(func() {
		if !p.Exited() {
			p.Cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("agentauthz serve (%s) stderr:\n%s", o.DataDir, p.Logs())
		}
	})
	line, err := p.WaitLog(func(m map[string]any) bool { return m["@message"] == "serving" }, StartTimeout)
	if err != nil {
		t.Fatalf("serve did not report serving: %v\n%s", err, p.Logs())
	}
	p.GRPCAddr, _ = line["grpc"].(string)
	p.HTTPAddr, _ = line["http"].(string)
	if p.GRPCAddr == "" || p.HTTPAddr == "" {
		t.Fatalf("serving line without addresses: %v", line)
	}
	if err := p.WaitReady(StartTimeout); err != nil {
		t.Fatalf("%v\n%s", err, p.Logs())
	}
	return p
}

// Logs returns everything the process wrote to stderr so far.
func (p *Proc) Logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// LogLines returns the JSON log lines so far, decoded; other lines are
// skipped.
func (p *Proc) LogLines() []map[string]any {
	p.mu.Lock()
	lines := append([]string(nil), p.lines...)
	p.mu.Unlock()
	var out []map[string]any
	for _, l := range lines {
		var m map[string]any
		if strings.HasPrefix(l, "{") && json.Unmarshal([]byte(l), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// WaitLog waits for a JSON log line matching match, looking at every line
// written so far and then at new ones.
func (p *Proc) WaitLog(match func(map[string]any) bool, timeout time.Duration) (map[string]any, error) {
	deadline := time.After(timeout)
	for {
		for _, m := range p.LogLines() {
			if match(m) {
				return m, nil
			}
		}
		select {
		case <-p.notify:
		case <-p.exited:
			for _, m := range p.LogLines() {
				if match(m) {
					return m, nil
				}
			}
			return nil, fmt.Errorf("process exited: %v", p.ExitErr())
		case <-deadline:
			return nil, fmt.Errorf("no matching log line within %v", timeout)
		}
	}
}

// CountLog counts the JSON log lines with the given message.
func (p *Proc) CountLog(msg string) int {
	n := 0
	for _, m := range p.LogLines() {
		if m["@message"] == msg {
			n++
		}
	}
	return n
}

// WaitReady polls /readyz until it answers 200.
func (p *Proc) WaitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		resp, err := http.Get("http://" + p.HTTPAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		if p.Exited() {
			return fmt.Errorf("process exited before ready: %v", p.ExitErr())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready within %v (last: %v)", timeout, err)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// Client dials the process's gRPC listener.
func (p *Proc) Client(t testing.TB) authv3.AuthorizationClient {
	t.Helper()
	conn, err := grpc.NewClient(p.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return authv3.NewAuthorizationClient(conn)
}

// Signal sends sig to the process.
func (p *Proc) Signal(sig syscall.Signal) error { return p.Cmd.Process.Signal(sig) }

// Kill sends SIGKILL and waits for the process to be gone.
func (p *Proc) Kill() {
	p.Cmd.Process.Kill()
	<-p.exited
}

// Wait waits for the process to exit, at most timeout.
func (p *Proc) Wait(ctx context.Context) error {
	select {
	case <-p.exited:
		return p.ExitErr()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// ExitErr is the process's exit status once it has exited.
func (p *Proc) ExitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// AgentCert is the PEM of a dev agent created by serve --dev.
func (p *Proc) AgentCert(t testing.TB, id string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(p.DataDir, "dev", "agents", id+".pem"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// RSSBytes reads the resident set size from /proc/<pid>/status.
func (p *Proc) RSSBytes() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			var kb int64
			if _, err := fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), &kb); err != nil {
				return 0, err
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("no VmRSS in /proc status")
}

// Metric reads one unlabelled sample (e.g. go_goroutines) from /metrics.
func (p *Proc) Metric(name string) (float64, error) {
	resp, err := http.Get("http://" + p.HTTPAddr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			var v float64
			_, err := fmt.Sscan(rest, &v)
			return v, err
		}
	}
	return 0, fmt.Errorf("metric %s not found", name)
}
