package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
)

// TestAuditHumanOutputEscapesControlCharacters (#15.7): request ids, hosts
// and paths come from clients and reach the log verbatim. audit who, query
// and tail print them escaped, so a record cannot drive the operator's
// terminal (clear the screen, rewrite a line with CR, reorder text with a
// bidi override) or shift the table's columns with a tab. --json output is
// escaped by encoding/json and round-trips the original bytes.
func TestAuditHumanOutputEscapesControlCharacters(t *testing.T) {
	data := t.TempDir()
	logDir := filepath.Join(data, "log")
	l, err := decisionlog.Open(decisionlog.Options{Dir: logDir, KeyDir: filepath.Join(data, "keys"), Name: "esc"})
	if err != nil {
		t.Fatal(err)
	}
	const (
		reqID = "req-\x1b[2J\x1b]0;pwned\x07\r\u202eevil"
		path  = "/v1/payments/\x1b[31mred\ttab\x00nul\u0085\\"
		host  = "api\u009b.example"
	)
	rec := &decisionlog.Record{DecisionID: "dec-1", Agent: decisionlog.Agent{ID: "payments-bot"},
		Request:  decisionlog.Request{ID: reqID, Method: "GET", Host: host, Path: path},
		Decision: decisionlog.Decision{Allowed: false, HTTPStatus: 403, Reasons: []string{"scope_missing"}}}
	if _, err := l.Append(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		var out, errOut bytes.Buffer
		if code := Run(context.Background(), append(args, "--log", logDir), nil, &out, &errOut); code != ExitOK {
			t.Fatalf("%v: exit %d\n%s%s", args, code, out.String(), errOut.String())
		}
		return out.String()
	}
	for _, args := range [][]string{
		{"audit", "who", "dec-1"},
		{"audit", "who", reqID},
		{"audit", "query"},
		{"audit", "tail"},
	} {
		out := run(args...)
		for i, r := range out {
			if r != '\n' && (r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == '\u202e') {
				t.Fatalf("%v: raw %U at byte %d:\n%q", args, r, i, out)
			}
		}
		for _, want := range []string{`/v1/payments/\x1b[31mred\x09tab\x00nul\u0085\\`} {
			if !strings.Contains(out, want) {
				t.Fatalf("%v: %q not in output:\n%s", args, want, out)
			}
		}
		if args[1] == "who" {
			for _, want := range []string{`req-\x1b[2J\x1b]0;pwned\x07\x0d\u202eevil`, `api\u009b.example`} {
				if !strings.Contains(out, want) {
					t.Fatalf("%v: %q not in output:\n%s", args, want, out)
				}
			}
		}
	}
	var got decisionlog.Record
	if err := json.Unmarshal([]byte(run("audit", "who", "dec-1", "--json")), &got); err != nil {
		t.Fatal(err)
	}
	if got.Request.ID != reqID || got.Request.Path != path || got.Request.Host != host {
		t.Fatalf("--json did not keep the bytes: %+v", got.Request)
	}
}
