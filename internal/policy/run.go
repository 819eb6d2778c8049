package policy

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Run watches the policy directory (fsnotify) or polls the bundle every
// BundlePollInterval, reloading on change, until ctx is done. Reload errors
// are logged and counted, never returned: the previous policy keeps serving.
func (e *Engine) Run(ctx context.Context) error {
	if e.bundle != nil {
		return e.pollBundle(ctx)
	}
	return e.watchDir(ctx)
}

func (e *Engine) pollBundle(ctx context.Context) error {
	t := time.NewTicker(e.cfg.BundlePollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			_ = e.Reload() // logged and counted inside
		}
	}
}

func (e *Engine) watchDir(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("policy: watch %s: %w", e.cfg.Dir, err)
	}
	defer w.Close()
	// WalkDir does not descend into a symlinked root (--policies pointing at a
	// link): watch what it points to. Swapping the link itself is seen on SIGHUP.
	root, err := filepath.EvalSymlinks(e.cfg.Dir)
	if err != nil {
		return fmt.Errorf("policy: watch %s: %w", e.cfg.Dir, err)
	}
	if err := watchDir(w, root); err != nil {
		return fmt.Errorf("policy: watch %s: %w", e.cfg.Dir, err)
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
				_ = watchDir(w, ev.Name) // a new subdirectory; errors for files are harmless
			}
			debounce.Reset(reloadDebounce)
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			e.log.Warn("policy directory watch error", "error", err)
		case <-debounce.C:
			_ = e.Reload() // logged and counted inside
		}
	}
}
