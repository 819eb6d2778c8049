//go:build !unix

package loadtest

// procCPUNanos is 0 where getrusage(2) does not exist: reports then show no
// CPU per check.
func procCPUNanos() int64 { return 0 }
