package ca

import (
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// devLockName is the lock file EnsureDev holds, in the data directory, while
// it checks and creates the development environment.
const devLockName = "dev.lock"

// devLockTimeout bounds how long EnsureDev waits for another caller to finish
// (normally well under a second).
const devLockTimeout = 30 * time.Second

// lockDev takes the exclusive dev lock of dataDir (creating both if needed),
// waiting at most timeout, and returns the function that releases it. The
// lock is advisory: it orders EnsureDev callers, in this and other
// processes, not other writers of the data directory. Each call opens the
// lock file anew, and flock(2) locks belong to the open file description,
// so two callers in one process exclude each other as two processes do.
func lockDev(dataDir string, timeout time.Duration) (unlock func(), err error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	path := filepath.Join(dataDir, devLockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("dev lock: %w", err)
	}
	deadline := time.Now().Add(timeout)
	for wait := time.Millisecond; ; {
		ok, err := tryLockFile(f)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("dev lock %s: %w", path, err)
		}
		if ok {
			break
		}
		left := time.Until(deadline)
		if left <= 0 {
			f.Close()
			return nil, devLockBusy(path, timeout)
		}
		time.Sleep(min(wait, left))
		wait = min(2*wait, 50*time.Millisecond)
	}
	return func() {
		// Closing the descriptor releases the flock too; unlocking first
		// just says so.
		_ = unlockFile(f)
		f.Close()
	}, nil
}

func devLockBusy(path string, timeout time.Duration) error {
	return fmt.Errorf("dev environment is locked: %s is held by another caller and was not released within %s "+
		"(is another `agentauthz serve --dev` on this data directory stuck while starting?)", path, timeout)
}
