//go:build !unix || aix

package ca

import "os"

// tryLockFile has no lock to take where flock(2) is not available:
// EnsureDev callers are then not serialised.
func tryLockFile(*os.File) (bool, error) { return true, nil }

func tryLockFileShared(*os.File) (bool, error) { return true, nil }

func unlockFile(*os.File) error { return nil }

// haveFlock says whether tryLockFile excludes other processes.
const haveFlock = false
