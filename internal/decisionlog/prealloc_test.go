package decisionlog

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// waitPrepared waits until a preallocated segment is ready for the next
// rotation.
func waitPrepared(t testing.TB, l *Log) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !l.prep.isReady() {
		if time.Now().After(deadline) {
			t.Fatal("no segment was prepared")
		}
		time.Sleep(time.Millisecond)
	}
}

// holdPreparation makes the preparer wait before each preparation until
// release is called (or the log closes).
func holdPreparation(o *Options) (release func()) {
	gate := make(chan struct{})
	o.prepHook = func(stop <-chan struct{}) error {
		select {
		case <-gate:
			return nil
		case <-stop:
			return errStopped
		}
	}
	var once sync.Once
	return func() { once.Do(func() { close(gate) }) }
}

func segmentSizes(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	segs, err := listSegments(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, s := range segs {
		fi, err := os.Stat(filepath.Join(dir, s))
		if err != nil {
			t.Fatal(err)
		}
		out[s] = fi.Size()
	}
	return out
}

// dataEnd is the length of a segment's records: up to its zero padding.
func dataEnd(t *testing.T, path string) (data []byte, end int) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	end = len(bytes.TrimRight(data, "\x00"))
	return data, end
}

func readAll(t *testing.T, r *Reader) []uint64 {
	t.Helper()
	var got []uint64
	for {
		e, err := r.Next()
		if errors.Is(err, io.EOF) {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, e.Record.Index)
	}
}

func counterValue(t testing.TB, g prometheus.Gatherer, name, label string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetValue() == label {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("metric %s{%s} not found", name, label)
	return 0
}

// With a prepared file ready, a segment is written in place: the file keeps
// its preallocated size, the records are followed by zeros, and readers and
// Verify stop at the padding of the live log. Close cuts the padding off
// and keeps the next prepared file, which the next Open takes.
func TestPreallocatedSegmentWrittenInPlace(t *testing.T) {
	o := testOptions(t)
	o.SegmentMaxBytes = 256 << 10
	reg := prometheus.NewPedanticRegistry()
	o.Registerer = reg
	l := mustOpen(t, o)
	waitPrepared(t, l)
	appendN(t, l, 0, 10)
	seg := filepath.Join(o.Dir, segmentName(0))
	data, end := dataEnd(t, seg)
	if int64(len(data)) != o.SegmentMaxBytes {
		t.Fatalf("live segment is %d bytes, want the preallocated %d", len(data), o.SegmentMaxBytes)
	}
	if end == 0 || data[end-1] != '\n' || strings.Count(string(data[:end]), "\n"+recordPrefix) != 9 {
		t.Fatalf("live segment: %d bytes of records, want 10 records", end)
	}
	if got := counterValue(t, reg, "agentauthz_decisionlog_segments_total", "preallocated"); got != 1 {
		t.Fatalf("preallocated segments %v", got)
	}

	// Readers of the live, padded log.
	if res := mustVerify(t, o); res.Records != 10 || res.Problem != nil {
		t.Fatalf("verify live log: %+v", res)
	}
	r := NewReader(o.Dir)
	defer r.Close()
	if got := readAll(t, r); len(got) != 10 {
		t.Fatalf("reader read %v", got)
	}
	appendN(t, l, 10, 5) // the file does not grow; the reader finds them by content
	if fi, _ := os.Stat(seg); fi.Size() != o.SegmentMaxBytes {
		t.Fatalf("segment grew to %d", fi.Size())
	}
	if got := readAll(t, r); len(got) != 5 || got[0] != 10 || got[4] != 14 {
		t.Fatalf("reader after more appends read %v", got)
	}

	waitPrepared(t, l) // the next segment, started when this one was taken
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	data, end = dataEnd(t, seg)
	if len(data) != end || bytes.IndexByte(data, 0) >= 0 {
		t.Fatalf("closed segment: %d bytes, records end at %d", len(data), end)
	}
	fi, err := os.Stat(filepath.Join(o.Dir, prepReadyName))
	if err != nil || fi.Size() != o.SegmentMaxBytes || fi.Mode().Perm() != 0o640 {
		t.Fatalf("prepared segment kept for the next Open: %v %v", fi, err)
	}
	if _, err := os.Stat(filepath.Join(o.Dir, prepTmpName)); !os.IsNotExist(err) {
		t.Fatalf("half-prepared file left behind: %v", err)
	}

	// A restart starts a new segment, taking the file prepared before.
	o.Registerer = nil
	l = mustOpen(t, o)
	appendN(t, l, 15, 1)
	if fi, _ := os.Stat(filepath.Join(o.Dir, segmentName(15))); fi == nil || fi.Size() != o.SegmentMaxBytes {
		t.Fatalf("segment after restart: %v, want the prepared file", fi)
	}
	l.Close()
	if res := mustVerify(t, o); res.Records != 16 || res.Segments != 2 {
		t.Fatalf("after restart: %+v", res)
	}
}

// Without a prepared file (the first segment of a log, or rotation faster
// than preparation) a segment is appended to and closed after
// min(SegmentMaxBytes, 1 MiB); the next rotation after a file is ready
// takes it.
func TestFallbackWithoutPreparedSegment(t *testing.T) {
	o := testOptions(t)
	o.SegmentMaxBytes = 32 << 10
	reg := prometheus.NewPedanticRegistry()
	o.Registerer = reg
	release := holdPreparation(&o)
	l := mustOpen(t, o)
	defer l.Close()
	appendN(t, l, 0, 80) // about 100 KiB: several segments
	sizes := segmentSizes(t, o.Dir)
	if len(sizes) < 3 {
		t.Fatalf("segments %v", sizes)
	}
	for name, size := range sizes {
		data, end := dataEnd(t, filepath.Join(o.Dir, name))
		if int64(end) != size || len(data) != end {
			t.Fatalf("appended segment %s: size %d, records end at %d", name, size, end)
		}
	}
	if got := counterValue(t, reg, "agentauthz_decisionlog_segments_total", "preallocated"); got != 0 {
		t.Fatalf("preallocated segments %v while preparation is held", got)
	}
	mustVerify(t, o)

	release()
	waitPrepared(t, l)
	before := len(sizes)
	var last string
	for i := 80; len(segmentSizes(t, o.Dir)) == before; i++ {
		appendN(t, l, i, 1)
	}
	segs, _ := listSegments(o.Dir)
	last = segs[len(segs)-1]
	if fi, _ := os.Stat(filepath.Join(o.Dir, last)); fi.Size() != o.SegmentMaxBytes {
		t.Fatalf("segment %s after preparation: %d bytes, want preallocated %d", last, fi.Size(), o.SegmentMaxBytes)
	}
	if got := counterValue(t, reg, "agentauthz_decisionlog_segments_total", "preallocated"); got != 1 {
		t.Fatalf("preallocated segments %v", got)
	}
	mustVerify(t, o)
}

// A segment appended to without preallocation is capped at 1 MiB even when
// SegmentMaxBytes is larger.
func TestFallbackSegmentIsShort(t *testing.T) {
	o := testOptions(t)
	o.SegmentMaxBytes = 8 << 20
	release := holdPreparation(&o)
	defer release()
	l := mustOpen(t, o)
	defer l.Close()
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 150; i++ {
				if _, err := l.Append(context.Background(), sampleRecord(w*1000+i)); err != nil {
					t.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	sizes := segmentSizes(t, o.Dir)
	if len(sizes) < 2 {
		t.Fatalf("segments %v: the appended segment was not capped at 1 MiB", sizes)
	}
	for name, size := range sizes {
		if size > fallbackSegmentBytes+256<<10 { // may exceed by one batch
			t.Fatalf("appended segment %s is %d bytes", name, size)
		}
	}
	l.Close()
	if res := mustVerify(t, o); res.Records != 16*150 {
		t.Fatalf("records %d", res.Records)
	}
}

// A preparation that fails is retried; meanwhile segments are appended to.
func TestPreparationFailureFallsBack(t *testing.T) {
	o := testOptions(t)
	o.SegmentMaxBytes = 64 << 10
	var mu sync.Mutex
	fail := true
	o.prepHook = func(<-chan struct{}) error {
		mu.Lock()
		defer mu.Unlock()
		if fail {
			return errors.New("injected")
		}
		return nil
	}
	l := mustOpen(t, o)
	defer l.Close()
	appendN(t, l, 0, 60)
	mu.Lock()
	fail = false
	mu.Unlock()
	waitPrepared(t, l)
	l.Close()
	if res := mustVerify(t, o); res.Records != 60 {
		t.Fatalf("records %d", res.Records)
	}
}

// crashImage copies the log and keys of a live log: what a kill -9 leaves
// (everything written is in the page cache, so the copy sees it).
func crashImage(t *testing.T, o Options) Options {
	t.Helper()
	c := testOptions(t)
	for _, d := range [][2]string{{o.Dir, c.Dir}, {o.KeyDir, c.KeyDir}} {
		if err := os.MkdirAll(d[1], 0o700); err != nil {
			t.Fatal(err)
		}
		ents, err := os.ReadDir(d[0])
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if !e.Type().IsRegular() || e.Name() == "LOCK" {
				continue
			}
			b, err := os.ReadFile(filepath.Join(d[0], e.Name()))
			if errors.Is(err, os.ErrNotExist) {
				continue // the preparer renamed or removed it meanwhile: not in the image
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(d[1], e.Name()), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	c.SegmentMaxBytes = o.SegmentMaxBytes
	return c
}

// A crash leaves the last segment with zero padding after its records, and
// maybe a torn record before the padding. Verify reads that image as the
// live log it was (or a torn tail); Open seals the segment (cuts both off),
// continues the chain in a new segment, and loses no acknowledged record.
// NULs followed by a record that does not continue the log (here a copy of
// seq 2) are damage: Open refuses, Verify names them. (NULs followed by
// records of the write in flight, a batch torn by a power loss, are cut:
// see TestOpenCutsTornBatch.)
func TestRecoverPaddedTail(t *testing.T) {
	o := testOptions(t)
	o.SegmentMaxBytes = 128 << 10
	l := mustOpen(t, o)
	defer l.Close()
	waitPrepared(t, l)
	rcs := appendN(t, l, 0, 7) // all acknowledged
	seg := segmentName(0)
	data, end := dataEnd(t, filepath.Join(o.Dir, seg))
	if len(data) == end {
		t.Fatal("live segment has no padding")
	}
	_ = rcs
	records, _, _ := logLines(t, o.Dir)
	nextLine := string(records[1]) + "\n" // a valid record, to place after damage

	for _, tc := range []struct {
		name    string
		tail    string // written at the end of the records, over the padding
		verify  string // Verify's verdict on the crash image: "" ok, else the kind
		corrupt bool   // Open refuses
	}{
		{name: "padding only"},
		{name: "torn record", tail: nextLine[:300], verify: KindTruncated},
		{name: "torn record with a lost page", tail: nextLine[:100] + strings.Repeat("\x00", 200) + nextLine[300:500], verify: KindNULBytes},
		// No checkpoint covers it: cut like a torn write (kept in a side file).
		{name: "zeros then an earlier record", tail: strings.Repeat("\x00", 64) + nextLine, verify: KindNULBytes},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := crashImage(t, o)
			path := filepath.Join(c.Dir, seg)
			if tc.tail != "" {
				f, err := os.OpenFile(path, os.O_WRONLY, 0)
				if err != nil {
					t.Fatal(err)
				}
				f.WriteAt([]byte(tc.tail), int64(end))
				f.Close()
			}
			ks, _ := LoadKeySet(c.KeyDir)
			res, err := Verify(c.Dir, ks)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tc.verify == "" && res.Problem != nil:
				t.Fatalf("verify crash image: %v", res.Problem)
			case tc.verify != "" && (res.Problem == nil || res.Problem.Kind != tc.verify || res.Problem.Index != 7):
				t.Fatalf("verify crash image: %+v, want %s at 8", res.Problem, tc.verify)
			case res.Records != 7:
				t.Fatalf("verify crash image: %d records", res.Records)
			}
			l2, err := Open(c)
			if tc.corrupt {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("Open = %v, want ErrCorrupt", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			sealed, _ := os.ReadFile(path)
			if !bytes.Equal(sealed, data[:end]) {
				t.Fatalf("recovered segment: %d bytes, want the %d bytes of records", len(sealed), end)
			}
			if rc := appendN(t, l2, 7, 1)[0]; rc.Index != 7 {
				t.Fatalf("index after recovery %d", rc.Index)
			}
			l2.Close()
			if res := mustVerify(t, c); res.Records != 8 || res.Segments != 2 {
				t.Fatalf("after recovery: %+v", res)
			}
		})
	}
}

// Readers and Verify run against a log being written, across many
// rotations of preallocated (and, when preparation lags, appended)
// segments: the reader returns every record exactly once, in order, and
// Verify never reports damage.
func TestLiveReadersDuringRotations(t *testing.T) {
	o := testOptions(t)
	o.SegmentMaxBytes = 16 << 10
	l := mustOpen(t, o)
	defer l.Close()
	waitPrepared(t, l)
	ks := l.PublicKeys()
	const total = 600
	done := make(chan struct{})
	go func() {
		defer close(done)
		var wg sync.WaitGroup
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				for i := 0; i < total/4; i++ {
					if _, err := l.Append(context.Background(), sampleRecord(w*1000+i)); err != nil {
						t.Error(err)
						return
					}
				}
			}(w)
		}
		wg.Wait()
	}()
	r := NewReader(o.Dir)
	defer r.Close()
	var got []uint64
	verifies := 0
	for finished := false; !finished; {
		select {
		case <-done:
			finished = true
		default:
		}
		got = append(got, readAll(t, r)...)
		time.Sleep(time.Millisecond)
		if verifies < 20 {
			res, err := Verify(o.Dir, ks)
			if err != nil || res.Problem != nil {
				t.Fatalf("verify of the live log: %v %+v", err, res.Problem)
			}
			verifies++
		}
	}
	got = append(got, readAll(t, r)...)
	if len(got) != total {
		t.Fatalf("reader returned %d records, want %d", len(got), total)
	}
	for i, s := range got {
		if s != uint64(i) {
			t.Fatalf("record %d has index %d", i, s)
		}
	}
	if res := mustVerify(t, o); res.Records != total {
		t.Fatalf("records %d", res.Records)
	}
}

// A failed write into a preallocated segment leaves bytes in its padding;
// recovery puts the zeros back, so the next records follow the durable ones
// and nothing of the failed batch remains.
func TestFailedWriteInPaddingIsZeroedBack(t *testing.T) {
	o := testOptions(t)
	o.SegmentMaxBytes = 128 << 10
	fs := &faultyFS{}
	o.openFile = fs.open
	l := mustOpen(t, o)
	defer l.Close()
	waitPrepared(t, l)
	appendN(t, l, 0, 3)
	seg := filepath.Join(o.Dir, segmentName(0))
	_, end3 := dataEnd(t, seg)
	fs.broken.Store(true)
	if _, err := l.Append(context.Background(), sampleRecord(3)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Append on a failing disk = %v", err)
	}
	if _, end := dataEnd(t, seg); end <= end3 {
		t.Fatal("the failed write left nothing in the padding (test setup)")
	}
	fs.broken.Store(false)
	waitReady(t, l)
	if _, end := dataEnd(t, seg); end != end3 {
		t.Fatalf("after recovery the records end at %d, want %d", end, end3)
	}
	if rc := appendN(t, l, 4, 1)[0]; rc.Index != 3 {
		t.Fatalf("index %d", rc.Index)
	}
	if fi, _ := os.Stat(seg); fi.Size() != o.SegmentMaxBytes {
		t.Fatalf("segment size %d after recovery, want it still preallocated", fi.Size())
	}
	if res := mustVerify(t, o); res.Records != 4 {
		t.Fatalf("records %d", res.Records)
	}
}
