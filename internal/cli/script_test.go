package cli

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/agentauthz/agentauthz/internal/testenv"
)

// TestMain lets scripts run "agentauthz" as a real subprocess that calls Main.
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"agentauthz": func() { os.Exit(Main()) },
	})
}

// TestScript runs the CLI scripts in testdata/script/*.txtar. Each script gets
// its own $WORK, with AGENTAUTHZ_DATA_DIR=$WORK/data and a fixed operator
// name. Scripts that check results with stock tools say so with `needs`.
func TestScript(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Setup: func(env *testscript.Env) error {
			env.Setenv("AGENTAUTHZ_OPERATOR", "script-operator")
			env.Setenv("AGENTAUTHZ_DATA_DIR", env.WorkDir+"/data")
			env.Values[scriptTKey{}] = env.T()
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"certserial": cmdCertSerial,
			"needs":      cmdNeeds,
		},
	})
}

type scriptTKey struct{}

// scriptNeeds maps what a script may need to the Debian package that
// provides it (.ci/run installs each one).
var scriptNeeds = map[string]string{
	"openssl":              "openssl",
	"base64":               "coreutils",
	"python3:cryptography": "python3-cryptography",
}

// cmdNeeds checks what a script needs before it runs anything: needs
// openssl (a command) or needs python3:cryptography (a Python module; $PYTHON
// is then a python3 that has it, from PATH or Debian's /usr/bin/python3,
// where python3-cryptography installs). A missing one skips the script
// visibly, and fails it under CI=true (testenv.Missing): a script must never
// pass by not checking.
func cmdNeeds(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) == 0 {
		ts.Fatalf("usage: needs WHAT...")
	}
	t := ts.Value(scriptTKey{}).(testscript.T)
	for _, what := range args {
		pkg, ok := scriptNeeds[what]
		if !ok {
			ts.Fatalf("needs %s: unknown; add it to scriptNeeds with its Debian package", what)
		}
		cmd, module, isModule := strings.Cut(what, ":")
		if !isModule {
			if _, err := exec.LookPath(cmd); err != nil {
				testenv.Missing(t, "command "+cmd, "apt-get install -y "+pkg)
			}
			continue
		}
		found := ""
		for _, py := range []string{cmd, "/usr/bin/" + cmd} {
			if exec.Command(py, "-c", "import "+module).Run() == nil {
				found = py
				break
			}
		}
		if found == "" {
			testenv.Missing(t, cmd+" module "+module, "apt-get install -y "+pkg)
		}
		ts.Setenv("PYTHON", found)
	}
}

// cmdCertSerial sets an environment variable to the serial (lowercase hex) of
// the first certificate in a PEM file: certserial VAR FILE.
func cmdCertSerial(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: certserial VAR FILE")
	}
	blk, _ := pem.Decode([]byte(ts.ReadFile(args[1])))
	if blk == nil {
		ts.Fatalf("%s: no PEM block", args[1])
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	ts.Check(err)
	ts.Setenv(args[0], c.SerialNumber.Text(16))
}
