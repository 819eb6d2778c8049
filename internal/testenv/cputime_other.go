//go:build !unix

package testenv

import "time"

// CPUTime is 0 where getrusage(2) does not exist: the benchmarks then report
// no CPU per operation.
func CPUTime() time.Duration { return 0 }
