package decisionlog

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
)

// NULs are damage wherever they are not the last segment's padding: inside
// a sealed segment, at its end, or followed by data in the last segment.
// Verify names the segment and offset; Reader reports the line and reads on.
func TestNULOutsidePaddingIsDamage(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(t *testing.T, o Options) (seg string, off int64)
		seq   uint64
		reads int // records a Reader still returns
	}{
		{"zeroed bytes in a sealed segment", func(t *testing.T, o Options) (string, int64) {
			s := readSeg(t, o, 6)
			off := int64(len(s.lines[0]) + len(s.lines[1]) + 10)
			zeroAt(t, s.path, off, 40)
			return segmentName(6), off
		}, 8, 14},
		{"padding left on a sealed segment", func(t *testing.T, o Options) (string, int64) {
			s := readSeg(t, o, 6)
			off := int64(len(strings.Join(s.lines, "")))
			zeroAt(t, s.path, off, 4096)
			return segmentName(6), off
		}, 11, 15},
		{"zeros then records in the last segment", func(t *testing.T, o Options) (string, int64) {
			s := readSeg(t, o, 11)
			off := int64(len(s.lines[0]))
			zeroAt(t, s.path, off, int64(len(s.lines[1])))
			return segmentName(11), off
		}, 12, 11}, // the reader stops at the first NUL of the last segment
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, ks := tamperLog(t)
			seg, off := tc.edit(t, o)
			res, err := Verify(o.Dir, ks)
			if err != nil {
				t.Fatal(err)
			}
			p := res.Problem
			if p == nil || p.Kind != KindNULBytes || p.Seq != tc.seq || p.Segment != seg || p.Offset != off ||
				!strings.Contains(p.Detail, fmt.Sprintf("offset %d", off)) {
				t.Fatalf("problem %+v, want nul_bytes at seq %d in %s offset %d", p, tc.seq, seg, off)
			}
			r := NewReader(o.Dir)
			defer r.Close()
			n, bad := 0, 0
			for {
				_, err := r.Next()
				if errors.Is(err, io.EOF) {
					break
				}
				if errors.Is(err, ErrMalformed) {
					if !strings.Contains(err.Error(), fmt.Sprintf("offset %d", off)) || !strings.Contains(err.Error(), seg) {
						t.Fatalf("reader error %v does not name %s offset %d", err, seg, off)
					}
					bad++
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				n++
			}
			if n != tc.reads {
				t.Fatalf("reader: %d records, %d damaged lines; want %d records", n, bad, tc.reads)
			}
		})
	}
}

func zeroAt(t *testing.T, path string, off, n int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(make([]byte, n), off); err != nil {
		t.Fatal(err)
	}
}
