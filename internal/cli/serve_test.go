package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for the server goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// devServe is `serve --dev` running in this process, on loopback ports the
// kernel picks, logging JSON to stderr.
type devServe struct {
	dataDir string
	stderr  syncBuffer
	done    chan int
	cancel  context.CancelFunc
}

// It names no policies, so it serves the built-in ones, as an installed
// binary does from any directory.
func startDevServe(t *testing.T) *devServe {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &devServe{dataDir: filepath.Join(t.TempDir(), "data"), done: make(chan int, 1), cancel: cancel}
	go func() {
		s.done <- Run(ctx, []string{"serve", "--dev", "--data-dir", s.dataDir,
			"--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--log-format", "json"},
			nil, &bytes.Buffer{}, &s.stderr)
	}()
	return s
}

// waitFor polls serve's log until ok holds, failing the test if serve
// exits first or within limit it does not hold.
func (s *devServe) waitFor(t *testing.T, what string, limit time.Duration, ok func(log string) bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !ok(s.stderr.String()) {
		select {
		case code := <-s.done:
			s.done <- code
			t.Fatalf("serve exited with %d:\n%s", code, s.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve logged no %s:\n%s", what, s.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop cancels serve and checks that it exits cleanly.
func (s *devServe) stop(t *testing.T) {
	t.Helper()
	s.cancel()
	if code := <-s.done; code != ExitOK {
		t.Errorf("serve exit %d after shutdown:\n%s", code, s.stderr.String())
	}
}

// TestDevQuickStart is the README quick start: serve --dev prints one check
// line that is allowed and one that is denied, and both work as printed.
func TestDevQuickStart(t *testing.T) {
	s := startDevServe(t)
	dataDir, stderr := s.dataDir, &s.stderr
	s.waitFor(t, "policy source", 30*time.Second, func(log string) bool {
		return strings.Contains(log, `"source":"built-in`)
	})
	lineRE := regexp.MustCompile(`(?m)^\s+(allowed|denied):\s+\S+ (check .*)$`)
	var lines [][]string
	s.waitFor(t, "check lines", 30*time.Second, func(log string) bool {
		lines = lineRE.FindAllStringSubmatch(log, -1)
		return len(lines) >= 2
	})
	for _, l := range lines {
		want := map[string]int{"allowed": ExitOK, "denied": ExitNo}[l[1]]
		var out, errOut bytes.Buffer
		code := Run(context.Background(), strings.Fields(l[2]), nil, &out, &errOut)
		if code != want {
			t.Errorf("%s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", l[2], code, want, out.String(), errOut.String())
		}
		if l[1] == "allowed" && !strings.Contains(out.String(), "x-agent-id: payments-agent") {
			t.Errorf("allowed output lacks the agent header:\n%s", out.String())
		}
		if l[1] == "denied" && !strings.Contains(out.String(), "insufficient_trust_level") {
			t.Errorf("denied output lacks the reason:\n%s", out.String())
		}
	}
	// check --json prints the whole answer; its receipt verifies against the
	// key audit pubkey --format pem exports, as the README shows.
	for _, l := range lines {
		if l[1] != "allowed" {
			continue
		}
		var out, errOut bytes.Buffer
		if code := Run(context.Background(), append(strings.Fields(l[2]), "--json"), nil, &out, &errOut); code != ExitOK {
			t.Fatalf("%s --json: exit %d\n%s%s", l[2], code, out.String(), errOut.String())
		}
		var a checkAnswer
		if err := json.Unmarshal(out.Bytes(), &a); err != nil || a.Decision != "allow" || a.Receipt == "" || a.Receipt != a.UpstreamHeaders["x-agent-receipt"] {
			t.Fatalf("check --json: %v\n%s", err, out.String())
		}
		out.Reset()
		if code := Run(context.Background(), []string{"audit", "pubkey", "--format", "pem", "--data-dir", dataDir}, nil, &out, &errOut); code != ExitOK {
			t.Fatalf("audit pubkey --format pem: exit %d %s", code, errOut.String())
		}
		pem := filepath.Join(t.TempDir(), "decision-log.pub.pem")
		if err := os.WriteFile(pem, out.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		out.Reset()
		if code := Run(context.Background(), []string{"receipt", "verify", a.Receipt, "--pubkey", pem}, nil, &out, &errOut); code != ExitOK {
			t.Errorf("receipt verify of check --json's receipt: exit %d\n%s%s", code, out.String(), errOut.String())
		}
	}
	// The printed revoke denies payments-agent within seconds, through the
	// in-process publisher, and leaves the other agents alone.
	revokeRE := regexp.MustCompile(`(?m)^\s+revoke:\s+\S+ (agent revoke .*)$`)
	rl := revokeRE.FindStringSubmatch(stderr.String())
	if rl == nil {
		t.Fatalf("serve printed no revoke line:\n%s", stderr.String())
	}
	if !strings.Contains(rl[1], "--data-dir "+dataDir) || !strings.HasSuffix(rl[1], " payments-agent") {
		t.Errorf("revoke line = %q", rl[1])
	}
	var out, errOut bytes.Buffer
	if code := Run(context.Background(), strings.Fields(rl[1]), nil, &out, &errOut); code != ExitOK {
		t.Fatalf("%s: exit %d\n%s%s", rl[1], code, out.String(), errOut.String())
	}
	allowedArgs := strings.Fields(lines[0][2])
	if lines[0][1] != "allowed" {
		allowedArgs = strings.Fields(lines[1][2])
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		out.Reset()
		errOut.Reset()
		code := Run(context.Background(), allowedArgs, nil, &out, &errOut)
		if code == ExitNo {
			if !regexp.MustCompile(`reason:\s+(agent_revoked|certificate_revoked)\b`).MatchString(out.String()) {
				t.Fatalf("revoked agent denied for another reason:\n%s", out.String())
			}
			break
		}
		if code != ExitOK {
			t.Fatalf("check after revoke: exit %d\n%s%s", code, out.String(), errOut.String())
		}
		if time.Now().After(deadline) {
			t.Fatalf("payments-agent still allowed 10s after the revoke:\n%s\nserve:\n%s", out.String(), stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	other := append([]string(nil), allowedArgs...)
	for i, a := range other {
		switch {
		case strings.HasSuffix(a, "payments-agent.pem"):
			other[i] = strings.TrimSuffix(a, "payments-agent.pem") + "reader.pem"
		case a == "POST":
			other[i] = "GET"
		}
	}
	out.Reset()
	errOut.Reset()
	if code := Run(context.Background(), other, nil, &out, &errOut); code != ExitOK || !strings.Contains(out.String(), "x-agent-id: reader") {
		t.Errorf("reader after revoking payments-agent: exit %d\n%s%s", code, out.String(), errOut.String())
	}

	// Shutdown is orderly and leaves the key directory private.
	s.stop(t)
	if !strings.Contains(stderr.String(), `"stopped"`) {
		t.Errorf("no orderly stop logged:\n%s", stderr.String())
	}
	if fi, err := os.Stat(filepath.Join(dataDir, "keys")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("keys dir: %v %v", fi, err)
	}
}

func TestCheckErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"check", "--via", "peer"}, "--cert is required"},
		{[]string{"check", "--cert", "/nonexistent.pem"}, "no such file"},
		{[]string{"check", "--via", "none", "--header", "novalue"}, "is not k=v"},
		{[]string{"check", "--via", "none", "--addr", "127.0.0.1:1", "--timeout", "2s"}, "is `agentauthz serve` running"},
	} {
		var out, errOut bytes.Buffer
		code := Run(context.Background(), tc.args, nil, &out, &errOut)
		if code != ExitError || !strings.Contains(errOut.String(), tc.want) || !strings.HasPrefix(errOut.String(), "agentauthz: error: ") {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 mentioning %q", tc.args, code, errOut.String(), tc.want)
		}
	}
}

func TestServeRejectsBadConfig(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(cfg, []byte("data_dir: /tmp/x\nunknown_key: 1\n"), 0o644)
	var errOut bytes.Buffer
	if code := Run(context.Background(), []string{"serve", "--config", cfg}, nil, &bytes.Buffer{}, &errOut); code != ExitError {
		t.Fatalf("exit %d", code)
	}
	if !strings.Contains(errOut.String(), "unknown_key") || !strings.Contains(errOut.String(), "agentauthz: hint:") {
		t.Errorf("stderr = %s", errOut.String())
	}
	errOut.Reset()
	code := Run(context.Background(), []string{"serve", "--data-dir", t.TempDir(), "--trust-bundle", "nodomain", "--decision-log-mode", "maybe"}, nil, &bytes.Buffer{}, &errOut)
	if code != ExitError || !strings.Contains(errOut.String(), "TRUST_DOMAIN=PEM_FILE") {
		t.Errorf("exit %d stderr = %s", code, errOut.String())
	}
}
