//go:build !linux

package decisionlog

import "os"

// datasync is a full Sync where fdatasync is not available (or, as on
// macOS, where only F_FULLFSYNC reaches stable storage).
func datasync(f *os.File) error { return f.Sync() }
