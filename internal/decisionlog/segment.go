package decisionlog

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
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

// Preallocation. The writer overwrites zeros that are already on disk, so
// the per-batch fdatasync flushes data only: no size change, no block
// allocation, no unwritten-extent conversion, hence no file-system journal
// commit on the answer path. (fallocate(2) is not enough: it leaves
// unwritten extents whose conversion on first write is journalled again.)
//
// A background preparer writes the NEXT segment's zeros under a name that
// readers ignore (prepTmpName while it is written, prepReadyName once it is
// complete and fsynced); rotation renames the ready file to the new
// segment's name. The file left ready at Close is taken by the next Open.
//
// Each of the preparer's flushes queues the writer's next fdatasync behind
// it, so it writes at the pace the log fills, not in one burst: small pieces
// kept ahead of the current segment's fill (or age) by prepAhead, so the next
// segment is ready when the current one is three quarters full. Small pieces
// keep the writer's fdatasync tail short (measured in docs/performance.md,
// "The disk, the VM and the tail").
const (
	prepTmpName   = ".next-segment.tmp"
	prepReadyName = ".next-segment"
	// prepPiece is what the preparer writes (and flushes) at a time while
	// it keeps pace; prepChunk when it catches up: no current segment yet,
	// an unpreallocated one that rotates after fallbackSegmentBytes, or
	// more than prepBehind short of its target.
	prepPiece  = 128 << 10
	prepChunk  = 1 << 20
	prepBehind = 8 << 20
	// prepAhead and prepLead set the target: prepAhead × the current
	// segment's fill fraction of the next segment, plus prepLead.
	prepAhead = 4.0 / 3
	prepLead  = 2 << 20
	// A preparer that is ahead looks again after prepPoll, then ever less
	// often while it stays ahead, up to prepPollMax: an idle log does not
	// wake it 200 times a second, and a burst that follows is met well
	// before the current segment fills (and by catch-up pieces if not).
	prepPoll    = 5 * time.Millisecond
	prepPollMax = 500 * time.Millisecond
	// prepPauseMin is the least the preparer rests after each piece; it
	// rests as long as the piece took, so it holds the disk at most about
	// half of the time.
	prepPauseMin = 2 * time.Millisecond
	// fallbackSegmentBytes caps a segment that had to be started without
	// preallocation (none ready: the very first segment of a log, or
	// rotation faster than preparation). It is plainly appended to, with
	// the slower flushes that needs, so it is kept short: the next rotation
	// then takes a prepared file.
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
	now      func() time.Time
	maxAge   time.Duration

	// The current segment's progress, reported by the writer: durable
	// bytes, the size it rotates at (0: none yet) and its start (Unix ns).
	fill, limit, began atomic.Int64

	mu    sync.Mutex
	ready segmentFile // the open prepReadyName file, nil when none is ready

	paced  bool  // EXPERIMENT
	piece  int64 // EXPERIMENT
	noRest bool  // EXPERIMENT

	kick chan struct{}
	stop chan struct{}
	done chan struct{}
}

func newPreparer(o Options, logger hclog.Logger) *preparer {
	return &preparer{
		dir: o.Dir, size: o.SegmentMaxBytes, open: o.openFile, logger: logger,
		hook: o.prepHook, retryMin: o.retryMin, now: o.Now, maxAge: o.SegmentMaxAge,
		paced: o.prepPaced, piece: cmp.Or(o.prepPiece, prepPiece), noRest: o.prepNoRest,
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
// it returns nil when none is ready. The caller syncs the directory. The
// segment started at now with what take returns is the one the next
// preparation keeps pace with.
func (p *preparer) take(path string, now time.Time) (segmentFile, int64, error) {
	p.mu.Lock()
	f := p.ready
	p.ready = nil
	var err error
	if f != nil {
		err = os.Rename(filepath.Join(p.dir, prepReadyName), path)
	}
	p.mu.Unlock()
	limit := p.size
	if f == nil || err != nil {
		limit = min(p.size, fallbackSegmentBytes)
	}
	p.fill.Store(0)
	p.began.Store(now.UnixNano())
	p.limit.Store(limit)
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

// progress records that the current segment holds fill durable bytes.
func (p *preparer) progress(fill int64) { p.fill.Store(fill) }

// target is how many bytes of the next segment should be written by now,
// and whether to catch up with large pieces.
func (p *preparer) target(off int64) (int64, bool) {
	limit := p.limit.Load()
	if limit < p.size {
		return p.size, true
	}
	frac := float64(p.fill.Load()) / float64(limit)
	if p.maxAge > 0 {
		frac = max(frac, float64(p.now().UnixNano()-p.began.Load())/float64(p.maxAge))
	}
	t := min(p.size, int64(frac*prepAhead*float64(p.size))+prepLead)
	return t, t-off > prepBehind
}

// prepare writes p.size zero bytes to prepTmpName piece by piece, each
// flushed, resting after each piece as long as it took, and renames the
// file to prepReadyName.
func (p *preparer) prepare() (err error) {
	if p.paced {
		return p.preparePaced()
	}
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
	zeros := make([]byte, min(p.size, p.piece))
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
		rest := max(time.Since(t0), prepPauseMin)
		if p.noRest {
			rest = 0
		}
		t := time.NewTimer(rest)
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

func (p *preparer) preparePaced() (err error) {
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
	zeros := make([]byte, min(p.size, prepChunk))
	poll := prepPoll
	for off := int64(0); off < p.size; {
		rest := poll
		poll = min(2*poll, prepPollMax)
		if target, catchUp := p.target(off); off < target {
			n := min(int64(prepPiece), int64(len(zeros)), p.size-off)
			if catchUp {
				n = min(int64(len(zeros)), p.size-off)
			}
			t0 := time.Now()
			if _, err := f.WriteAt(zeros[:n], off); err != nil {
				return fmt.Errorf("write %s: %w", prepTmpName, err)
			}
			// Flushed piece by piece: the disk sees a steady trickle, not
			// one long burst when the whole file is synced.
			if err := f.Sync(); err != nil {
				return fmt.Errorf("fsync %s: %w", prepTmpName, err)
			}
			off += n
			rest, poll = max(time.Since(t0), prepPauseMin), prepPoll
		}
		t := time.NewTimer(rest)
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
	zeros := make([]byte, min(to-from, prepChunk))
	for off := from; off < to; {
		n := min(int64(len(zeros)), to-off)
		if _, err := f.WriteAt(zeros[:n], off); err != nil {
			return err
		}
		off += n
	}
	return nil
}
