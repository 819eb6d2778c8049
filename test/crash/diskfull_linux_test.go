package crash

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sort"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/agentauthz/agentauthz/test/process"
)

// setFileSizeLimit sets RLIMIT_FSIZE of another process (prlimit(2)): a
// write past the limit fails with EFBIG, which is what a full disk looks
// like to the writer. Go ignores SIGXFSZ unless asked for it, so the
// process lives on.
// Only the soft limit moves: raising a hard limit again needs
// CAP_SYS_RESOURCE, which containers often drop.
func setFileSizeLimit(pid int, limit uint64) error {
	var old struct{ Cur, Max uint64 }
	_, _, errno := syscall.RawSyscall6(syscall.SYS_PRLIMIT64, uintptr(pid), uintptr(syscall.RLIMIT_FSIZE),
		0, uintptr(unsafe.Pointer(&old)), 0, 0)
	if errno != 0 {
		return errno
	}
	lim := struct{ Cur, Max uint64 }{min(limit, old.Max), old.Max}
	_, _, errno = syscall.RawSyscall6(syscall.SYS_PRLIMIT64, uintptr(pid), uintptr(syscall.RLIMIT_FSIZE),
		uintptr(unsafe.Pointer(&lim)), 0, 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// lastSegmentData is the length of the records in the newest segment of
// the log: its size, or where its zero padding starts when it was
// preallocated (the writer overwrites zeros in place, so a file size limit
// must sit at the end of the records, not of the file).
func lastSegmentData(t *testing.T, logDir string) int64 {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(logDir, "[0-9]*.log"))
	if err != nil || len(names) == 0 {
		t.Fatalf("segments: %v %v", names, err)
	}
	sort.Strings(names)
	data, err := os.ReadFile(names[len(names)-1])
	if err != nil {
		t.Fatal(err)
	}
	return int64(len(bytes.TrimRight(data, "\x00")))
}

// TestDiskFullThenRecovers: a real serve process whose writes start
// failing with EFBIG (RLIMIT_FSIZE just past the records of its segment;
// the limit applies to the write offset, also inside a preallocated file)
// denies every Check with decision_log_unavailable and reports not ready;
// when space is back it recovers by itself, and the log verifies with
// every answered decision in it.
func TestDiskFullThenRecovers(t *testing.T) {
	bin := binary(t)
	data := t.TempDir()
	p := process.Start(t, process.Options{Binary: bin, DataDir: data})
	var answered atomic.Int64
	stop := loadUntil(t, p, 4, &answered)
	waitCount(t, &answered, 50, p)
	res := stop()
	acked := map[string]bool{}
	for _, id := range res.Acked {
		acked[id] = true
	}

	limit := uint64(lastSegmentData(t, filepath.Join(data, "log"))) + 1
	if err := setFileSizeLimit(p.Cmd.Process.Pid, limit); err != nil {
		t.Skipf("prlimit(RLIMIT_FSIZE) not permitted here: %v", err)
	}
	client := p.Client(t)
	reqs := devRequests(t, p)
	deniedFull := 0
	for i := 0; i < 20; i++ {
		resp, err := client.Check(context.Background(), reqs[i%2]) // both allowed when the log works
		if err != nil {
			t.Fatalf("Check on a full disk: %v", err)
		}
		md := resp.GetDynamicMetadata().GetFields()
		switch r := md["reason"].GetStringValue(); r {
		case "decision_log_unavailable":
			deniedFull++
		case "allowed":
			// A group-commit batch that fits under the limit; recorded.
			acked[md["decision_id"].GetStringValue()] = true
		default:
			t.Fatalf("full disk: reason %s", r)
		}
	}
	if deniedFull == 0 {
		t.Fatal("no Check was denied with decision_log_unavailable while writes failed")
	}
	if code := readyz(t, p); code != 503 {
		t.Errorf("/readyz on a full disk: %d, want 503", code)
	}
	if p.Exited() {
		t.Fatal("the process died on EFBIG")
	}

	if err := setFileSizeLimit(p.Cmd.Process.Pid, ^uint64(0)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(process.StartTimeout)
	for {
		resp, err := client.Check(context.Background(), reqs[0])
		if err != nil {
			t.Fatal(err)
		}
		md := resp.GetDynamicMetadata().GetFields()
		if md["reason"].GetStringValue() == "allowed" {
			acked[md["decision_id"].GetStringValue()] = true
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no recovery after space came back")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := p.WaitReady(process.StartTimeout); err != nil {
		t.Fatal(err)
	}
	p.Signal(syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(context.Background(), process.StartTimeout)
	defer cancel()
	if err := p.Wait(ctx); err != nil {
		t.Fatalf("stop: %v", err)
	}
	n := verifyLog(t, data, acked)
	t.Logf("%d denied while full; %d acknowledged decisions all among %d records", deniedFull, len(acked), n)
}
