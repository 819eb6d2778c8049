package crash

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/test/process"
)

// TestCrashKill9 drives concurrent Check load against a real serve
// process, kills it with SIGKILL after a random short time, restarts it
// and checks that the log verifies and holds every decision id a client
// got an answer for, and that every receipt an upstream got verifies
// against a checkpoint found in the log after the restart. The load starts
// once the writer has a preallocated segment ready, so every kill leaves
// the last segment with zero padding after its records, which the restart
// must recover. Five cycles by
// default (a few seconds); AGENTAUTHZ_CRASH_LONG=1 runs 25 cycles with
// longer load.
func TestCrashKill9(t *testing.T) {
	bin := binary(t)
	cycles, minLoad, maxLoad := 5, 100*time.Millisecond, 600*time.Millisecond
	if os.Getenv("AGENTAUTHZ_CRASH_LONG") == "1" {
		cycles, minLoad, maxLoad = 25, time.Second, 5*time.Second
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	data := t.TempDir()
	acked := map[string]bool{}
	receipts := map[string]string{}
	for cycle := 0; cycle < cycles; cycle++ {
		p := process.Start(t, process.Options{Binary: bin, DataDir: data})
		// The restart recovered the log: it verifies, lost nothing, and
		// every receipt handed out verifies against a checkpoint in it.
		records := verifyLog(t, data, acked)
		verifyReceipts(t, data, receipts)
		waitPreparedSegment(t, data)
		var answered atomic.Int64
		stop := loadUntil(t, p, 8, &answered)
		waitCount(t, &answered, 20, p)
		time.Sleep(minLoad + time.Duration(rng.Int64N(int64(maxLoad-minLoad))))
		p.Kill()
		res := stop()
		for _, id := range res.Acked {
			acked[id] = true
		}
		for id, rc := range res.Receipts {
			receipts[id] = rc
		}
		if !lastSegmentPadded(t, data) {
			t.Errorf("cycle %d: the killed writer's last segment has no zero padding", cycle)
		}
		t.Logf("cycle %d: %d records at start, %d answered (%d allowed, %d denied), %d errors after kill -9",
			cycle, records, len(res.Acked), res.Allowed, res.Denied, res.Errors)
		if res.Allowed == 0 || res.Denied == 0 {
			t.Fatalf("cycle %d: the load must mix allowed and denied decisions", cycle)
		}
	}
	// A last restart recovers; a clean stop; then the auditor's checks.
	p := process.Start(t, process.Options{Binary: bin, DataDir: data})
	p.Signal(syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(context.Background(), process.StartTimeout)
	defer cancel()
	if err := p.Wait(ctx); err != nil {
		t.Fatalf("clean stop after recovery: %v", err)
	}
	n := verifyLog(t, data, acked)
	verifyReceipts(t, data, receipts)
	auditVerify(t, bin, data)
	t.Logf("%d cycles: %d acknowledged decisions, all among %d records; %d receipts verified against checkpoints in the log", cycles, len(acked), n, len(receipts))
}

// waitPreparedSegment waits until serve has a zero-filled segment ready
// (<log>/.next-segment), which the first batch then takes.
func waitPreparedSegment(t *testing.T, dataDir string) {
	t.Helper()
	deadline := time.Now().Add(process.StartTimeout)
	for {
		if _, err := os.Stat(filepath.Join(dataDir, "log", ".next-segment")); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("serve prepared no segment")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// lastSegmentPadded reports whether the newest segment ends in NUL bytes.
func lastSegmentPadded(t *testing.T, dataDir string) bool {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dataDir, "log", "[0-9]*.log"))
	if err != nil || len(names) == 0 {
		t.Fatalf("segments: %v %v", names, err)
	}
	sort.Strings(names)
	data, err := os.ReadFile(names[len(names)-1])
	if err != nil {
		t.Fatal(err)
	}
	return len(data) > 0 && data[len(data)-1] == 0
}
