//go:build unix

package mcp

import (
	"syscall"
	"time"
)

// CPUTime is the CPU time (user and system) this process has used. The
// benchmarks report CPU per operation with it: on a shared machine the
// wall clock measures the neighbours too.
func CPUTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
