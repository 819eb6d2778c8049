package policy

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/agentauthz/agentauthz/internal/filewatch"
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
	// WalkDir does not descend into a symlinked root (--policies pointing at a
	// link): watch what it points to. Swapping the link itself is seen on SIGHUP.
	root, err := filepath.EvalSymlinks(e.cfg.Dir)
	if err != nil {
		return fmt.Errorf("policy: watch %s: %w", e.cfg.Dir, err)
	}
	err = filewatch.Tree(ctx, root, filewatch.Options{Debounce: reloadDebounce, Logger: e.log.With("source", "policy directory")},
		func() { _ = e.Reload() }) // logged and counted inside
	if err != nil {
		return fmt.Errorf("policy: watch %s: %w", e.cfg.Dir, err)
	}
	return nil
}
