// Command vulngate reads `govulncheck -format json` on stdin and fails when
// the code calls a vulnerable symbol that tools/vulncheck-accepted.txt does
// not list with a reason. Every finding is printed either way, so an
// accepted one stays visible in each CI run.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

type frame struct {
	Module   string `json:"module"`
	Version  string `json:"version"`
	Package  string `json:"package"`
	Function string `json:"function"`
}

type message struct {
	Finding *struct {
		OSV          string  `json:"osv"`
		FixedVersion string  `json:"fixed_version"`
		Trace        []frame `json:"trace"`
	} `json:"finding"`
}

func main() {
	accepted := flag.String("accepted", "vulncheck-accepted.txt", "file of accepted OSV IDs, one per line with a reason")
	flag.Parse()
	if err := run(os.Stdin, os.Stdout, *accepted); err != nil {
		fmt.Fprintln(os.Stderr, "vulngate:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer, acceptedFile string) error {
	ok, err := readAccepted(acceptedFile)
	if err != nil {
		return err
	}
	called := map[string]string{} // OSV ID -> where
	dec := json.NewDecoder(bufio.NewReader(in))
	for {
		var m message
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return fmt.Errorf("reading govulncheck output: %w", err)
		}
		f := m.Finding
		if f == nil || len(f.Trace) == 0 || f.Trace[0].Function == "" {
			continue // imported or required, not called
		}
		t := f.Trace[0]
		called[f.OSV] = fmt.Sprintf("%s@%s %s.%s (fixed in %s)", t.Module, t.Version, t.Package, t.Function, f.FixedVersion)
	}
	ids := make([]string, 0, len(called))
	for id := range called {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var fail []string
	for _, id := range ids {
		if reason, acc := ok[id]; acc {
			fmt.Fprintf(out, "accepted %s: %s — %s\n", id, called[id], reason)
			continue
		}
		fmt.Fprintf(out, "VULNERABLE %s: %s\n", id, called[id])
		fail = append(fail, id)
	}
	for id := range ok {
		if _, still := called[id]; !still {
			fmt.Fprintf(out, "note: %s is accepted but no longer found; remove it from %s\n", id, acceptedFile)
		}
	}
	if len(fail) > 0 {
		return fmt.Errorf("%d called vulnerabilities not accepted: %s", len(fail), strings.Join(fail, " "))
	}
	fmt.Fprintf(out, "vulngate: %d called vulnerabilities, all accepted with a reason\n", len(ids))
	return nil
}

// readAccepted reads "ID reason..." lines; # starts a comment. An entry
// without a reason is an error.
func readAccepted(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	ok := map[string]string{}
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		id, reason, _ := strings.Cut(line, " ")
		if strings.TrimSpace(reason) == "" {
			return nil, fmt.Errorf("%s:%d: %s has no reason", path, i+1, id)
		}
		ok[id] = strings.TrimSpace(reason)
	}
	return ok, nil
}
