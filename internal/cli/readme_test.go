package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// readmeCommands returns every `agentauthz …` line of the README's sh blocks,
// split into arguments, with continuation lines joined.
func readmeCommands(t *testing.T) [][]string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var out [][]string
	for _, block := range regexp.MustCompile("(?s)```sh[^\n]*\n(.*?)```").FindAllStringSubmatch(string(data), -1) {
		text := strings.ReplaceAll(block[1], "\\\n", " ")
		for _, line := range strings.Split(text, "\n") {
			if i := strings.Index(line, "#"); i >= 0 {
				line = line[:i]
			}
			args := shellSplit(strings.TrimSpace(line))
			if len(args) > 1 && (args[0] == "agentauthz" || args[0] == "bin/agentauthz") {
				out = append(out, args[1:])
			}
		}
	}
	if len(out) < 10 {
		t.Fatalf("found only %d agentauthz commands in README.md", len(out))
	}
	return out
}

func shellSplit(s string) []string {
	var args []string
	var cur strings.Builder
	inQuote, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote, have = !inQuote, true
		case r == ' ' && !inQuote:
			if have {
				args = append(args, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		args = append(args, cur.String())
	}
	return args
}

// TestREADMECommandsParse: every command and flag the README shows exists.
func TestREADMECommandsParse(t *testing.T) {
	for _, args := range readmeCommands(t) {
		root := newRoot()
		cmd, rest, err := root.Find(args)
		if err != nil || cmd == root {
			t.Errorf("README: agentauthz %s: unknown command (%v)", strings.Join(args, " "), err)
			continue
		}
		if err := cmd.ParseFlags(rest); err != nil {
			t.Errorf("README: agentauthz %s: %v", strings.Join(args, " "), err)
		}
	}
}

// TestREADMECertificateLifecycle runs the README's certificate commands as
// written, in order, in an empty data directory.
func TestREADMECertificateLifecycle(t *testing.T) {
	commands := readmeCommands(t)
	dir := t.TempDir()
	t.Chdir(dir)
	t.Setenv("AGENTAUTHZ_DATA_DIR", filepath.Join(dir, "data"))
	ran := 0
	for _, args := range commands {
		// A command with its own --data-dir (the quick start's, next to
		// `make run`) is not about this test's inventory.
		if args[0] != "ca" && args[0] != "agent" || args[1] == "serve" || slices.Contains(args, "--data-dir") {
			continue
		}
		var out, errOut bytes.Buffer
		if code := Run(context.Background(), args, nil, &out, &errOut); code != ExitOK {
			t.Fatalf("agentauthz %s: exit %d\n%s%s", strings.Join(args, " "), code, out.String(), errOut.String())
		}
		ran++
	}
	if ran < 5 {
		t.Fatalf("ran %d certificate commands from the README", ran)
	}
	if _, err := os.Stat(filepath.Join(dir, "acme.crl")); err != nil {
		t.Errorf("ca crl --out acme.crl: %v", err)
	}
}

// TestREADMEListsEveryCommand: every command a user can run appears in the
// README as `agentauthz <command path>`, and every documented make target in
// its table, so a new command or target cannot go unmentioned.
func TestREADMEListsEveryCommand(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	readme := string(data)
	var walk func(c *cobra.Command)
	n := 0
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if sub.Hidden || sub.Name() == "help" || sub.Name() == "completion" {
				continue
			}
			if sub.Runnable() {
				n++
				path := strings.TrimPrefix(sub.CommandPath(), "agentauthz ")
				if !strings.Contains(readme, "agentauthz "+path) {
					t.Errorf("README.md does not show agentauthz %s", path)
				}
			}
			walk(sub)
		}
	}
	walk(newRoot())
	if n < 20 {
		t.Fatalf("walked only %d commands", n)
	}
	mk, err := os.ReadFile(filepath.Join("..", "..", "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	targets := regexp.MustCompile(`(?m)^([a-z-]+):.*## `).FindAllStringSubmatch(string(mk), -1)
	if len(targets) < 10 {
		t.Fatalf("found %d make targets", len(targets))
	}
	for _, m := range targets {
		if !strings.Contains(readme, "`"+m[1]+"`") {
			t.Errorf("README.md's make targets lack `%s`", m[1])
		}
	}
}
