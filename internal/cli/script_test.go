package cli

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

// TestMain lets scripts run "agentauthz" as a real subprocess that calls Main.
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"agentauthz": func() { os.Exit(Main()) },
	})
}

// TestScript runs the CLI scripts in testdata/script/*.txtar. Each script gets
// its own $WORK, with AGENTAUTHZ_DATA_DIR=$WORK/data and a fixed operator
// name. Scripts that check results with stock openssl guard on [exec:openssl].
func TestScript(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Setup: func(env *testscript.Env) error {
			env.Setenv("AGENTAUTHZ_OPERATOR", "script-operator")
			env.Setenv("AGENTAUTHZ_DATA_DIR", env.WorkDir+"/data")
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"certserial": cmdCertSerial,
		},
	})
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
