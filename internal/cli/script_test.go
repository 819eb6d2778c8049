package cli

import (
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
	})
}
