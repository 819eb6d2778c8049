package ca

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// dataLockName is the lock file in the data directory that a running control
// plane holds shared and `control migrate-store` exclusively: the store is
// not copied while a control plane may still write to it.
const dataLockName = "control.lock"

// ErrDataDirInUse means a control plane holds the data directory.
var ErrDataDirInUse = errors.New("a control plane is running on this data directory")

// LockDataDir takes the data directory's lock without waiting: shared for a
// control plane (several may run), exclusive for a store migration. The
// returned function releases it; so does the process ending.
func LockDataDir(dataDir string, exclusive bool) (unlock func(), err error) {
	path := filepath.Join(dataDir, dataLockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data directory lock: %w", err)
	}
	try := tryLockFileShared
	if exclusive {
		try = tryLockFile
	}
	ok, err := try(f)
	if err == nil && !ok {
		err = fmt.Errorf("%w (%s is held)", ErrDataDirInUse, path)
		if !exclusive {
			err = fmt.Errorf("the data directory is being migrated to another store (%s is held)", path)
		}
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		_ = unlockFile(f)
		f.Close()
	}, nil
}
