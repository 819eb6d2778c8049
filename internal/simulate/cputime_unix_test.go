//go:build unix

package simulate

import (
	"syscall"
	"time"
)

// cpuTime is the user and system CPU time this process has used: on a
// shared machine the wall clock measures the neighbours too.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
