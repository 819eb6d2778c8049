//go:build unix && !aix

package ca

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// tryLockFile takes an exclusive flock(2) on f without blocking; false means
// someone else holds it. flock locks belong to the open file description, so
// they are released when f is closed, including when the process dies.
func tryLockFile(f *os.File) (bool, error) { return tryFlock(f, unix.LOCK_EX) }

// tryLockFileShared takes a shared flock(2) on f without blocking: shared
// holders exclude only tryLockFile.
func tryLockFileShared(f *os.File) (bool, error) { return tryFlock(f, unix.LOCK_SH) }

func tryFlock(f *os.File, how int) (bool, error) {
	var ferr error
	err := flockCtl(f, func(fd int) {
		for {
			ferr = unix.Flock(fd, how|unix.LOCK_NB)
			if !errors.Is(ferr, unix.EINTR) {
				return
			}
		}
	})
	if err != nil {
		return false, err
	}
	switch {
	case ferr == nil:
		return true, nil
	case errors.Is(ferr, unix.EWOULDBLOCK):
		return false, nil
	default:
		return false, &os.PathError{Op: "flock", Path: f.Name(), Err: ferr}
	}
}

func unlockFile(f *os.File) error {
	var ferr error
	if err := flockCtl(f, func(fd int) { ferr = unix.Flock(fd, unix.LOCK_UN) }); err != nil {
		return err
	}
	return ferr
}

func flockCtl(f *os.File, op func(fd int)) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	return rc.Control(func(fd uintptr) { op(int(fd)) })
}

// haveFlock says whether tryLockFile excludes other processes.
const haveFlock = true
