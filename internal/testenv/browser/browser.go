// Package browser drives Debian's Chromium through chromedp for the
// console's end-to-end tests (internal/console, internal/cli): a headless
// browser per test, tabs, screenshots under the repository's bin/console/,
// and the accessibility-tree check of form labels. It is its own package so
// that only the tests that use a browser link chromedp.
package browser

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/accessibility"
	"github.com/chromedp/chromedp"

	"github.com/agentauthz/agentauthz/internal/testenv"
)

// Start starts a headless Chromium for t, bounded by limit (a hung step
// fails the test), and returns its first tab. Where chromium is missing the
// test skips loudly, or fails under CI=true (testenv.LookPath).
func Start(t *testing.T, limit time.Duration) *Tab {
	t.Helper()
	chromium := testenv.LookPath(t, "chromium", "chromium")
	if err := os.MkdirAll(ShotDir(t), 0o755); err != nil {
		t.Fatal(err)
	}
	tctx, cancel := context.WithTimeout(context.Background(), limit)
	t.Cleanup(cancel)
	actx, cancel := chromedp.NewExecAllocator(tctx, chromedp.ExecPath(chromium), chromedp.Headless,
		chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		// The control plane's certificate is from its own operator CA,
		// which this fresh profile does not trust.
		chromedp.IgnoreCertErrors,
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 1000))
	t.Cleanup(cancel)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	// Start the browser now: tabs opened from ctx then share it.
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	return &Tab{T: t, Ctx: ctx}
}

// Tab is one tab of the browser; its methods end the test on an error.
type Tab struct {
	T   *testing.T
	Ctx context.Context
}

// NewTab opens another tab in the same browser (same profile, so the same
// cookies; sign in again to be someone else only in a new browser or after
// signing out).
func (b *Tab) NewTab() *Tab {
	b.T.Helper()
	ctx, cancel := chromedp.NewContext(b.Ctx)
	b.T.Cleanup(cancel)
	return &Tab{T: b.T, Ctx: ctx}
}

// Do runs steps in the tab.
func (b *Tab) Do(steps ...chromedp.Action[chromedp.Void]) {
	b.T.Helper()
	if err := chromedp.Do(b.Ctx, steps...); err != nil {
		b.T.Fatal(err)
	}
}

// Text is the text of the first element sel matches.
func (b *Tab) Text(sel string) string {
	b.T.Helper()
	s, err := chromedp.Run(b.Ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		b.T.Fatalf("text of %s: %v", sel, err)
	}
	return s
}

// Eval evaluates js in the page (awaiting it when it is a promise) and
// returns its string value.
func (b *Tab) Eval(js string) string {
	b.T.Helper()
	s, err := chromedp.Run(b.Ctx, chromedp.Evaluate[string](js, chromedp.EvalAwaitPromise))
	if err != nil {
		b.T.Fatalf("%s: %v", js, err)
	}
	return s
}

// Location is the tab's URL.
func (b *Tab) Location() string {
	b.T.Helper()
	loc, err := chromedp.Run(b.Ctx, chromedp.Location())
	if err != nil {
		b.T.Fatal(err)
	}
	return loc
}

// WaitFor evaluates js until it is true (through navigations), for at most
// limit.
func (b *Tab) WaitFor(js string, limit time.Duration) {
	b.T.Helper()
	deadline := time.Now().Add(limit)
	for {
		ok, err := chromedp.Run(b.Ctx, chromedp.Evaluate[bool](js))
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			b.T.Fatalf("still not %s after %v: %v", js, limit, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// SignIn opens a one-time sign-in link and presses Sign in, leaving the tab
// on the first signed-in page.
func (b *Tab) SignIn(link string) {
	b.T.Helper()
	b.Do(chromedp.Navigate(link),
		chromedp.WaitVisible(chromedp.CSS(`button[type=submit]`)),
		chromedp.Click(chromedp.CSS(`button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`header .who`))) // only a signed-in page has it
}

// ShotDir is the repository's bin/console/, where CI keeps test artifacts.
func ShotDir(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "bin", "console")
		}
		up := filepath.Dir(dir)
		if up == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = up
	}
}

// Shot saves a full-page screenshot as bin/console/NAME.png.
func Shot(t *testing.T, name string) chromedp.Action[chromedp.Void] {
	dir := ShotDir(t)
	return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		png, err := chromedp.FullScreenshot(100)(ctx, tg)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644)
	})
}

// CheckLabels reads the accessibility tree Chromium builds for the page:
// every form control must have an accessible name (a label), or a screen
// reader user cannot fill the form; and there must be at least min of them,
// so a page that lost its forms does not pass.
func CheckLabels(b *Tab, min int) {
	t := b.T
	t.Helper()
	res, err := chromedp.Call(b.Ctx, accessibility.GetFullAXTree, accessibility.GetFullAXTreeParams{})
	if err != nil {
		t.Fatal(err)
	}
	controls := 0
	for _, n := range res.Nodes {
		if n.Role == nil || n.Ignored {
			continue
		}
		role := strings.Trim(string(n.Role.Value), `"`)
		switch role {
		case "textbox", "checkbox", "combobox", "button", "searchbox":
			controls++
			name := ""
			if n.Name != nil {
				name = strings.Trim(string(n.Name.Value), `"`)
			}
			if strings.TrimSpace(name) == "" {
				t.Errorf("a %s on %s has no accessible name", role, b.Location())
			}
		}
	}
	if controls < min {
		t.Errorf("only %d form controls in the accessibility tree of %s, want at least %d", controls, b.Location(), min)
	}
}
