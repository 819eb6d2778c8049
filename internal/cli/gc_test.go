package cli

import (
	"math"
	"runtime/debug"
	"testing"
)

// tuneGC applies the documented defaults (docs/configuration.md,
// "Environment") only where GOGC / GOMEMLIMIT are not set.
func TestTuneGCDefaultsAndEnvironment(t *testing.T) {
	startPercent := debug.SetGCPercent(100)
	startLimit := debug.SetMemoryLimit(math.MaxInt64)
	t.Cleanup(func() {
		debug.SetGCPercent(startPercent)
		debug.SetMemoryLimit(startLimit)
	})

	t.Setenv("GOGC", "")
	t.Setenv("GOMEMLIMIT", "")
	tuneGC()
	if got := debug.SetGCPercent(100); got != serveGCPercent {
		t.Errorf("GC percent %d without GOGC, want %d", got, serveGCPercent)
	}
	if got := debug.SetMemoryLimit(math.MaxInt64); got != serveMemoryGoal {
		t.Errorf("memory limit %d without GOMEMLIMIT, want %d", got, serveMemoryGoal)
	}

	t.Setenv("GOGC", "150")
	t.Setenv("GOMEMLIMIT", "1GiB")
	tuneGC()
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("GC percent changed to %d although GOGC is set", got)
	}
	if got := debug.SetMemoryLimit(-1); got != math.MaxInt64 {
		t.Errorf("memory limit changed to %d although GOMEMLIMIT is set", got)
	}
}
