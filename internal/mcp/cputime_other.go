//go:build !unix

package mcp

import "time"

// CPUTime is 0 where getrusage(2) does not exist: the benchmarks that use it
// then report no CPU per operation.
func CPUTime() time.Duration { return 0 }
