package decisionlog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// segmentFile is what the writer needs of an open file; tests wrap it to
// inject write and flush failures.
type segmentFile interface {
	WriteAt(p []byte, off int64) (int, error)
	// Sync is fsync: data and all metadata (used when a file's size
	// changes on purpose: sealing, recovery, preparation).
	Sync() error
	// Datasync is fdatasync on Linux, Sync elsewhere: the per-batch flush.
	Datasync() error
	Truncate(size int64) error
	Close() error
}

// openFunc opens a file the log writes in its directory (os.OpenFile by
// default; tests inject failures).
type openFunc func(name string, flag int, perm os.FileMode) (segmentFile, error)

// osSegment is a segmentFile on the real file system.
type osSegment struct{ *os.File }

func (f osSegment) Datasync() error { return datasync(f.File) }

func osOpenFile(name string, flag int, perm os.FileMode) (segmentFile, error) {
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return osSegment{f}, nil
}

// Preallocation: the writer overwrites zeros already on disk. A background
// preparer writes the next segment's zeros under a name readers ignore
// (prepTmpName, then prepReadyName once complete and fsynced), in flushed
// pieces with a rest after each; rotation renames it to the new segment's
// name, and a file left ready at Close is taken by the next Open. Why, and
// why nothing more: docs/decision-log.md, "Why the log is built this way".
const (
	prepTmpName   = ".next-segment.tmp"
	prepReadyName = ".next-segment"
	prepPiece     = 128 << 10
	prepPauseMin  = 2 * time.Millisecond
	// fallbackSegmentBytes caps a segment started without preallocation
	// (none ready: the first segment of a log, or rotation faster than
	// preparation), so that the next rotation soon takes a prepared file.
	fallbackSegmentBytes = 1 << 20
)

// preparer keeps one zero-filled segment file ready for the next rotation.
type preparer struct {
	dir      string
	size     int64
	open     openFunc
	logger   hclog.Logger
	hook     func(stop <-chan struct{}) error // test hook, before each preparation
	retryMin time.Duration

	mu    sync.Mutex
	ready segmentFile // the open prepReadyName file, nil when none is ready

	kick chan struct{}
	stop chan struct{}
	done chan struct{}
}

func newPreparer(o Options, logger hclog.Logger) *preparer {
	return &preparer{
		dir: o.Dir, size: o.SegmentMaxBytes, open: o.openFile, logger: logger,
		hook: o.prepHook, retryMin: o.retryMin,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
	}
}

// start removes a half-written file, adopts a ready one left by an earlier
// run, and starts preparing in the background.
func (p *preparer) start() {
	os.Remove(filepath.Join(p.dir, prepTmpName))
	p.adopt()
	go p.run()
	p.poke()
}

// adopt takes prepReadyName as the ready file if it exists with the right
// size (it got that name only once complete and fsynced), else removes it.
func (p *preparer) adopt() bool {
	ready := filepath.Join(p.dir, prepReadyName)
	fi, err := os.Lstat(ready)
	if err != nil {
		return false
	}
	if fi.Mode().IsRegular() && fi.Size() == p.size {
		if f, err := p.open(ready, os.O_WRONLY, 0o640); err == nil {
			p.mu.Lock()
			p.ready = f
			p.mu.Unlock()
			return true
		}
	}
	os.Remove(ready)
	return false
}

func (p *preparer) poke() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// isReady reports whether take would return a prepared file.
func (p *preparer) isReady() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ready != nil
}

// take renames the ready file to path and returns it open, with its size;
// it returns nil when none is ready, and starts preparing the next. The
// caller syncs the directory.
func (p *preparer) take(path string) (segmentFile, int64, error) {
	p.mu.Lock()
	f := p.ready
	p.ready = nil
	var err error
	if f != nil {
		err = os.Rename(filepath.Join(p.dir, prepReadyName), path)
	}
	p.mu.Unlock()
	p.poke()
	if f == nil {
		return nil, 0, nil
	}
	if err != nil {
		// Left in place: the next preparation adopts it if it can.
		f.Close()
		return nil, 0, err
	}
	return f, p.size, nil
}

// close stops the preparer. A file being written is removed; a ready one is
// kept for the next Open.
func (p *preparer) close() {
	close(p.stop)
	<-p.done
	p.mu.Lock()
	if p.ready != nil {
		p.ready.Close()
		p.ready = nil
	}
	p.mu.Unlock()
}

var errStopped = errors.New("stopped")

func (p *preparer) run() {
	defer close(p.done)
	wait := p.retryMin
	for {
		select {
		case <-p.stop:
			return
		case <-p.kick:
		}
		if p.isReady() {
			continue
		}
		err := p.prepare()
		if err == nil {
			wait = p.retryMin
			continue
		}
		if errors.Is(err, errStopped) {
			return
		}
		p.logger.Warn("decision log: could not prepare the next segment; the next rotation appends without preallocation", "error", err, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-p.stop:
			t.Stop()
			return
		case <-t.C:
		}
		if wait *= 2; wait > 5*time.Second {
			wait = 5 * time.Second
		}
		p.poke()
	}
}

// prepare writes p.size zero bytes to prepTmpName piece by piece, each
// flushed, resting after each piece as long as it took, and renames the
// file to prepReadyName.
func (p *preparer) prepare() (err error) {
	if p.hook != nil {
		if err := p.hook(p.stop); err != nil {
			return err
		}
	}
	if p.adopt() {
		return nil // a ready file whose take failed (rename refused)
	}
	ready := filepath.Join(p.dir, prepReadyName)
	tmp := filepath.Join(p.dir, prepTmpName)
	f, err := p.open(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	zeros := make([]byte, min(p.size, prepPiece))
	for off := int64(0); off < p.size; {
		n := min(int64(len(zeros)), p.size-off)
		t0 := time.Now()
		if _, err := f.WriteAt(zeros[:n], off); err != nil {
			return fmt.Errorf("write %s: %w", prepTmpName, err)
		}
		if err := f.Sync(); err != nil {
			return fmt.Errorf("fsync %s: %w", prepTmpName, err)
		}
		off += n
		t := time.NewTimer(max(time.Since(t0), prepPauseMin))
		select {
		case <-p.stop:
			t.Stop()
			return errStopped
		case <-t.C:
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := os.Rename(tmp, ready); err != nil {
		return fmt.Errorf("rename %s: %w", prepTmpName, err)
	}
	p.ready = f
	return nil
}

// zeroFill writes zeros over [from, to) of f.
func zeroFill(f segmentFile, from, to int64) error {
	zeros := make([]byte, min(to-from, prepPiece))
	for off := from; off < to; {
		n := min(int64(len(zeros)), to-off)
		if _, err := f.WriteAt(zeros[:n], off); err != nil {
			return err
		}
		off += n
	}
	return nil
}
