// Package filewatch tells a reloader when files it reads may have changed:
// on a file-system notification for one of them (debounced, since a writer
// produces several events) and on every interval, which also covers file
// systems without notifications. The reloader decides whether the contents
// really changed; filewatch only says when to look.
package filewatch

import (
	"context"
	"io/fs"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/hashicorp/go-hclog"
)

// DefaultDebounce is how long events are gathered before one call.
const DefaultDebounce = 50 * time.Millisecond

// Options tune Run. Zero values take the defaults.
type Options struct {
	// Interval between calls without any event; 0 means no periodic call.
	Interval time.Duration
	// Debounce gathers a burst of events into one call.
	Debounce time.Duration
	// Logger receives watch errors (the periodic call still runs).
	Logger hclog.Logger
}

// Run calls changed whenever one of paths may have changed, until ctx ends.
// It watches the directories holding paths, not the files: writers replace
// a file by rename, and Kubernetes swaps a mounted Secret's "..data" link,
// which a watch on the file itself would lose.
func Run(ctx context.Context, paths []string, opt Options, changed func()) {
	if opt.Debounce <= 0 {
		opt.Debounce = DefaultDebounce
	}
	if opt.Logger == nil {
		opt.Logger = hclog.NewNullLogger()
	}
	wanted := make(map[string]bool, len(paths))
	dirs := make(map[string]bool, len(paths))
	for _, p := range paths {
		p = filepath.Clean(p)
		wanted[p] = true
		dirs[filepath.Dir(p)] = true
	}

	var events <-chan fsnotify.Event
	var errs <-chan error
	if w, err := fsnotify.NewWatcher(); err != nil {
		opt.Logger.Warn("cannot watch files; re-reading periodically only", "files", paths, "error", err)
	} else {
		defer w.Close()
		ok := true
		for d := range dirs {
			if err := w.Add(d); err != nil {
				opt.Logger.Warn("cannot watch directory; re-reading periodically only", "dir", d, "error", err)
				ok = false
			}
		}
		if ok || len(w.WatchList()) > 0 {
			events, errs = w.Events, w.Errors
		}
	}

	var tick <-chan time.Time
	if opt.Interval > 0 {
		t := time.NewTicker(opt.Interval)
		defer t.Stop()
		tick = t.C
	}
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	defer debounce.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
			changed()
		case <-debounce.C:
			changed()
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			name := filepath.Clean(ev.Name)
			if wanted[name] || strings.HasPrefix(filepath.Base(name), "..") {
				debounce.Reset(opt.Debounce)
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			opt.Logger.Warn("file watch error", "files", paths, "error", err)
		}
	}
}

// Tree calls changed (debounced) on any event under root, a directory tree:
// new subdirectories are watched as they appear; hidden ones (".git") are
// not. Unlike Run, a watch that cannot be set up is an error: a tree has no
// cheap periodic check to fall back on.
func Tree(ctx context.Context, root string, opt Options, changed func()) error {
	if opt.Debounce <= 0 {
		opt.Debounce = DefaultDebounce
	}
	if opt.Logger == nil {
		opt.Logger = hclog.NewNullLogger()
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	if err := addTree(w, root); err != nil {
		return err
	}
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	defer debounce.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if ev.Has(fsnotify.Create) {
				_ = addTree(w, ev.Name) // a new subdirectory; errors for files are harmless
			}
			debounce.Reset(opt.Debounce)
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			opt.Logger.Warn("directory watch error", "dir", root, "error", err)
		case <-debounce.C:
			changed()
		}
	}
}

func addTree(w *fsnotify.Watcher, dir string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != dir && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			return w.Add(p)
		}
		return nil
	})
}
