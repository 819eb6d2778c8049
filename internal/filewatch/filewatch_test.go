package filewatch

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// run starts Run and returns a channel that receives one value per call.
func run(t *testing.T, paths []string, opt Options) <-chan struct{} {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	calls := make(chan struct{}, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, paths, opt, func() { calls <- struct{}{} })
	}()
	t.Cleanup(func() { cancel(); <-done })
	return calls
}

func waitCall(t *testing.T, calls <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-calls:
	case <-time.After(10 * time.Second):
		t.Fatalf("no call after %s", what)
	}
}

func TestEventOnWatchedFileCalls(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "cert.pem")
	if err := os.WriteFile(p, []byte("a"), 0o600); err != nil {
		t.Fatal(err)
	}
	calls := run(t, []string{p}, Options{})
	time.Sleep(100 * time.Millisecond) // let the watch start
	// Replace by rename, as durable writers and Kubernetes do.
	tmp := filepath.Join(dir, ".tmp")
	if err := os.WriteFile(tmp, []byte("b"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		t.Fatal(err)
	}
	waitCall(t, calls, "rename over the watched file")
}

func TestOtherFilesInTheDirectoryDoNotCall(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "cert.pem")
	calls := run(t, []string{p}, Options{})
	time.Sleep(100 * time.Millisecond)
	if err := os.WriteFile(filepath.Join(dir, "unrelated.log"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case <-calls:
		t.Fatal("called for a file that is not watched")
	case <-time.After(300 * time.Millisecond):
	}
}

func TestIntervalCallsWithoutEvents(t *testing.T) {
	// A directory that cannot be watched still gets the periodic call.
	p := filepath.Join(t.TempDir(), "missing", "cert.pem")
	calls := run(t, []string{p}, Options{Interval: 20 * time.Millisecond})
	waitCall(t, calls, "an interval")
	waitCall(t, calls, "a second interval")
}

func TestTreeSeesNewSubdirectoriesAndSkipsHiddenOnes(t *testing.T) {
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, ".git"), 0o700); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	calls := make(chan struct{}, 100)
	done := make(chan error, 1)
	go func() { done <- Tree(ctx, root, Options{}, func() { calls <- struct{}{} }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Tree: %v", err)
		}
	})
	time.Sleep(100 * time.Millisecond)

	if err := os.WriteFile(filepath.Join(root, ".git", "index"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case <-calls:
		t.Fatal("called for a change inside a hidden directory")
	case <-time.After(300 * time.Millisecond):
	}

	sub := filepath.Join(root, "team")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	waitCall(t, calls, "a new subdirectory")
	time.Sleep(100 * time.Millisecond) // the new directory's watch is in place
	if err := os.WriteFile(filepath.Join(sub, "authz.rego"), []byte("package x"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitCall(t, calls, "a file written in the new subdirectory")
}

func TestTreeFailsOnAMissingRoot(t *testing.T) {
	if err := Tree(context.Background(), filepath.Join(t.TempDir(), "absent"), Options{}, func() {}); err == nil {
		t.Fatal("a missing root was watched without error")
	}
}
