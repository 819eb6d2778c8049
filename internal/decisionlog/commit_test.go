package decisionlog

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// commitVariants are the sync-mode commit paths under test.
var commitVariants = []struct {
	name string
	set  func(*Options)
}{
	{"writer", func(*Options) {}},
	{"leader", func(o *Options) { o.leader = true }},
	{"window", func(o *Options) { o.commitWindow = 300 * time.Microsecond }},
}

// Concurrent appenders across several segments: every record gets its own
// index, every receipt verifies, and the log verifies.
func TestCommitConcurrentAppenders(t *testing.T) {
	for _, v := range commitVariants {
		t.Run(v.name, func(t *testing.T) {
			o := testOptions(t)
			o.SegmentMaxBytes = 16 << 10
			v.set(&o)
			l := mustOpen(t, o)
			const workers, each = 32, 40
			rcs := make([][]Receipt, workers)
			var wg sync.WaitGroup
			for w := range workers {
				wg.Go(func() {
					for i := range each {
						rc, err := l.Append(context.Background(), sampleRecord(w*each+i))
						if err != nil {
							t.Error(err)
							return
						}
						rcs[w] = append(rcs[w], rc)
					}
				})
			}
			wg.Wait()
			ks := l.PublicKeys()
			seen := map[uint64]bool{}
			for _, rs := range rcs {
				for _, rc := range rs {
					if seen[rc.Index] {
						t.Fatalf("index %d acknowledged twice", rc.Index)
					}
					seen[rc.Index] = true
					if _, err := VerifyReceipt(rc.Header, ks); err != nil {
						t.Fatalf("receipt of %d: %v", rc.Index, err)
					}
				}
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if res := mustVerify(t, o); res.Records != workers*each || res.Segments < 2 {
				t.Fatalf("verify: %+v", res)
			}
		})
	}
}

// A flush that fails fails its batch and every record queued behind it: no
// waiter is acknowledged, each gets ErrUnavailable, and the log is writable
// again once the disk recovers, continuing at the last durable index.
func TestCommitFlushErrorFailsEveryWaiter(t *testing.T) {
	for _, v := range commitVariants {
		t.Run(v.name, func(t *testing.T) {
			o := testOptions(t)
			fs := &faultyFS{gate: make(chan struct{}), entered: make(chan struct{})}
			o.openFile = fs.open
			v.set(&o)
			l := mustOpen(t, o)
			defer l.Close()
			const n = 50
			errs := make(chan error, n)
			go func() {
				_, err := l.Append(context.Background(), sampleRecord(0))
				errs <- err
			}()
			<-fs.entered // the first batch's flush is held
			for i := 1; i < n; i++ {
				go func() {
					_, err := l.Append(context.Background(), sampleRecord(i))
					errs <- err
				}()
			}
			waitSequenced(t, l, n)
			fs.broken.Store(true)
			close(fs.gate)
			for range n {
				if err := <-errs; !errors.Is(err, ErrUnavailable) {
					t.Fatalf("Append during a failed flush = %v, want ErrUnavailable", err)
				}
			}
			if l.Ready() {
				t.Fatal("ready after a failed flush")
			}
			fs.broken.Store(false)
			waitReady(t, l)
			rc, err := l.Append(context.Background(), sampleRecord(n))
			if err != nil || rc.Index != 0 {
				t.Fatalf("after recovery: index %d, %v; want 0 (nothing was durable)", rc.Index, err)
			}
			l.Close()
			if res := mustVerify(t, o); res.Records != 1 {
				t.Fatalf("records %d, want 1", res.Records)
			}
		})
	}
}

// Close while records wait behind a flush in progress: every record
// sequenced before Close is committed and acknowledged, later appends get
// ErrClosed, and the log verifies with exactly the acknowledged records.
func TestCommitCloseDrains(t *testing.T) {
	for _, v := range commitVariants {
		t.Run(v.name, func(t *testing.T) {
			o := testOptions(t)
			fs := &faultyFS{gate: make(chan struct{}), entered: make(chan struct{})}
			o.openFile = fs.open
			v.set(&o)
			l := mustOpen(t, o)
			const n = 50
			errs := make(chan error, n)
			go func() {
				_, err := l.Append(context.Background(), sampleRecord(0))
				errs <- err
			}()
			<-fs.entered
			for i := 1; i < n; i++ {
				go func() {
					_, err := l.Append(context.Background(), sampleRecord(i))
					errs <- err
				}()
			}
			waitSequenced(t, l, n)
			closed := make(chan error, 1)
			go func() { closed <- l.Close() }()
			deadline := time.Now().Add(10 * time.Second)
			for l.Ready() {
				if time.Now().After(deadline) {
					t.Fatal("Close did not start")
				}
				time.Sleep(time.Millisecond)
			}
			if _, err := l.Append(context.Background(), sampleRecord(n)); !errors.Is(err, ErrClosed) {
				t.Fatalf("Append after Close = %v, want ErrClosed", err)
			}
			select {
			case err := <-closed:
				t.Fatalf("Close returned (%v) while a flush was held", err)
			case <-time.After(20 * time.Millisecond):
			}
			close(fs.gate)
			for range n {
				if err := <-errs; err != nil {
					t.Fatalf("Append queued before Close = %v", err)
				}
			}
			if err := <-closed; err != nil {
				t.Fatal(err)
			}
			if res := mustVerify(t, o); res.Records != n {
				t.Fatalf("records %d, want %d", res.Records, n)
			}
		})
	}
}
