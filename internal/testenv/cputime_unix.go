//go:build unix

package testenv

import (
	"syscall"
	"time"
)

// CPUTime is the user and system CPU time this process has used. The
// benchmarks report CPU per operation with it: on a shared machine the wall
// clock measures the neighbours too.
func CPUTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
