// Package testenv is what tests share about the machine they run on: a test
// whose tool is missing skips visibly on a developer's machine and fails
// under CI=true, where .ci/run installs every tool, because a skipped check
// has checked nothing.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
)

// T is the part of testing.TB (and of testscript's T) that Missing uses.
type T interface {
	Skip(args ...any)
	Fatal(args ...any)
}

// helper marks the caller as a test helper where t supports it.
func helper(t T) {
	if h, ok := t.(interface{ Helper() }); ok {
		h.Helper()
	}
}

// InCI reports whether the tests run in CI (CI=true, as .ci/run sets).
func InCI() bool { return os.Getenv("CI") == "true" }

// Missing ends the test because something it needs is absent: a failure in
// CI, a skip naming what is missing and how to install it elsewhere.
func Missing(t T, what, install string) {
	helper(t)
	msg := fmt.Sprintf("%s is missing (install: %s)", what, install)
	if InCI() {
		t.Fatal(msg + "; CI=true, so this is a failure, not a skip: .ci/run must install it")
		return
	}
	t.Skip("SKIPPED: " + msg)
}

// LookPath returns the path of the command name, or ends the test through
// Missing with the Debian package that provides it.
func LookPath(t T, name, debianPackage string) string {
	helper(t)
	p, err := exec.LookPath(name)
	if err != nil {
		Missing(t, "command "+name, "apt-get install -y "+debianPackage)
	}
	return p
}

// SkipAllocsUnderRace skips a test that counts allocations when the race
// detector is on: it adds allocations of its own, and sync.Pool drops items
// at random under it, so the counts say nothing about a normal build.
func SkipAllocsUnderRace(t T) {
	helper(t)
	if Race {
		t.Skip("allocation counts are not meaningful under the race detector; the test runs in make test")
	}
}
