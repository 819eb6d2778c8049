//go:build unix

package loadtest

import "syscall"

// procCPUNanos is the user and system CPU time this process has used.
func procCPUNanos() int64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
