package evidence

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"time"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
)

// DirSource is a replica's log directory.
type DirSource struct {
	Dir  string
	Keys decisionlog.KeySet // the keys the log must verify with
}

// Verify runs audit verify's checks over the directory.
func (d DirSource) Verify(context.Context) (LogSource, error) {
	res, err := decisionlog.Verify(d.Dir, d.Keys)
	if err != nil {
		return LogSource{}, fmt.Errorf("verify %s: %w", d.Dir, err)
	}
	src := LogSource{Dir: d.Dir, Format: res.Format, Records: res.Records, Checkpoint: res.Checkpoint, Root: res.Root, Verified: res.Problem == nil}
	if res.Problem != nil {
		src.Problem = res.Problem.Error()
	}
	return src, nil
}

// scanBatch is a run of consecutive lines, decoded by one worker and
// counted in log order.
type scanBatch struct {
	lines     []string
	recs      []Scanned
	malformed int
	done      chan struct{}
}

const scanBatchLines = 512

// Scan reads the directory's records in order. Decoding a record costs more
// than anything else the report does with it, so lines are decoded on every
// core, a batch at a time, and handed to each in log order; at most a few
// batches per core are in memory.
func (d DirSource) Scan(ctx context.Context, from, to time.Time, each func(Scanned) error) (int, error) {
	r := decisionlog.NewReader(d.Dir)
	defer r.Close()
	workers := runtime.GOMAXPROCS(0)
	work, ordered := make(chan *scanBatch, 2*workers), make(chan *scanBatch, 4*workers)
	stop := make(chan struct{})
	var readErr error
	go func() { // the reader
		defer close(ordered)
		defer close(work)
		b := &scanBatch{done: make(chan struct{})}
		send := func() bool {
			select {
			case work <- b:
			case <-stop:
				return false
			}
			select {
			case ordered <- b:
			case <-stop:
				return false
			}
			b = &scanBatch{done: make(chan struct{})}
			return true
		}
		for {
			e, err := r.NextRaw()
			if errors.Is(err, io.EOF) {
				break
			}
			if errors.Is(err, decisionlog.ErrMalformed) {
				b.malformed++
				continue
			}
			if err != nil {
				readErr = fmt.Errorf("read %s: %w", d.Dir, err)
				return
			}
			b.lines = append(b.lines, e.Raw)
			if len(b.lines) == scanBatchLines && !send() {
				return
			}
		}
		send()
	}()
	for range workers {
		go func() {
			var dec leanDecoder
			for b := range work {
				for _, l := range b.lines {
					rec, err := dec.decode(l)
					switch {
					case err != nil:
						b.malformed++
					case !from.IsZero() && rec.Time.Before(from) || !to.IsZero() && rec.Time.After(to):
					default:
						b.recs = append(b.recs, Scanned{Record: rec, Line: l})
					}
				}
				b.lines = nil
				close(b.done)
			}
		}()
	}
	malformed := 0
	for b := range ordered {
		<-b.done
		malformed += b.malformed
		for _, rec := range b.recs {
			if err := each(rec); err != nil {
				close(stop)
				for range ordered { // let the reader see stop and end
				}
				return malformed, err
			}
		}
	}
	return malformed, readErr
}
