package envoy

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// quoteMarker introduces a fenced block in docs that quotes a kit file
// ("from envoy/envoy.yaml") or is a complete agentauthz configuration
// ("agentauthz config"), checked with the server's own config decoder.
var quoteMarker = regexp.MustCompile(`^<!-- (?:from (\S+)|(agentauthz config)) -->$`)

type quote struct {
	doc, file string
	line      int
	lines     []string
}

// docQuotes returns the fenced blocks of a Markdown file that follow a
// "<!-- from path -->" marker.
func docQuotes(path string) ([]quote, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []quote
	var cur *quote
	pending := ""
	inFence := false
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		l := sc.Text()
		switch {
		case cur != nil && strings.HasPrefix(l, "```"):
			out = append(out, *cur)
			cur, inFence = nil, false
		case cur != nil:
			cur.lines = append(cur.lines, l)
		case strings.HasPrefix(l, "```"):
			if pending != "" && !inFence {
				cur = &quote{doc: path, file: pending, line: n}
				pending = ""
			} else {
				inFence = !inFence
			}
		default:
			if m := quoteMarker.FindStringSubmatch(l); m != nil {
				pending = m[1] + m[2]
			} else if strings.TrimSpace(l) != "" {
				pending = ""
			}
		}
	}
	if cur != nil {
		return nil, fmt.Errorf("%s:%d: unterminated fence", path, cur.line)
	}
	return out, sc.Err()
}

// dedent removes the indentation common to all non-blank lines.
func dedent(lines []string) []string {
	min := -1
	for _, l := range lines {
		if strings.TrimSpace(l) == "" {
			continue
		}
		if n := len(l) - len(strings.TrimLeft(l, " ")); min < 0 || n < min {
			min = n
		}
	}
	out := make([]string, len(lines))
	for i, l := range lines {
		if len(l) >= min && min > 0 {
			l = l[min:]
		}
		out[i] = strings.TrimRight(l, " ")
	}
	return out
}

// containsBlock reports whether want appears as consecutive lines of have,
// up to a common indentation.
func containsBlock(have, want []string) bool {
	want = dedent(want)
	for i := 0; i+len(want) <= len(have); i++ {
		seg := dedent(have[i : i+len(want)])
		match := true
		for j := range want {
			if seg[j] != want[j] {
				match = false
				break
			}
		}
		if match {
			return true
		}
	}
	return false
}

// TestDocsQuoteTheKit keeps the snippets in docs/envoy.md and docs/istio.md
// true: each quoted block must still be in the file it names.
func TestDocsQuoteTheKit(t *testing.T) {
	total := 0
	for _, doc := range []string{"../docs/envoy.md", "../docs/istio.md"} {
		qs, err := docQuotes(doc)
		if err != nil {
			t.Fatal(err)
		}
		if len(qs) == 0 {
			t.Errorf("%s quotes no kit file", doc)
		}
		for _, q := range qs {
			total++
			if q.file == "agentauthz config" {
				raw := strings.Join(q.lines, "\n")
				if err := validServeConfig(raw); err != nil {
					t.Errorf("%s:%d: configuration: %v", q.doc, q.line, err)
				}
				// envoy.md's configuration is the sidecar layout's: Check on loopback only.
				if strings.HasSuffix(q.doc, "envoy.md") && !strings.Contains(raw, `addr: "127.0.0.1:9191"`) {
					t.Errorf("%s:%d: the sidecar layout's agentauthz must listen on 127.0.0.1:9191", q.doc, q.line)
				}
				continue
			}
			data, err := os.ReadFile(filepath.Join("..", q.file))
			if err != nil {
				t.Errorf("%s:%d: %v", q.doc, q.line, err)
				continue
			}
			if !containsBlock(strings.Split(string(data), "\n"), q.lines) {
				t.Errorf("%s:%d: block is no longer in %s:\n%s", q.doc, q.line, q.file, strings.Join(q.lines, "\n"))
			}
		}
	}
	t.Logf("%d quoted blocks checked", total)
}

func TestContainsBlock(t *testing.T) {
	have := strings.Split("a:\n  b: 1\n  c:\n    d: 2\n", "\n")
	for _, tc := range []struct {
		want string
		ok   bool
	}{
		{"b: 1\nc:\n  d: 2", true},
		{"  c:\n    d: 2", true},
		{"c:\nd: 2", false}, // indentation is meaning in YAML
		{"b: 2", false},
		{"d: 2\nb: 1", false},
	} {
		if got := containsBlock(have, strings.Split(tc.want, "\n")); got != tc.ok {
			t.Errorf("containsBlock(%q) = %v", tc.want, got)
		}
	}
}
