package console

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/accessibility"
	"github.com/chromedp/chromedp"

	"github.com/agentauthz/agentauthz/internal/control"
	"github.com/agentauthz/agentauthz/internal/testenv"
)

// screenshotDir is the repository's bin/, where CI keeps test artifacts.
var screenshotDir = filepath.Join("..", "..", "bin", "console")

// TestBrowser drives Debian's Chromium through the console as a person
// would: open a sign-in link, look at the fleet, open an agent, restrict it
// through the form, and find a decision. Screenshots of each page go to
// bin/console/.
func TestBrowser(t *testing.T) {
	chromium := testenv.LookPath(t, "chromium", "chromium")
	e := newEnv(t)
	link, err := CreateLink(e.auth, "ada", control.RoleAdmin, time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(screenshotDir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx := newBrowser(t, chromium)

	shot := func(name string) chromedp.Action[chromedp.Void] {
		return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			png, err := chromedp.FullScreenshot(100)(ctx, tg)
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(screenshotDir, name+".png"), png, 0o644)
		})
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return s
	}
	do := func(steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatal(err)
		}
	}
	do(chromedp.Navigate(e.srv.URL+"/ui/login?token="+link),
		chromedp.WaitVisible(chromedp.CSS(`button[type=submit]`)),
		shot("1-sign-in"),
		chromedp.Click(chromedp.CSS(`button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`table`)),
		shot("2-fleet"))
	loc, err := chromedp.Run(ctx, chromedp.Location())
	if err != nil {
		t.Fatal(err)
	}
	if h1, fleet := text(`h1`), text(`main`); !strings.HasSuffix(loc, "/ui/fleet") || h1 != "Fleet" ||
		!strings.Contains(fleet, "payments-bot") || !strings.Contains(fleet, "reports-bot") {
		t.Fatalf("after sign-in: %s %q\n%s", loc, h1, fleet)
	}
	do(chromedp.Click(chromedp.CSS(`a[href="/ui/agents/acme.test/payments-bot"]`)),
		chromedp.WaitVisible(chromedp.CSS(`form[action$="/restrict"]`)),
		shot("3-agent"))
	// The decision with an HTML request path shows it as text.
	if agent := text(`main`); !strings.Contains(agent, htmlPath) || !strings.Contains(agent, "dec-2") {
		t.Errorf("agent page lacks its decisions:\n%s", agent)
	}
	checkLabels(ctx, t)

	const form = `form[action$="/restrict"] `
	do(chromedp.Click(chromedp.CSS(form+`input[name=quarantine]`)),
		chromedp.SendKeys(chromedp.CSS(form+`input[name=reason]`), "suspicious payments, incident 7"),
		chromedp.Click(chromedp.CSS(form+`input[name=confirm]`)),
		shot("4-restrict-form"),
		chromedp.Click(chromedp.CSS(form+`button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`.done`)),
		shot("5-restricted"))
	if done := text(`main`); !strings.Contains(done, "Done: restrict.") || !strings.Contains(done, "quarantined") || !strings.Contains(done, "ada (admin)") {
		t.Errorf("after restrict:\n%s", done)
	}
	r, err := e.auth.AgentRestriction("acme.test", "payments-bot")
	if err != nil || r == nil || !r.Quarantined || r.Operator != "ada (admin)" || r.Reason != "suspicious payments, incident 7" {
		t.Fatalf("restriction in the inventory: %+v %v", r, err)
	}
	do(chromedp.Click(chromedp.CSS(`a[href="/ui/decisions/dec-2"]`)),
		chromedp.WaitVisible(chromedp.CSS(`pre.record`)),
		shot("6-decision"))
	if decision := text(`main`); !strings.Contains(decision, htmlPath) || !strings.Contains(decision, "scope_missing") {
		t.Errorf("decision page:\n%s", decision)
	}
	// An auditor, in a new tab, reads the agent but gets no forms.
	alink, err := CreateLink(e.auth, "audrey", control.RoleAuditor, time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	actx2, cancel2 := chromedp.NewContext(ctx)
	defer cancel2()
	ctx = actx2
	do(chromedp.Navigate(e.srv.URL+"/ui/login?token="+alink),
		chromedp.WaitVisible(chromedp.CSS(`button[type=submit]`)),
		chromedp.Click(chromedp.CSS(`button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`table`)),
		chromedp.Click(chromedp.CSS(`a[href="/ui/agents/acme.test/payments-bot"]`)),
		chromedp.WaitVisible(chromedp.CSS(`h2`)),
		shot("7-agent-auditor"))
	if page := text(`body`); !strings.Contains(page, "audrey (auditor)") || strings.Contains(page, "Actions") || !strings.Contains(page, "quarantined") {
		t.Errorf("agent page for an auditor:\n%s", page)
	}
	t.Logf("screenshots in %s", screenshotDir)
}

// newBrowser starts a headless Chromium for t, bounded by a deadline (a
// hung step fails the test).
func newBrowser(t *testing.T, chromium string) context.Context {
	t.Helper()
	tctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
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
	return ctx
}

// checkLabels reads the accessibility tree Chromium builds for the page:
// every form control must have an accessible name (a label), or a screen
// reader user cannot fill the form.
func checkLabels(ctx context.Context, t *testing.T) {
	t.Helper()
	res, err := chromedp.Call(ctx, accessibility.GetFullAXTree, accessibility.GetFullAXTreeParams{})
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
				t.Errorf("a %s on the agent page has no accessible name", role)
			}
		}
	}
	if controls < 8 {
		t.Errorf("only %d form controls in the accessibility tree of the agent page", controls)
	}
}
