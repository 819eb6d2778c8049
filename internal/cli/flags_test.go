package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"runtime"
	"strings"
	"testing"
)

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Run(context.Background(), args, nil, &out, &errOut)
	return code, out.String(), errOut.String()
}

// A wrong flag says how to get help, and names a close flag.
func TestUnknownFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"check", "--crt", "a.pem"}, "agentauthz: error: unknown flag: --crt (did you mean --cert?)\nagentauthz: hint: see agentauthz check --help\n"},
		{[]string{"audit", "verify", "--pubky", "k"}, "agentauthz: error: unknown flag: --pubky (did you mean --pubkey?)\nagentauthz: hint: see agentauthz audit verify --help\n"},
		{[]string{"check", "--zzzz"}, "agentauthz: error: unknown flag: --zzzz\nagentauthz: hint: see agentauthz check --help\n"},
		{[]string{"-x"}, "agentauthz: error: unknown shorthand flag: 'x' in -x\nagentauthz: hint: see agentauthz --help\n"},
	} {
		code, _, stderr := run(t, tc.args...)
		if code != ExitError || stderr != tc.want {
			t.Errorf("%v: exit %d, stderr\n%s\nwant exit 2 and\n%s", tc.args, code, stderr, tc.want)
		}
	}
}

// --help lists booleans as "-h, --help", never "--help[=true|false]", and
// booleans still parse with and without a value.
func TestHelpShowsPlainBooleans(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"check", "--help"}, {"serve", "--help"}, {"audit", "verify", "--help"}} {
		code, stdout, _ := run(t, args...)
		if code != ExitOK {
			t.Fatalf("%v: exit %d", args, code)
		}
		if strings.Contains(stdout, "[=true|false]") {
			t.Errorf("%v help shows [=true|false]:\n%s", args, stdout)
		}
		if !strings.Contains(stdout, "  -h, --help ") {
			t.Errorf("%v help lacks \"-h, --help\":\n%s", args, stdout)
		}
	}
	if code, stdout, stderr := run(t, "version", "--json=true"); code != ExitOK || !strings.Contains(stdout, `"go"`) {
		t.Errorf("version --json=true: exit %d %s %s", code, stdout, stderr)
	}
	if code, stdout, _ := run(t, "version", "--json=false"); code != ExitOK || !strings.HasPrefix(stdout, "agentauthz ") {
		t.Errorf("version --json=false: exit %d %s", code, stdout)
	}
}

// version and --version report the same build information: Go's and OPA's
// versions from the binary itself.
func TestVersion(t *testing.T) {
	code, stdout, _ := run(t, "version", "--json")
	if code != ExitOK {
		t.Fatalf("version --json: exit %d", code)
	}
	var v versionInfo
	if err := json.Unmarshal([]byte(stdout), &v); err != nil {
		t.Fatalf("version --json: %v\n%s", err, stdout)
	}
	if v.Go != runtime.Version() || !strings.HasPrefix(v.OPA, "v1.") || v.Version == "" {
		t.Errorf("version = %+v; want go %s and an OPA v1 version", v, runtime.Version())
	}
	_, text, _ := run(t, "version")
	_, flag, _ := run(t, "--version")
	if text != flag || !strings.Contains(text, "opa:         "+v.OPA+"\n") || !strings.Contains(text, "go:          "+v.Go) {
		t.Errorf("version:\n%s\n--version:\n%s", text, flag)
	}
}
