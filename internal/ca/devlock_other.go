//go:build !unix || aix

package ca

import "os"

// tryLockFile has no cross-process lock to take where flock(2) is not
// available: EnsureDev is then serialised within one process only.
func tryLockFile(*os.File) (bool, error) { return true, nil }

func unlockFile(*os.File) error { return nil }

// haveFlock says whether tryLockFile excludes other processes.
const haveFlock = false
