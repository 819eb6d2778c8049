package evidence

import (
	"context"
	"errors"
	"fmt"
	"io"
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

// Scan reads the directory's records in order.
func (d DirSource) Scan(_ context.Context, from, to time.Time, each func(*decisionlog.Record) error) (int, error) {
	r := decisionlog.NewReader(d.Dir)
	defer r.Close()
	malformed := 0
	for {
		e, err := r.Next()
		if errors.Is(err, io.EOF) {
			return malformed, nil
		}
		if errors.Is(err, decisionlog.ErrMalformed) {
			malformed++
			continue
		}
		if err != nil {
			return malformed, fmt.Errorf("read %s: %w", d.Dir, err)
		}
		if !from.IsZero() && e.Record.Time.Before(from) || !to.IsZero() && e.Record.Time.After(to) {
			continue
		}
		if err := each(e.Record); err != nil {
			return malformed, err
		}
	}
}
