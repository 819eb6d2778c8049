package ca

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// devLockName is the lock file EnsureDev holds, in the data directory, while
// it checks and creates the development environment.
const devLockName = "dev.lock"

// devLockTimeout bounds how long EnsureDev waits for another caller to finish
// (normally well under a second). A variable for tests.
var devLockTimeout = 30 * time.Second

// devLocks serialises EnsureDev within this process, one semaphore
// (capacity 1) per lock file. It does not rely on flock(2) conflicting
// between two descriptors of one process, and it is all there is where
// flock is not available.
var devLocks sync.Map // absolute lock file path → chan struct{}

// lockDev takes the exclusive dev lock of dataDir (creating both if needed),
// waiting at most timeout, and returns the function that releases it. The
// lock is advisory: it orders EnsureDev callers, in this and other
// processes, not other writers of the data directory.
func lockDev(dataDir string, timeout time.Duration) (unlock func(), err error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	path := filepath.Join(dataDir, devLockName)
	key, err := filepath.Abs(path)
	if err != nil {
		key = path
	}
	deadline := time.Now().Add(timeout)
	v, _ := devLocks.LoadOrStore(key, make(chan struct{}, 1))
	sem := v.(chan struct{})
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case sem <- struct{}{}:
	case <-t.C:
		return nil, devLockBusy(path, timeout, "another caller in this process")
	}
	release := func() { <-sem }
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		release()
		return nil, fmt.Errorf("dev lock: %w", err)
	}
	for wait := time.Millisecond; ; {
		ok, err := tryLockFile(f)
		if err != nil {
			f.Close()
			release()
			return nil, fmt.Errorf("dev lock %s: %w", path, err)
		}
		if ok {
			break
		}
		left := time.Until(deadline)
		if left <= 0 {
			f.Close()
			release()
			return nil, devLockBusy(path, timeout, "another process")
		}
		time.Sleep(min(wait, left))
		wait = min(2*wait, 50*time.Millisecond)
	}
	return func() {
		// Closing the descriptor releases the flock too; unlocking first
		// just says so.
		_ = unlockFile(f)
		f.Close()
		release()
	}, nil
}

func devLockBusy(path string, timeout time.Duration, holder string) error {
	return fmt.Errorf("dev environment is locked: %s is held by %s and was not released within %s "+
		"(is another `agentauthz serve --dev` on this data directory stuck while starting?)", path, holder, timeout)
}
