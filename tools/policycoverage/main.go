// Command policycoverage checks the line coverage reported by
// `opa test --coverage --format=json` (read from stdin) against a minimum,
// so `make policy-test` fails when policy tests stop covering the policy.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
)

func main() {
	if err := run(os.Stdin, os.Stdout, os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "coverage: error: %v\n", err)
		os.Exit(1)
	}
}

// report is the part of OPA's coverage report we read.
type report struct {
	Coverage *float64 `json:"coverage"`
	Files    map[string]struct {
		Coverage float64 `json:"coverage"`
	} `json:"files"`
}

func run(in io.Reader, out io.Writer, args []string) error {
	fs := flag.NewFlagSet("coverage", flag.ContinueOnError)
	min := fs.Float64("min", 90, "minimum line coverage in percent")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var r report
	dec := json.NewDecoder(io.LimitReader(in, 64<<20))
	if err := dec.Decode(&r); err != nil {
		return fmt.Errorf("read opa coverage report: %w", err)
	}
	if r.Coverage == nil || len(r.Files) == 0 {
		return fmt.Errorf("coverage report has no coverage figure or no files (did any test run?)")
	}
	fmt.Fprintf(out, "policy line coverage %.1f%% (minimum %.1f%%)\n", *r.Coverage, *min)
	if *r.Coverage < *min {
		return fmt.Errorf("policy line coverage %.1f%% is below %.1f%%", *r.Coverage, *min)
	}
	return nil
}
