//go:build !unix

package decisionlog

import "os"

// lockFile takes no lock where flock(2) does not exist: the project builds
// there, but nothing stops two processes appending to one log, so run one
// serve per data directory.
func lockFile(*os.File) error { return nil }
