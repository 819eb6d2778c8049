package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
)

// TestAuditOnLivePaddedLog runs the auditor commands against a log that is
// open for writing: its segment is preallocated (zeros written ahead, the
// file does not grow), and verify, query, who and tail stop at the
// padding; tail -f finds new records by content.
func TestAuditOnLivePaddedLog(t *testing.T) {
	data := t.TempDir()
	logDir := filepath.Join(data, "log")
	l, err := decisionlog.Open(decisionlog.Options{Dir: logDir, KeyDir: filepath.Join(data, "keys"), Name: "live", SegmentMaxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for deadline := time.Now().Add(30 * time.Second); ; {
		if _, err := os.Stat(filepath.Join(logDir, ".next-segment")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no segment was prepared")
		}
		time.Sleep(5 * time.Millisecond)
	}
	add := func(from, to int) {
		for i := from; i <= to; i++ {
			rec := &decisionlog.Record{DecisionID: fmt.Sprintf("live-%d", i), Agent: decisionlog.Agent{ID: "payments-bot"},
				Request:  decisionlog.Request{ID: fmt.Sprintf("req-%d", i), Method: "GET", Path: "/x"},
				Decision: decisionlog.Decision{Allowed: true, HTTPStatus: 200}}
			if _, err := l.Append(context.Background(), rec); err != nil {
				t.Fatal(err)
			}
		}
	}
	add(1, 5)
	seg, err := os.ReadFile(filepath.Join(logDir, "00000000000000000000.log"))
	if err != nil {
		t.Fatal(err)
	}
	if len(seg) != 1<<20 || seg[len(seg)-1] != 0 {
		t.Fatalf("live segment: %d bytes, want 1 MiB ending in zero padding", len(seg))
	}

	run := func(args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := Run(context.Background(), args, nil, &out, &errOut)
		return code, out.String(), errOut.String()
	}
	if code, out, errOut := run("audit", "verify", "--log", logDir); code != ExitOK || !strings.HasPrefix(out, "ok: 5 records, 5 checkpoints, 1 segments") {
		t.Fatalf("verify: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut := run("audit", "query", "--log", logDir, "--json"); code != ExitOK || strings.Count(out, "\n") != 5 || errOut != "" {
		t.Fatalf("query: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut := run("audit", "who", "live-5", "--log", logDir); code != ExitOK || !strings.Contains(out, "index 4 of log live") {
		t.Fatalf("who: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut := run("audit", "tail", "-n", "2", "--log", logDir, "--json"); code != ExitOK ||
		strings.Count(out, "\n") != 2 || !strings.Contains(out, `"live-4"`) || !strings.Contains(out, `"live-5"`) {
		t.Fatalf("tail: exit %d\n%s%s", code, out, errOut)
	}

	// tail -f: the file size does not change, the records appear.
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- Run(ctx, []string{"audit", "tail", "-f", "-n", "1", "--poll", "10ms", "--log", logDir, "--json"}, nil, &out, &errOut)
	}()
	waitFor := func(id string) {
		for deadline := time.Now().Add(10 * time.Second); !strings.Contains(out.String(), `"`+id+`"`); {
			if time.Now().After(deadline) {
				cancel()
				t.Fatalf("tail -f did not print %s:\n%s%s", id, out.String(), errOut.String())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor("live-5")
	add(6, 8)
	waitFor("live-8")
	cancel()
	if code := <-done; code != ExitOK {
		t.Fatalf("tail -f: exit %d\n%s", code, errOut.String())
	}
	got := out.String()
	if strings.Count(got, "\n") != 4 || !strings.Contains(got, `"live-5"`) || !strings.Contains(got, `"live-6"`) || errOut.String() != "" {
		t.Fatalf("tail -f printed:\n%s%s", got, errOut.String())
	}
	if fi, _ := os.Stat(filepath.Join(logDir, "00000000000000000000.log")); fi.Size() != 1<<20 {
		t.Fatalf("segment size changed to %d while live", fi.Size())
	}
}
