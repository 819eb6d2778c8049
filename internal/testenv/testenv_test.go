package testenv

import (
	"strings"
	"testing"
)

// recorder is a T that records how the test ended instead of ending it.
type recorder struct{ skipped, failed string }

func (r *recorder) Skip(args ...any)  { r.skipped = args[0].(string) }
func (r *recorder) Fatal(args ...any) { r.failed = args[0].(string) }

func TestMissingFailsInCIAndSkipsOutside(t *testing.T) {
	t.Setenv("CI", "true")
	var ci recorder
	LookPath(&ci, "agentauthz-no-such-tool", "no-such-package")
	if ci.skipped != "" || !strings.Contains(ci.failed, "command agentauthz-no-such-tool is missing (install: apt-get install -y no-such-package); CI=true") {
		t.Errorf("under CI=true: skipped %q, failed %q; want a failure naming the tool and its package", ci.skipped, ci.failed)
	}

	t.Setenv("CI", "")
	var dev recorder
	LookPath(&dev, "agentauthz-no-such-tool", "no-such-package")
	if dev.failed != "" || !strings.HasPrefix(dev.skipped, "SKIPPED: command agentauthz-no-such-tool is missing") {
		t.Errorf("outside CI: skipped %q, failed %q; want a visible skip", dev.skipped, dev.failed)
	}
}

func TestLookPathFindsATool(t *testing.T) {
	var r recorder
	if p := LookPath(&r, "sh", "dash"); p == "" || r.skipped != "" || r.failed != "" {
		t.Errorf("LookPath(sh) = %q, skipped %q, failed %q", p, r.skipped, r.failed)
	}
}
