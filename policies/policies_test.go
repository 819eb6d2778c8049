package policies

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// The embedded copy is this directory's policy, byte for byte, without the
// tests: what `opa test policies` checks is what demo and serve --dev serve.
func TestWriteToIsTheShippedPolicy(t *testing.T) {
	dir := t.TempDir()
	if err := WriteTo(dir); err != nil {
		t.Fatal(err)
	}
	want, _ := filepath.Glob("*.rego")
	json, _ := filepath.Glob("*.json")
	want = append(want, json...)
	n := 0
	for _, name := range want {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if filepath.Ext(name) == ".rego" && len(name) > len("_test.rego") && name[len(name)-len("_test.rego"):] == "_test.rego" {
			if err == nil {
				t.Errorf("%s: a test file was written", name)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, src) {
			t.Errorf("%s differs from the shipped file", name)
		}
		n++
	}
	if n < 2 {
		t.Fatalf("wrote %d policy files, want authz.rego and data.json at least", n)
	}
}
