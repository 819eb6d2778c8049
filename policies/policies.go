// Package policies carries the shipped policy (the .rego and data files of
// this directory) inside the binary, so that `agentauthz demo` and
// `agentauthz serve --dev` work from any directory, as after `go install`.
package policies

import (
	"embed"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

//go:embed *.rego *.json
var files embed.FS

// Embedded names the built-in policy where a start message says which
// policy is in use.
const Embedded = "built-in (the shipped policies/ compiled into this binary)"

// FS is the shipped policy: its .rego files (tests included) and data.json.
func FS() fs.FS { return files }

// WriteTo writes the shipped policy, without its tests, into dir (created
// 0700 if missing) for the policy engine, which loads and watches a directory.
func WriteTo(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	entries, err := files.ReadDir(".")
	if err != nil {
		return err
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), "_test.rego") {
			continue
		}
		data, err := files.ReadFile(e.Name())
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), data, 0o600); err != nil {
			return fmt.Errorf("built-in policies: %w", err)
		}
	}
	return nil
}
