package policy

import (
	"context"
	"testing"

	"github.com/open-policy-agent/opa/v1/cover"
	"github.com/open-policy-agent/opa/v1/loader"
	"github.com/open-policy-agent/opa/v1/tester"
)

// shippedPolicies is the repository's policies/ directory.
const shippedPolicies = "../../policies"

// TestShippedPolicyTests runs policies/*_test.rego through OPA's tester, as
// `opa test policies` does, so `go test ./...` covers the policy too. An empty
// test set fails, and so does line coverage under 90 %.
func TestShippedPolicyTests(t *testing.T) {
	res, err := loader.NewFileLoader().All([]string{shippedPolicies})
	if err != nil {
		t.Fatal(err)
	}
	store, err := res.Store()
	if err != nil {
		t.Fatal(err)
	}
	modules := res.ParsedModules()
	cov := cover.New()
	ch, err := tester.NewRunner().SetStore(store).SetCoverageQueryTracer(cov).SetModules(modules).RunTests(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ran := 0
	for r := range ch {
		ran++
		switch {
		case r.Error != nil:
			t.Errorf("%s.%s: error: %v", r.Package, r.Name, r.Error)
		case r.Fail:
			t.Errorf("%s.%s: FAIL", r.Package, r.Name)
		case r.Skip:
			t.Logf("%s.%s: skipped", r.Package, r.Name)
		}
	}
	if ran == 0 {
		t.Fatal("no policy tests ran")
	}
	t.Logf("%d policy tests ran", ran)
	report := cov.Report(modules)
	if report.Coverage < 90 {
		for file, fr := range report.Files {
			t.Logf("%s: %.1f%% not covered: %v", file, fr.Coverage, fr.NotCovered)
		}
		t.Errorf("policy line coverage %.1f%%, want at least 90%%", report.Coverage)
	}
}
