package decisionlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
)

// Crash images of a power loss: the last batch write was in flight, and
// only some of its pages reached the disk — zeros (the preallocated
// content) where a page was lost, then records of the same write.

const testPage = 4096

// pageAfter is the first page boundary after off.
func pageAfter(off int) int { return (off/testPage + 1) * testPage }

// tornLog writes n records into a preallocated segment and returns a crash
// image of the live log (its last segment still padded), the segment's
// path in the image, and where each record ends (ends[i] for seq i+1).
func tornLog(t *testing.T, n int) (c Options, seg string, ends []int) {
	t.Helper()
	o := testOptions(t)
	o.SegmentMaxBytes = 256 << 10
	l := mustOpen(t, o)
	defer l.Close()
	waitPrepared(t, l)
	appendN(t, l, 0, n)
	c = crashImage(t, o)
	seg = filepath.Join(c.Dir, segmentName(1))
	data, end := dataEnd(t, seg)
	for off := 0; off < end; {
		nl := bytes.IndexByte(data[off:], '\n')
		off += nl + 1
		ends = append(ends, off)
	}
	if len(ends) != n {
		t.Fatalf("%d lines, want %d", len(ends), n)
	}
	return c, seg, ends
}

// firstStartingAt is the first seq whose record starts at or after off.
func firstStartingAt(ends []int, off int) uint64 {
	for i := range ends {
		start := 0
		if i > 0 {
			start = ends[i-1]
		}
		if start >= off {
			return uint64(i + 1)
		}
	}
	return 0
}

// lastEndingBy is the last seq whose record ends at or before off.
func lastEndingBy(ends []int, off int) uint64 {
	var seq uint64
	for i, e := range ends {
		if e <= off {
			seq = uint64(i + 1)
		}
	}
	return seq
}

func tornFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, tornFilePrefix+"*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// (a) Zeros where pages of the in-flight batch were lost, then complete
// records of that batch: Open cuts the batch off at the last good record,
// keeps the cut bytes in a side file, logs an error, counts it, and the
// chain continues; the log verifies.
func TestOpenCutsTornBatch(t *testing.T) {
	const n = 24
	for _, tc := range []struct {
		name string
		lost func(ends []int) [][2]int // zeroed ranges
		cut  func(ends []int) uint64   // the last record kept
	}{
		{
			name: "lost page where the batch starts",
			lost: func(e []int) [][2]int { return [][2]int{{e[6], pageAfter(e[6])}} },
			cut:  func([]int) uint64 { return 7 },
		},
		{
			name: "lost page inside the batch",
			lost: func(e []int) [][2]int {
				p := pageAfter(e[6])
				return [][2]int{{p, p + testPage}}
			},
			cut: func(e []int) uint64 { return lastEndingBy(e, pageAfter(e[6])) },
		},
		{
			name: "two lost pages",
			lost: func(e []int) [][2]int {
				p := pageAfter(e[6])
				return [][2]int{{e[6], p}, {p + testPage, p + 2*testPage}}
			},
			cut: func([]int) uint64 { return 7 },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, seg, ends := tornLog(t, n)
			lost := tc.lost(ends)
			for _, r := range lost {
				zeroAt(t, seg, int64(r[0]), int64(r[1]-r[0]))
			}
			image, imageEnd := dataEnd(t, seg)
			kept := tc.cut(ends)
			cut := ends[kept-1]
			// The records of the batch that survived whole, after the cut.
			var tail []uint64
			for i := int(kept); i < n; i++ {
				start, end, whole := ends[i-1], ends[i], true
				for _, r := range lost {
					whole = whole && (end <= r[0] || start >= r[1])
				}
				if whole {
					tail = append(tail, uint64(i+1))
				}
			}
			if len(tail) == 0 || tail[0] <= kept+1 {
				t.Fatalf("test setup: no complete record after the lost pages (kept %d, tail %v)", kept, tail)
			}
			ks, _ := LoadKeySet(c.KeyDir)
			if res, err := Verify(c.Dir, ks); err != nil || res.Problem == nil || res.Problem.Kind != KindNULBytes || res.Problem.Seq != kept+1 {
				t.Fatalf("verify of the crash image: %v %+v, want nul_bytes at %d", err, res.Problem, kept+1)
			}

			reg := prometheus.NewPedanticRegistry()
			c.Registerer = reg
			var logs bytes.Buffer
			c.Logger = hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info})
			l, err := Open(c)
			if err != nil {
				t.Fatalf("Open of a torn batch: %v", err)
			}
			// The segment is cut back to the last good record.
			sealed, _ := os.ReadFile(seg)
			if !bytes.Equal(sealed, image[:cut]) {
				t.Fatalf("segment after recovery: %d bytes, want the %d bytes up to seq %d", len(sealed), cut, kept)
			}
			// The cut bytes are kept, exactly, in the side file.
			side := filepath.Join(c.Dir, fmt.Sprintf(".torn-%s-%d", segmentName(1), cut))
			got, err := os.ReadFile(side)
			if err != nil {
				t.Fatalf("side file: %v (have %v)", err, tornFiles(t, c.Dir))
			}
			if !bytes.Equal(got, image[cut:imageEnd]) {
				t.Fatalf("side file holds %d bytes, want the %d cut bytes", len(got), imageEnd-cut)
			}
			if fi, _ := os.Stat(side); fi.Mode().Perm() != 0o600 {
				t.Fatalf("side file mode %v", fi.Mode())
			}
			if segs, _ := listSegments(c.Dir); len(segs) != 1 {
				t.Fatalf("segments %v", segs)
			}
			// Logged as an error, with what an auditor needs; counted.
			out := logs.String()
			for _, want := range []string{
				"[ERROR]", "torn batch", "segment=" + segmentName(1), fmt.Sprintf("offset=%d", cut),
				fmt.Sprintf("bytes=%d", imageEnd-cut), fmt.Sprintf("records=%d", len(tail)),
				fmt.Sprintf("first_seq=%d", tail[0]), fmt.Sprintf("last_seq=%d", n), "side_file=" + side,
				"never acknowledged", "receipts",
			} {
				if !strings.Contains(out, want) {
					t.Fatalf("log lacks %q:\n%s", want, out)
				}
			}
			if v := counterValue(t, reg, "agentauthz_decisionlog_recovered_tails_total", "torn_batch"); v != 1 {
				t.Fatalf("recovered_tails_total{torn_batch} = %v", v)
			}
			// The chain continues from the last good record.
			rc := appendN(t, l, 100, 1)[0]
			if rc.Seq != kept+1 {
				t.Fatalf("seq after recovery %d, want %d", rc.Seq, kept+1)
			}
			rec, err := DecodeRecord(rc.JWS)
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.SplitAfter(string(image[:cut]), "\n")
			if want := ChainHash(strings.TrimSuffix(lines[kept-1], "\n")); rec.Prev != want {
				t.Fatalf("prev %s, want the hash of seq %d", rec.Prev, kept)
			}
			l.Close()
			if res := mustVerify(t, c); res.Records != kept+1 || res.Segments != 2 {
				t.Fatalf("after recovery: %+v", res)
			}
			// A second Open finds nothing more to do.
			c.Registerer = nil
			l = mustOpen(t, c)
			l.Close()
			if got := tornFiles(t, c.Dir); len(got) != 1 {
				t.Fatalf("side files %v", got)
			}
		})
	}
}

// A batch that was the first write into a new segment: the whole segment
// is the torn batch. It is kept, the segment (left without a record) is
// removed, and the chain continues from the previous segment.
func TestOpenCutsTornFirstBatchOfSegment(t *testing.T) {
	o := testOptions(t)
	o.SegmentMaxBytes = 256 << 10
	l := mustOpen(t, o)
	waitPrepared(t, l)
	appendN(t, l, 0, 5)
	l.Close()
	l = mustOpen(t, o) // a restart starts a new segment: seq 6
	defer l.Close()
	waitPrepared(t, l)
	appendN(t, l, 5, 10)
	c := crashImage(t, o)
	seg := filepath.Join(c.Dir, segmentName(6))
	zeroAt(t, seg, 0, testPage)
	image, imageEnd := dataEnd(t, seg)

	l2, err := Open(c)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	side := filepath.Join(c.Dir, ".torn-"+segmentName(6)+"-0")
	if got, err := os.ReadFile(side); err != nil || !bytes.Equal(got, image[:imageEnd]) {
		t.Fatalf("side file: %d bytes, %v; want %d", len(got), err, imageEnd)
	}
	if rc := appendN(t, l2, 100, 1)[0]; rc.Seq != 6 {
		t.Fatalf("seq after recovery %d, want 6", rc.Seq)
	}
	l2.Close()
	if res := mustVerify(t, c); res.Records != 6 {
		t.Fatalf("after recovery: %+v", res)
	}
}

// (b), (c) Anything but a torn batch after the last good record is still
// refused, and the log is left as it was: no cut, no side file.
func TestOpenRefusesWhatIsNotATornBatch(t *testing.T) {
	const n = 24
	for _, tc := range []struct {
		name     string
		edit     func(t *testing.T, c *Options, seg string, ends []int)
		verified string // Verify's verdict on the image
	}{
		{
			name: "larger than one write",
			edit: func(t *testing.T, c *Options, seg string, e []int) {
				zeroAt(t, seg, int64(e[6]), int64(pageAfter(e[6])-e[6]))
				c.maxWrite = e[n-1] - e[6] - 1 // one byte short of the torn bytes
			},
			verified: KindNULBytes,
		},
		{
			name: "bit flip then records",
			edit: func(t *testing.T, c *Options, seg string, e []int) {
				flipAt(t, seg, int64(e[6]))
			},
			verified: KindModified,
		},
		{
			name: "garbage line then records",
			edit: func(t *testing.T, c *Options, seg string, e []int) {
				writeAt(t, seg, int64(e[6]), strings.Repeat("x", e[7]-e[6]-1)+"\n")
			},
			verified: KindModified,
		},
		{
			name: "zeros, then a changed record, then records",
			edit: func(t *testing.T, c *Options, seg string, e []int) {
				p := pageAfter(e[6])
				zeroAt(t, seg, int64(e[6]), int64(p-e[6]))
				k := firstStartingAt(e, p)
				flipAt(t, seg, int64(e[k-1])) // record k+1, a complete line
			},
			verified: KindNULBytes,
		},
		{
			name: "zeros, then a foreign byte",
			edit: func(t *testing.T, c *Options, seg string, e []int) {
				p := pageAfter(e[6])
				zeroAt(t, seg, int64(e[6]), int64(p-e[6]))
				writeAt(t, seg, int64(p), "\x01")
			},
			verified: KindNULBytes,
		},
		{
			name: "zeros, then an earlier record",
			edit: func(t *testing.T, c *Options, seg string, e []int) {
				data, _ := os.ReadFile(seg)
				rec2 := string(data[e[0]:e[1]])
				writeAt(t, seg, int64(e[n-1]), strings.Repeat("\x00", 64)+rec2)
			},
			verified: KindNULBytes,
		},
		{
			name: "zeros, then records out of order",
			edit: func(t *testing.T, c *Options, seg string, e []int) {
				p := pageAfter(e[6])
				k := int(firstStartingAt(e, p)) // records k and k+1 are swapped
				data, _ := os.ReadFile(seg)
				a, b := string(data[e[k-2]:e[k-1]]), string(data[e[k-1]:e[k]])
				writeAt(t, seg, int64(e[k-2]), b+a)
				zeroAt(t, seg, int64(e[6]), int64(p-e[6]))
			},
			verified: KindNULBytes,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, seg, ends := tornLog(t, n)
			tc.edit(t, &c, seg, ends)
			before, _ := os.ReadFile(seg)
			ks, _ := LoadKeySet(c.KeyDir)
			if res, err := Verify(c.Dir, ks); err != nil || res.Problem == nil || res.Problem.Kind != tc.verified {
				t.Fatalf("verify of the image: %v %+v, want %s", err, res.Problem, tc.verified)
			}
			reg := prometheus.NewPedanticRegistry()
			c.Registerer = reg
			_, err := Open(c)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Open = %v, want ErrCorrupt", err)
			}
			t.Log(err)
			if after, _ := os.ReadFile(seg); !bytes.Equal(after, before) {
				t.Fatal("Open changed the segment it refused")
			}
			if got := tornFiles(t, c.Dir); len(got) != 0 {
				t.Fatalf("side files %v", got)
			}
			if v := counterValue(t, reg, "agentauthz_decisionlog_recovered_tails_total", "torn_batch"); v != 0 {
				t.Fatalf("recovered_tails_total{torn_batch} = %v", v)
			}
		})
	}
}

// (b) The bound is the writer's cap: torn bytes up to it are cut.
func TestTornBatchBoundIsTheWriteCap(t *testing.T) {
	const n = 24
	c, seg, e := tornLog(t, n)
	zeroAt(t, seg, int64(e[6]), int64(pageAfter(e[6])-e[6]))
	c.maxWrite = e[n-1] - e[6]
	l, err := Open(c)
	if err != nil {
		t.Fatalf("Open with the torn bytes exactly at the cap: %v", err)
	}
	l.Close()
	if got := tornFiles(t, c.Dir); len(got) != 1 {
		t.Fatalf("side files %v", got)
	}
}

// (d) A sealed segment is never torn. Zeros then records in it are left to
// the auditor as before: Open does not look into sealed segments while the
// last one has records, and refuses when it has to continue from one.
func TestTornBatchRuleOnlyInLastSegment(t *testing.T) {
	o := testOptions(t)
	l := mustOpen(t, o)
	appendN(t, l, 0, 20)
	l.Close()
	l = mustOpen(t, o)
	appendN(t, l, 20, 3)
	l.Close()
	sealed := filepath.Join(o.Dir, segmentName(1))
	data, _ := os.ReadFile(sealed)
	lines := strings.SplitAfter(string(data), "\n")
	off := len(strings.Join(lines[:7], ""))
	zeroAt(t, sealed, int64(off), int64(pageAfter(off)-off))
	damaged, _ := os.ReadFile(sealed)
	ks, _ := LoadKeySet(o.KeyDir)

	// The last segment has records: Open continues from it, as before.
	l = mustOpen(t, o)
	l.Close()
	if after, _ := os.ReadFile(sealed); !bytes.Equal(after, damaged) {
		t.Fatal("Open changed a sealed segment")
	}
	if res, err := Verify(o.Dir, ks); err != nil || res.Problem == nil || res.Problem.Kind != KindNULBytes || res.Problem.Seq != 8 {
		t.Fatalf("verify: %v %+v, want nul_bytes at 8", err, res.Problem)
	}

	// The later segments hold no record: Open has to continue from the
	// sealed segment, and refuses.
	segs, _ := listSegments(o.Dir)
	for _, s := range segs[1:] {
		if err := os.Truncate(filepath.Join(o.Dir, s), 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Open(o); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "not the last segment") {
		t.Fatalf("Open = %v, want ErrCorrupt (not the last segment)", err)
	}
	if after, _ := os.ReadFile(sealed); !bytes.Equal(after, damaged) {
		t.Fatal("Open changed the sealed segment it refused")
	}
	if got := tornFiles(t, o.Dir); len(got) != 0 {
		t.Fatalf("side files %v", got)
	}
}

// tornRecordLog makes a crash image of a live log of n records whose last
// one was torn by tear (given the segment and where that record starts and
// ends). It returns the image, its segment's path and bytes, where the cut
// falls (the end of seq n-1) and where the torn bytes end (the last
// non-NUL byte).
func tornRecordLog(t *testing.T, n int, tear func(t *testing.T, seg string, start, end int)) (c Options, seg string, image []byte, cut, end int) {
	t.Helper()
	c, seg, ends := tornLog(t, n)
	cut = ends[n-2]
	tear(t, seg, cut, ends[n-1])
	image, end = dataEnd(t, seg)
	if end <= cut {
		t.Fatalf("test setup: nothing torn (end %d, cut %d)", end, cut)
	}
	return c, seg, image, cut, end
}

// A crash in the middle of the last write leaves a torn record: Open cuts
// it off as before, but first keeps the cut bytes in a side file, logs an
// error that names them (not their contents) and counts them; the chain
// continues and the log verifies.
func TestOpenKeepsTornRecord(t *testing.T) {
	const n = 8
	for _, tc := range []struct {
		name     string
		tear     func(t *testing.T, seg string, start, end int)
		verified string // Verify's verdict on the crash image (at seq n)
	}{
		{
			name: "partial line (process crash)",
			tear: func(t *testing.T, seg string, start, end int) {
				zeroAt(t, seg, int64(start+300), int64(end-start-300))
			},
			verified: KindTruncated,
		},
		{
			name: "lost page inside the record (power loss)",
			tear: func(t *testing.T, seg string, start, end int) {
				zeroAt(t, seg, int64(start+100), 200)
			},
			verified: KindNULBytes,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, seg, image, cut, end := tornRecordLog(t, n, tc.tear)
			torn := image[cut:end]
			ks, _ := LoadKeySet(c.KeyDir)
			if res, err := Verify(c.Dir, ks); err != nil || res.Problem == nil || res.Problem.Kind != tc.verified || res.Problem.Seq != n {
				t.Fatalf("verify of the crash image: %v %+v, want %s at %d", err, res.Problem, tc.verified, n)
			}

			reg := prometheus.NewPedanticRegistry()
			c.Registerer = reg
			var logs bytes.Buffer
			c.Logger = hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info})
			l, err := Open(c)
			if err != nil {
				t.Fatalf("Open of a torn record: %v", err)
			}
			// Cut as before: back to the last complete record.
			if sealed, _ := os.ReadFile(seg); !bytes.Equal(sealed, image[:cut]) {
				t.Fatalf("segment after recovery: %d bytes, want the %d bytes up to seq %d", len(sealed), cut, n-1)
			}
			// The cut bytes, exactly (the padding after them is not kept).
			side := filepath.Join(c.Dir, fmt.Sprintf(".torn-%s-%d", segmentName(1), cut))
			got, err := os.ReadFile(side)
			if err != nil {
				t.Fatalf("side file: %v (have %v)", err, tornFiles(t, c.Dir))
			}
			if !bytes.Equal(got, torn) {
				t.Fatalf("side file holds %d bytes, want the %d cut bytes", len(got), len(torn))
			}
			if fi, _ := os.Stat(side); fi.Mode().Perm() != 0o600 {
				t.Fatalf("side file mode %v", fi.Mode())
			}
			out := logs.String()
			for _, want := range []string{
				"[ERROR]", "torn record", "segment=" + segmentName(1), fmt.Sprintf("offset=%d", cut),
				fmt.Sprintf("bytes=%d", len(torn)), "side_file=", filepath.Base(side), "never acknowledged",
			} {
				if !strings.Contains(out, want) {
					t.Fatalf("log lacks %q:\n%s", want, out)
				}
			}
			if piece := string(torn[len(torn)-40:]); strings.Contains(out, piece) {
				t.Fatalf("the log shows the torn bytes:\n%s", out)
			}
			if v := counterValue(t, reg, "agentauthz_decisionlog_recovered_tails_total", "torn_record"); v != 1 {
				t.Fatalf("recovered_tails_total{torn_record} = %v", v)
			}
			if v := counterValue(t, reg, "agentauthz_decisionlog_recovered_tails_total", "torn_batch"); v != 0 {
				t.Fatalf("recovered_tails_total{torn_batch} = %v", v)
			}
			// The torn record's seq is reused; the log verifies.
			if rc := appendN(t, l, 100, 1)[0]; rc.Seq != n {
				t.Fatalf("seq after recovery %d, want %d", rc.Seq, n)
			}
			l.Close()
			if res := mustVerify(t, c); res.Records != n || res.Segments != 2 {
				t.Fatalf("after recovery: %+v", res)
			}
			// A second Open finds nothing more to cut or keep.
			c.Registerer, c.Logger = nil, nil
			l = mustOpen(t, c)
			l.Close()
			if got := tornFiles(t, c.Dir); len(got) != 1 {
				t.Fatalf("side files %v", got)
			}
		})
	}
}

// A torn record that was the first record of its segment: the segment is
// left without a record and removed, as before, and the cut bytes are kept
// under offset 0. The next run starts a segment of the same name, and a
// crash can tear it at the same spot again: that side file gets a numbered
// name, the first one is left as it was.
func TestOpenKeepsTornFirstRecordOfSegment(t *testing.T) {
	o := testOptions(t)
	o.SegmentMaxBytes = 256 << 10
	l := mustOpen(t, o)
	appendN(t, l, 0, 5)
	l.Close()
	// crashAfterTearingSeq6 starts a run, writes sampleRecord(i) as seq 6
	// (the first record of a new segment), and returns a crash image in
	// which only the first 300 bytes of it reached the segment.
	crashAfterTearingSeq6 := func(o Options, i int) (Options, []byte) {
		l := mustOpen(t, o)
		defer l.Close()
		waitPrepared(t, l)
		if rc := appendN(t, l, i, 1)[0]; rc.Seq != 6 {
			t.Fatalf("seq %d, want 6", rc.Seq)
		}
		c := crashImage(t, o)
		seg := filepath.Join(c.Dir, segmentName(6))
		data, end := dataEnd(t, seg)
		zeroAt(t, seg, 300, int64(end-300))
		return c, data[:300]
	}
	side := func(c Options) string { return filepath.Join(c.Dir, ".torn-"+segmentName(6)+"-0") }

	c, torn := crashAfterTearingSeq6(o, 5)
	mustOpen(t, c).Close()
	if got, err := os.ReadFile(side(c)); err != nil || !bytes.Equal(got, torn) {
		t.Fatalf("side file: %d bytes, %v; want the %d torn bytes", len(got), err, len(torn))
	}
	if segs, _ := listSegments(c.Dir); len(segs) != 1 {
		t.Fatalf("segments %v, want the segment without a record removed", segs)
	}
	mustVerify(t, c)

	c2, torn2 := crashAfterTearingSeq6(c, 6)
	mustOpen(t, c2).Close()
	if got, _ := os.ReadFile(side(c2)); !bytes.Equal(got, torn) {
		t.Fatal("the first side file was overwritten")
	}
	if got, err := os.ReadFile(side(c2) + ".1"); err != nil || !bytes.Equal(got, torn2) {
		t.Fatalf("second side file: %d bytes, %v; want the %d torn bytes", len(got), err, len(torn2))
	}
	if bytes.Equal(torn, torn2) {
		t.Fatal("test setup: the two torn records are the same")
	}
	if res := mustVerify(t, c2); res.Records != 5 {
		t.Fatalf("after recovery: %+v", res)
	}
}

// A torn record is cut only within one write of the last good record, the
// bound of torn batches: no crash leaves more, and it bounds the side file.
// Beyond it Open refuses and leaves the log as it is.
func TestTornRecordBoundIsTheWriteCap(t *testing.T) {
	const n = 8
	for _, tc := range []struct {
		name  string
		slack int // maxWrite minus the torn bytes
	}{
		{"at the cap", 0},
		{"one byte over", -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, seg, image, cut, end := tornRecordLog(t, n, func(t *testing.T, seg string, start, end int) {
				zeroAt(t, seg, int64(start+300), int64(end-start-300))
			})
			c.maxWrite = end - cut + tc.slack
			l, err := Open(c)
			if tc.slack >= 0 {
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				l.Close()
				if got := tornFiles(t, c.Dir); len(got) != 1 {
					t.Fatalf("side files %v", got)
				}
				return
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Open = %v, want ErrCorrupt", err)
			}
			if after, _ := os.ReadFile(seg); !bytes.Equal(after, image) {
				t.Fatal("Open changed the segment it refused")
			}
			if got := tornFiles(t, c.Dir); len(got) != 0 {
				t.Fatalf("side files %v", got)
			}
		})
	}
}

// A side file is never overwritten. One with the same bytes is what a
// crash between keeping and cutting leaves: it is reused. Anything else
// under the name is left alone and the bytes go to a numbered name.
func TestOpenNeverOverwritesASideFile(t *testing.T) {
	const n = 8
	tear := func(t *testing.T, seg string, start, end int) {
		zeroAt(t, seg, int64(start+300), int64(end-start-300))
	}
	for _, tc := range []struct {
		name     string
		existing func(torn []byte) []byte // what is already under the name
		want     string                   // the side file that gets the torn bytes
	}{
		{"same bytes (a crash during recovery)", func(torn []byte) []byte { return torn }, ""},
		{"other bytes", func([]byte) []byte { return []byte("an earlier recovery\n") }, ".1"},
		{"a longer file", func(torn []byte) []byte { return append(append([]byte{}, torn...), torn...) }, ".1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _, image, cut, end := tornRecordLog(t, n, tear)
			torn := image[cut:end]
			base := filepath.Join(c.Dir, fmt.Sprintf(".torn-%s-%d", segmentName(1), cut))
			existing := tc.existing(torn)
			if err := os.WriteFile(base, existing, 0o600); err != nil {
				t.Fatal(err)
			}
			l := mustOpen(t, c)
			l.Close()
			if got, _ := os.ReadFile(base); !bytes.Equal(got, existing) {
				t.Fatal("Open overwrote an existing side file")
			}
			if got, err := os.ReadFile(base + tc.want); err != nil || !bytes.Equal(got, torn) {
				t.Fatalf("side file %s: %d bytes, %v; want the %d cut bytes", base+tc.want, len(got), err, len(torn))
			}
			want := 1
			if tc.want != "" {
				want = 2
			}
			if got := tornFiles(t, c.Dir); len(got) != want {
				t.Fatalf("side files %v", got)
			}
			mustVerify(t, c)
		})
	}
}

// sideFileFault makes one step of writing a side file fail with EIO:
// "open", "write" (half the bytes written) or "sync". Other files pass
// through.
type sideFileFault string

type faultySideFile struct {
	osSegment
	step sideFileFault
}

func (s sideFileFault) open(name string, flag int, perm os.FileMode) (segmentFile, error) {
	if !strings.Contains(filepath.Base(name), tornFilePrefix) {
		return osOpenFile(name, flag, perm)
	}
	if s == "open" {
		return nil, &os.PathError{Op: "open", Path: name, Err: syscall.EIO}
	}
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return faultySideFile{osSegment{f}, s}, nil
}

func (f faultySideFile) WriteAt(p []byte, off int64) (int, error) {
	if f.step == "write" {
		n, _ := f.File.WriteAt(p[:len(p)/2], off)
		return n, syscall.EIO
	}
	return f.File.WriteAt(p, off)
}

func (f faultySideFile) Sync() error {
	if f.step == "sync" {
		return syscall.EIO
	}
	return f.File.Sync()
}

// When the cut bytes cannot be kept, Open fails and cuts nothing: the
// segment is as the crash left it, no side file (nor a piece of one) is
// left, nothing is counted. Once the disk takes the side file, Open
// recovers as usual.
func TestOpenFailsClosedWhenTornBytesCannotBeKept(t *testing.T) {
	const n = 24
	images := map[string]func(t *testing.T) (Options, string){
		"torn record": func(t *testing.T) (Options, string) {
			c, seg, _, _, _ := tornRecordLog(t, n, func(t *testing.T, seg string, start, end int) {
				zeroAt(t, seg, int64(start+300), int64(end-start-300))
			})
			return c, seg
		},
		"torn batch": func(t *testing.T) (Options, string) {
			c, seg, e := tornLog(t, n)
			zeroAt(t, seg, int64(e[6]), int64(pageAfter(e[6])-e[6]))
			return c, seg
		},
	}
	for kind, image := range images {
		for _, step := range []sideFileFault{"open", "write", "sync"} {
			t.Run(kind+"/"+string(step), func(t *testing.T) {
				c, seg := image(t)
				before, _ := os.ReadFile(seg)
				reg := prometheus.NewPedanticRegistry()
				c.Registerer = reg
				c.openFile = step.open
				_, err := Open(c)
				if err == nil || !errors.Is(err, syscall.EIO) || !strings.Contains(err.Error(), "nothing was cut") {
					t.Fatalf("Open = %v, want the EIO of the side file, nothing cut", err)
				}
				t.Log(err)
				if after, _ := os.ReadFile(seg); !bytes.Equal(after, before) {
					t.Fatal("Open cut the segment without keeping the bytes")
				}
				if m, _ := filepath.Glob(filepath.Join(c.Dir, "*"+tornFilePrefix+"*")); len(m) != 0 {
					t.Fatalf("left behind: %v", m)
				}
				for _, k := range []string{"torn_record", "torn_batch"} {
					if v := counterValue(t, reg, "agentauthz_decisionlog_recovered_tails_total", k); v != 0 {
						t.Fatalf("recovered_tails_total{%s} = %v", k, v)
					}
				}

				c.Registerer, c.openFile = nil, nil
				l := mustOpen(t, c)
				l.Close()
				if got := tornFiles(t, c.Dir); len(got) != 1 {
					t.Fatalf("side files %v", got)
				}
				mustVerify(t, c)
			})
		}
	}
}

func writeAt(t *testing.T, path string, off int64, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte(s), off); err != nil {
		t.Fatal(err)
	}
}

// flipAt flips one bit of the record that starts at off: its first '.'
// (0x2E) becomes 'n' (0x6E), so the line no longer decodes.
func flipAt(t *testing.T, path string, off int64) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dot := bytes.IndexByte(data[off:], '.')
	writeAt(t, path, off+int64(dot), string(data[off+int64(dot)]^0x40))
}

// cycleFS records the writer's writes and flushes of segment files. The
// first flush waits at gate, so that the next batch gathers every later
// append; failWrite (1-based, 0: never) makes that write fail with EIO.
type cycleFS struct {
	gate      chan struct{}
	entered   chan struct{}
	once      sync.Once
	returned  atomic.Int64 // appends that have returned
	failWrite int

	mu  sync.Mutex
	ops []cycleOp
}

type cycleOp struct {
	flush    bool
	off      int64
	n        int
	returned int64 // appends returned when the flush was issued
}

type cycleFile struct {
	osSegment
	fs *cycleFS
}

func (f *cycleFS) open(name string, flag int, perm os.FileMode) (segmentFile, error) {
	file, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	if _, ok := parseSegmentName(filepath.Base(name)); !ok {
		return osSegment{file}, nil
	}
	return cycleFile{osSegment{file}, f}, nil
}

func (f cycleFile) WriteAt(p []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	f.fs.ops = append(f.fs.ops, cycleOp{off: off, n: len(p)})
	writes := 0
	for _, op := range f.fs.ops {
		if !op.flush {
			writes++
		}
	}
	f.fs.mu.Unlock()
	if writes == f.fs.failWrite {
		return 0, syscall.EIO
	}
	return f.File.WriteAt(p, off)
}

func (f cycleFile) Datasync() error {
	f.fs.once.Do(func() {
		close(f.fs.entered)
		<-f.fs.gate
	})
	f.fs.mu.Lock()
	f.fs.ops = append(f.fs.ops, cycleOp{flush: true, returned: f.fs.returned.Load()})
	f.fs.mu.Unlock()
	return f.osSegment.Datasync()
}

// bigBatch appends one record, holds its flush until n-1 more are
// sequenced (they form the next batch), then lets the writer go on. It
// returns the receipts and errors by append.
func bigBatch(t *testing.T, l *Log, fs *cycleFS, n int) ([]Receipt, []error) {
	t.Helper()
	rcs, errs := make([]Receipt, n), make([]error, n)
	var wg sync.WaitGroup
	run := func(i int) {
		defer wg.Done()
		rcs[i], errs[i] = l.Append(context.Background(), sampleRecord(i))
		fs.returned.Add(1)
	}
	wg.Add(1)
	go run(0)
	<-fs.entered
	for i := 1; i < n; i++ {
		wg.Add(1)
		go run(i)
	}
	waitSequenced(t, l, uint64(n))
	close(fs.gate)
	wg.Wait()
	return rcs, errs
}

// (e) A batch larger than the write cap is written in several write +
// fdatasync cycles, one after the other, contiguous, none larger than the
// cap; its appenders are woken only after the last one, and each gets the
// receipt of its record.
func TestBatchLargerThanWriteCapIsWrittenInCycles(t *testing.T) {
	o := testOptions(t)
	holdPreparation(&o) // the writer appends to a plain segment file
	fs := &cycleFS{gate: make(chan struct{}), entered: make(chan struct{})}
	o.openFile = fs.open
	o.maxWrite = 4096
	l := mustOpen(t, o)
	defer l.Close()
	const n = 40
	rcs, errs := bigBatch(t, l, fs, n)
	ks := l.PublicKeys()
	seen := map[uint64]bool{}
	for i, rc := range rcs {
		if errs[i] != nil {
			t.Fatalf("append %d: %v", i, errs[i])
		}
		rec, err := VerifyRecord(rc.JWS, ks)
		if err != nil || rec.Seq != rc.Seq || rec.DecisionID != sampleRecord(i).DecisionID || seen[rc.Seq] {
			t.Fatalf("receipt %d: seq %d, %v, %+v", i, rc.Seq, err, rec)
		}
		seen[rc.Seq] = true
	}

	fs.mu.Lock()
	ops := append([]cycleOp(nil), fs.ops...)
	fs.mu.Unlock()
	// The first batch: one write, one flush. Then the big batch.
	if len(ops) < 2 || ops[0].flush || !ops[1].flush {
		t.Fatalf("first batch ops %+v", ops)
	}
	next := int64(ops[0].n)
	cycles := 0
	for i := 2; i < len(ops); i += 2 {
		w := ops[i]
		if w.flush || i+1 >= len(ops) || !ops[i+1].flush {
			t.Fatalf("ops %d..: want write then flush, got %+v", i, ops[i:])
		}
		if w.n > o.maxWrite || w.n == 0 {
			t.Fatalf("write of %d bytes, cap %d", w.n, o.maxWrite)
		}
		if w.off != next {
			t.Fatalf("write at %d, want %d (contiguous)", w.off, next)
		}
		if r := ops[i+1].returned; r > 1 {
			t.Fatalf("%d appends returned before flush %d of the batch", r, cycles+1)
		}
		next += int64(w.n)
		cycles++
	}
	if cycles < 2 {
		t.Fatalf("the big batch took %d write cycles", cycles)
	}
	t.Logf("%d records after the first: %d bytes in %d cycles", n-1, next-int64(ops[0].n), cycles)

	// In the log: each receipt is the record at its seq.
	l.Close()
	if res := mustVerify(t, o); res.Records != n {
		t.Fatalf("records %d", res.Records)
	}
	r := NewReader(o.Dir)
	defer r.Close()
	bySeq := map[uint64]string{}
	for {
		e, err := r.Next()
		if err != nil {
			break
		}
		bySeq[e.Record.Seq] = e.JWS
	}
	for i, rc := range rcs {
		if bySeq[rc.Seq] != rc.JWS {
			t.Fatalf("receipt %d (seq %d) is not the record in the log", i, rc.Seq)
		}
	}
}

// A failure in a later cycle fails the whole batch, as a failed single
// write does: every appender of it gets ErrUnavailable, what the earlier
// cycles wrote is taken back, and the seqs are reused.
func TestFailedCycleFailsTheWholeBatch(t *testing.T) {
	o := testOptions(t)
	holdPreparation(&o)
	fs := &cycleFS{gate: make(chan struct{}), entered: make(chan struct{}), failWrite: 3}
	o.openFile = fs.open
	o.maxWrite = 4096
	l := mustOpen(t, o)
	defer l.Close()
	const n = 20
	_, errs := bigBatch(t, l, fs, n)
	if errs[0] != nil {
		t.Fatalf("first append: %v", errs[0])
	}
	for i := 1; i < n; i++ {
		if !errors.Is(errs[i], ErrUnavailable) {
			t.Fatalf("append %d of the failed batch = %v, want ErrUnavailable", i, errs[i])
		}
	}
	waitReady(t, l)
	if rc := appendN(t, l, 100, 1)[0]; rc.Seq != 2 {
		t.Fatalf("seq after the failed batch %d, want 2", rc.Seq)
	}
	l.Close()
	if res := mustVerify(t, o); res.Records != 2 {
		t.Fatalf("records %d", res.Records)
	}
}

// Open streams the last segment: what it holds stays within about one
// record and one write however large the file is. Here 200 MiB of padding
// after a few records, a record 200 MiB further, and a 32 MiB line. (The
// zeros are a hole in a sparse file: they cost no disk.)
func TestScanSegmentMemoryIsBounded(t *testing.T) {
	const size = 200 << 20
	lines := fuzzLines(4)
	good := strings.Join(lines[:3], "")
	for _, tc := range []struct {
		name  string
		write func(t *testing.T, f *os.File)
		cut   bool // cut the padding; else refused (ErrCorrupt)
	}{
		{"200 MiB of padding", func(t *testing.T, f *os.File) {
			if err := f.Truncate(size); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"a record after 200 MiB of zeros", func(t *testing.T, f *os.File) {
			if _, err := f.WriteAt([]byte(lines[3]), size); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"a 32 MiB line", func(t *testing.T, f *os.File) {
			if _, err := f.WriteAt(bytes.Repeat([]byte("x"), 32<<20), int64(len(good))); err != nil {
				t.Fatal(err)
			}
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := segmentName(1)
			path := filepath.Join(t.TempDir(), name)
			f, err := os.Create(path)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteString(good); err != nil {
				t.Fatal(err)
			}
			tc.write(t, f)
			fi, err := f.Stat()
			if err != nil {
				t.Fatal(err)
			}
			f.Close()

			var m0, m1 runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&m0)
			last, n, err := scanSegment(path, name, true, maxWriteBytes, osOpenFile)
			runtime.ReadMemStats(&m1)
			alloc := m1.TotalAlloc - m0.TotalAlloc
			t.Logf("%d MiB file: %d KiB allocated; %v", fi.Size()>>20, alloc>>10, err)
			if alloc > 16<<20 {
				t.Fatalf("scanning a %d MiB segment allocated %d MiB", fi.Size()>>20, alloc>>20)
			}

			after, serr := os.Stat(path)
			if serr != nil {
				t.Fatal(serr)
			}
			var tail *segmentTail
			if !tc.cut {
				if !errors.Is(err, ErrCorrupt) || after.Size() != fi.Size() {
					t.Fatalf("scan = %v, segment %d bytes; want ErrCorrupt and the segment as it was", err, after.Size())
				}
				return
			}
			if !errors.As(err, &tail) || tail.torn != 0 || tail.padding != size-len(good) {
				t.Fatalf("scan = %v, want the padding cut", err)
			}
			if last == nil || last.jws+"\n" != lines[2] || n != int64(len(good)) || after.Size() != n {
				t.Fatalf("scan: last %v, good %d, segment %d bytes; want seq 3 and %d", last, n, after.Size(), len(good))
			}
		})
	}
}

// TestScanSegmentAcrossBatches compares the scan with the reference on
// segments longer than one batch of lines (scanRecords decodes
// scanBatchLines at a time, in parallel), damaged on both sides of batch
// boundaries: the parallel decoding must stop exactly where reading line by
// line does.
func TestScanSegmentAcrossBatches(t *testing.T) {
	const n = 2*scanBatchLines + 500
	lines := fuzzLines(n)
	other := signedLines(fuzzKey(), "other", n)
	pad := strings.Repeat("\x00", 5000)
	join := func(ls []string) string { return strings.Join(ls, "") }
	// corrupt flips one base64 character near the start of line i's
	// payload: still a line, no longer a record.
	corrupt := func(i int) string {
		l := []byte(lines[i])
		p := bytes.IndexByte(l, '.') + 10
		l[p] ^= 'A' ^ 'B'
		return string(l)
	}
	cases := map[string]string{
		"clean":           join(lines),
		"padded":          join(lines) + pad,
		"torn at the end": join(lines[:n-1]) + lines[n-1][:200] + pad,
	}
	for _, i := range []int{scanBatchLines - 1, scanBatchLines, scanBatchLines + 1, 2 * scanBatchLines, n - 2} {
		cases[fmt.Sprintf("damaged line %d", i)] = join(lines[:i]) + corrupt(i) + join(lines[i+1:])
		// The right seq, but chained to another log's records.
		cases[fmt.Sprintf("foreign record at line %d", i)] = join(lines[:i]) + other[i] + join(lines[i+1:])
		cases[fmt.Sprintf("torn at line %d", i)] = join(lines[:i]) + lines[i][:100] + pad
		cases[fmt.Sprintf("too long at line %d", i)] = join(lines[:i]) + strings.Repeat("A", MaxRecordBytes+1) + "\n" + join(lines[i:])
	}
	// Lines of the longest a record may be: batches end on their bytes.
	longest := []string{lines[0], lines[1]}
	for i := 2; i < 2+2*scanBatchBytes/MaxRecordBytes+3; i++ {
		longest = append(longest, longestLine(uint64(i+1), ChainHash(strings.TrimSuffix(longest[i-1], "\n"))))
	}
	cases["longest records"] = join(longest) + pad
	// The first line of the second batch (two short lines, then 16 of 256 KiB fill the first).
	cases["longest records, one foreign"] = join(longest[:scanBatchBytes/MaxRecordBytes+2]) + other[scanBatchBytes/MaxRecordBytes+2] + pad
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			want := scanOnce(t, scanSegmentReference, []byte(data), true, 1<<20)
			got := scanOnce(t, scanSegment, []byte(data), true, 1<<20)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("scan differs from the reference:\n got %+v\nwant %+v", got, want)
			}
		})
	}
}
