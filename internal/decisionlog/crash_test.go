package decisionlog

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestCrashKill9 runs a real writer process under concurrent load, kills it
// with SIGKILL five times, and checks after each restart that the log
// verifies, holds every record whose Append had returned, and that every
// receipt returned verifies against a checkpoint found in the log. The
// writer uses preallocated segments, so a kill leaves the last one with
// zero padding after its records (and maybe a torn line before it, which
// the restart keeps in a side file).
func TestCrashKill9(t *testing.T) {
	if dir := os.Getenv("DECISIONLOG_CRASH_CHILD"); dir != "" {
		crashChild(dir, os.Getenv("DECISIONLOG_CRASH_KEYS"))
		return
	}
	if testing.Short() {
		t.Skip("spawns processes")
	}
	o := testOptions(t)
	o.Name = "crash" // as the child writes it
	o.SegmentMaxBytes = crashSegmentBytes
	acked := map[string]string{} // decision id → receipt
	padded, torn := 0, 0
	for round := 0; round < 5; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashKill9$")
		cmd.Env = append(os.Environ(), "DECISIONLOG_CRASH_CHILD="+o.Dir, "DECISIONLOG_CRASH_KEYS="+o.KeyDir)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		n := 0
		killed := false
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) != 3 || f[0] != "ack" {
				continue
			}
			acked[f[1]] = f[2]
			if n++; n == 300 && !killed {
				cmd.Process.Kill() // SIGKILL mid-load; keep reading what was already acknowledged
				killed = true
			}
		}
		cmd.Wait()
		if !killed {
			t.Fatalf("round %d: child exited after %d acks", round, n)
		}
		// A kill leaves the write in flight in order: any torn record is
		// what follows the last LF before the padding.
		var side string
		var tornBytes []byte
		if segs, _ := listSegments(o.Dir); len(segs) > 0 {
			last := segs[len(segs)-1]
			data, _ := os.ReadFile(filepath.Join(o.Dir, last))
			if len(data) > 0 && data[len(data)-1] == 0 {
				padded++
			}
			data = bytes.TrimRight(data, "\x00")
			if cut := bytes.LastIndexByte(data, '\n') + 1; cut < len(data) {
				side = filepath.Join(o.Dir, fmt.Sprintf("%s%s-%d", tornFilePrefix, last, cut))
				tornBytes = data[cut:]
			}
		}
		sideFiles := len(tornFiles(t, o.Dir))
		// Restart: recovery must succeed and the chain continue.
		l := mustOpen(t, o)
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		// A torn record is kept, exactly; nothing else is.
		if side != "" {
			torn++
			sideFiles++
			if got, err := os.ReadFile(side); err != nil || !bytes.Equal(got, tornBytes) {
				t.Fatalf("round %d: side file %s: %d bytes, %v; want the %d torn bytes", round, side, len(got), err, len(tornBytes))
			}
		}
		if got := tornFiles(t, o.Dir); len(got) != sideFiles {
			t.Fatalf("round %d: side files %v, want %d", round, got, sideFiles)
		}
		mustVerify(t, o)
		ks, err := LoadKeySet(o.KeyDir)
		if err != nil {
			t.Fatal(err)
		}
		_, cps, _ := logLines(t, o.Dir)
		inLogCP := map[string]bool{}
		for _, cp := range cps {
			inLogCP[string(cp)] = true
		}
		for id, rc := range acked {
			r, err := VerifyReceipt(rc, ks)
			if err != nil {
				t.Fatalf("round %d: receipt of %s: %v", round, id, err)
			}
			if !inLogCP[string(r.SignedCheckpoint())] {
				t.Fatalf("round %d: the checkpoint of %s's receipt (size %d) is not in the log", round, id, r.Checkpoint.Size)
			}
		}
		inLog := map[string]bool{}
		r := NewReader(o.Dir)
		for {
			e, err := r.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			inLog[e.Record.DecisionID] = true
		}
		r.Close()
		for id := range acked {
			if !inLog[id] {
				t.Fatalf("round %d: acknowledged decision %s is not in the log", round, id)
			}
		}
	}
	t.Logf("%d of 5 kills left the last segment with zero padding, %d a torn record", padded, torn)
	if padded == 0 {
		t.Error("no kill left a padded segment: the padded-tail recovery was not exercised")
	}
}

// crashSegmentBytes: every round crosses a segment boundary, and the next
// segment is prepared long before it is needed.
const crashSegmentBytes = 256 << 10

func crashChild(dir, keyDir string) {
	l, err := Open(Options{Dir: dir, KeyDir: keyDir, Name: "crash", SegmentMaxBytes: crashSegmentBytes})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		os.Exit(3)
	}
	for deadline := time.Now().Add(30 * time.Second); !l.prep.isReady() && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond) // start in a preallocated segment
	}
	pid := os.Getpid()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				r := sampleRecord(i)
				r.DecisionID = fmt.Sprintf("p%d-w%d-%d", pid, w, i)
				rc, err := l.Append(context.Background(), r)
				if err != nil {
					fmt.Fprintln(os.Stderr, "child append:", err)
					os.Exit(4)
				}
				mu.Lock()
				fmt.Fprintf(os.Stdout, "ack %s %s\n", r.DecisionID, rc.Header) // unbuffered: printed means acknowledged
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
}

func tornFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, tornFilePrefix+"*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}
