// Package docs runs the documentation: every command block of README.md and
// docs/*.md marked runnable (```sh {runnable}) is run as written, on the
// built binary, in an empty directory, so the docs cannot drift from the code.
package docs

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/test/process"
)

// runnableRE matches a fenced block whose info string marks it runnable.
var runnableRE = regexp.MustCompile("(?ms)^```sh \\{runnable\\}\n(.*?)^```")

type block struct {
	file, text string
	line       int
}

func runnableBlocks(t *testing.T, root string) []block {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	files = append([]string{filepath.Join(root, "README.md")}, files...)
	var out []block
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range runnableRE.FindAllSubmatchIndex(data, -1) {
			rel, _ := filepath.Rel(root, f)
			out = append(out, block{file: rel, text: string(data[m[2]:m[3]]), line: 1 + strings.Count(string(data[:m[0]]), "\n")})
		}
	}
	return out
}

func TestRunnableDocBlocks(t *testing.T) {
	root, err := process.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	blocks := runnableBlocks(t, root)
	inReadme := 0
	for _, b := range blocks {
		if b.file == "README.md" {
			inReadme++
		}
	}
	if inReadme < 2 {
		t.Fatalf("README.md has %d runnable blocks, want the demo and the certificate commands at least", inReadme)
	}
	bin, err := process.Build(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range blocks {
		t.Run(strings.ReplaceAll(b.file, "/", "_")+":"+itoa(b.line), func(t *testing.T) {
			dir := t.TempDir()
			// Both spellings the docs use work: agentauthz on PATH, and
			// bin/agentauthz as after make build.
			if err := os.Mkdir(filepath.Join(dir, "bin"), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(bin, filepath.Join(dir, "bin", "agentauthz")); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", b.text)
			cmd.Dir = dir
			cmd.Env = append(os.Environ(), "PATH="+filepath.Join(dir, "bin")+string(os.PathListSeparator)+os.Getenv("PATH"))
			cmd.Env = append(cmd.Env, "AGENTAUTHZ_DATA_DIR=") // the documented default, .agentauthz
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%s line %d: %v\n--- block\n%s--- output\n%s", b.file, b.line, err, b.text, out)
			}
		})
	}
}

// The repository cites only itself: the design lives in docs/design.md.
func TestNoCitationsOutsideTheRepository(t *testing.T) {
	root, err := process.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	bad := regexp.MustCompile(`DESIGN\.md|\.\./shared|/work/shared`)
	err = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "bin" || d.Name() == ".agentauthz" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if d.IsDir() || !(strings.HasSuffix(p, ".go") || strings.HasSuffix(p, ".md") || strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".rego")) {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if p == filepath.Join(root, "test", "docs", "docs_test.go") {
			return nil
		}
		if loc := bad.FindIndex(data); loc != nil {
			t.Errorf("%s:%d cites %q outside the repository; cite docs/design.md", p, 1+strings.Count(string(data[:loc[0]]), "\n"), data[loc[0]:loc[1]])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
