package console

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/agentauthz/agentauthz/internal/control"
	"github.com/agentauthz/agentauthz/internal/testenv"
)

// browserSession is one signed-in Chromium tab.
type browserSession struct {
	t   *testing.T
	ctx context.Context
}

func (b *browserSession) do(steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	if err := chromedp.Do(b.ctx, steps...); err != nil {
		b.t.Fatal(err)
	}
}

func (b *browserSession) text(sel string) string {
	b.t.Helper()
	s, err := chromedp.Run(b.ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		b.t.Fatalf("text of %s: %v", sel, err)
	}
	return s
}

func (b *browserSession) eval(js string) string {
	b.t.Helper()
	s, err := chromedp.Run(b.ctx, chromedp.Evaluate[string](js))
	if err != nil {
		b.t.Fatalf("%s: %v", js, err)
	}
	return s
}

// waitFor evaluates js until it is true (through navigations), for at most
// 10 s.
func (b *browserSession) waitFor(js string) {
	b.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, err := chromedp.Run(b.ctx, chromedp.Evaluate[bool](js))
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("still not %s: %v", js, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func shot(name string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		png, err := chromedp.FullScreenshot(100)(ctx, tg)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(screenshotDir, name+".png"), png, 0o644)
	})
}

// signInTab opens a one-time link for name with role in a new tab of ctx.
func signInTab(ctx context.Context, t *testing.T, e *env, name string, role control.Role) *browserSession {
	t.Helper()
	link, err := CreateLink(e.auth, name, role, time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tab, cancel := chromedp.NewContext(ctx)
	t.Cleanup(cancel)
	b := &browserSession{t: t, ctx: tab}
	b.do(chromedp.Navigate(e.srv.URL+"/ui/login?token="+link),
		chromedp.WaitVisible(chromedp.CSS(`button[type=submit]`)),
		chromedp.Click(chromedp.CSS(`button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`header .who`))) // only a signed-in page has it
	return b
}

// TestBrowserIssueLiveKeyboard: an admin issues an agent through the form
// (with a CSR), sees the agent's first decision arrive in the live tail,
// and opens it from there; the pages work from the keyboard alone; a
// responder's agent page has the restrict form but no decisions and no
// issuing forms. Screenshots go to bin/console/.
func TestBrowserIssueLiveKeyboard(t *testing.T) {
	chromium := testenv.LookPath(t, "chromium", "chromium")
	e := newEnv(t)
	if err := os.MkdirAll(screenshotDir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx := newBrowser(t, chromium)
	a := signInTab(ctx, t, e, "ada", control.RoleAdmin)

	// Keyboard: Tab walks the header's links in order, Enter follows one.
	a.do(chromedp.Navigate(e.srv.URL+"/ui/fleet"), chromedp.WaitVisible(chromedp.CSS(`main table`)))
	var order []string
	for range 5 {
		a.do(chromedp.KeyEvent("\t"))
		order = append(order, a.eval(`document.activeElement ? document.activeElement.textContent.trim() : "(nothing)"`))
	}
	if got := strings.Join(order, ","); got != "agentauthz console,Fleet,Decisions,Live,Compliance" {
		t.Errorf("Tab order from the top of the fleet page: %s", got)
	}
	a.do(chromedp.KeyEvent("\r"), chromedp.WaitVisible(chromedp.CSS(`form[action="/ui/compliance/evidence"]`)))
	if loc, _ := chromedp.Run(a.ctx, chromedp.Location()); !strings.HasSuffix(loc, "/ui/compliance") {
		t.Errorf("Enter on the focused Compliance link went to %s", loc)
	}
	// The search form is filled and sent from the keyboard: focus on the
	// first field, type, Enter submits.
	a.do(chromedp.Navigate(e.srv.URL+"/ui/decisions"), chromedp.WaitVisible(chromedp.CSS(`input[name=decision_id]`)),
		chromedp.Focus(chromedp.CSS(`input[name=decision_id]`)), chromedp.KeyEvent("dec-1\r"))
	a.waitFor(`location.search.includes("decision_id=dec-1") && document.readyState === "complete"`)
	if rows := a.eval(`String(document.querySelectorAll("main tbody tr").length)`); rows != "1" {
		t.Errorf("search for dec-1 typed from the keyboard: %s rows", rows)
	}
	checkLabels(a.ctx, t)

	// Issue ledger-bot from a CSR.
	csr, _ := newCSR(t)
	const f = `form[action="/ui/issue"] `
	a.do(chromedp.Navigate(e.srv.URL+"/ui/fleet"), chromedp.WaitVisible(chromedp.CSS(`a[href="/ui/issue"]`)),
		chromedp.Click(chromedp.CSS(`a[href="/ui/issue"]`)), chromedp.WaitVisible(chromedp.CSS(f+`input[name=agent_id]`)),
		chromedp.SendKeys(chromedp.CSS(f+`input[name=agent_id]`), "ledger-bot"),
		chromedp.SendKeys(chromedp.CSS(f+`input[name=scopes]`), "ledger:read ledger:write"),
		chromedp.SendKeys(chromedp.CSS(f+`input[name=owner]`), "team-ledger"),
		chromedp.SetValue(chromedp.CSS(f+`textarea[name=csr]`), csr),
		chromedp.SendKeys(chromedp.CSS(f+`input[name=reason]`), "CHG-42 new ledger agent"),
		chromedp.Click(chromedp.CSS(f+`input[name=confirm]`)),
		shot("8-issue-form"),
		chromedp.Click(chromedp.CSS(f+`button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`.done`)),
		shot("9-issued"))
	if page := a.text(`main`); !strings.Contains(page, "Done: issue.") || !strings.Contains(page, "ledger:write") || !strings.Contains(page, "ada (admin)") {
		t.Errorf("after issue:\n%s", page)
	}
	if d, err := e.auth.Show("acme.test", "ledger-bot"); err != nil || d.Certificates[0].Operator != "ada (admin)" {
		t.Fatalf("ledger-bot in the inventory: %+v %v", d, err)
	}

	// The live tail shows ledger-bot's first decision when it is shipped.
	a.do(chromedp.Navigate(e.srv.URL + "/ui/decisions/live"))
	a.waitFor(`document.readyState === "complete" && document.getElementById("tail-status").textContent.startsWith("Live")`)
	shipMore(t, e.rs, "replica-ledger", "ledger-bot", 1)
	a.do(chromedp.WaitVisible(chromedp.CSS(`#tail-rows tr.new a[href="/ui/decisions/replica-ledger-0"]`)),
		shot("10-live-tail"))
	if first := a.text(`#tail-rows tr:first-child`); !strings.Contains(first, "ledger-bot") || !strings.Contains(first, "GET /v1/reports") {
		t.Errorf("the live tail's first row: %q", first)
	}
	if status := a.text(`#tail-status`); !strings.Contains(status, "1 new") {
		t.Errorf("live status: %q", status)
	}
	a.do(chromedp.Click(chromedp.CSS(`a[href="/ui/decisions/replica-ledger-0"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#receipt`)), shot("11-decision-receipt"))
	if v := a.text(`#verified`); v != "verified" {
		t.Errorf("the shipped decision's verification: %q", v)
	}

	// The responder's page: restrict, lift, revoke; no decisions, no issuing.
	r := signInTab(ctx, t, e, "rosa", control.RoleResponder)
	r.do(chromedp.Click(chromedp.CSS(`a[href="/ui/agents/acme.test/ledger-bot"]`)),
		chromedp.WaitVisible(chromedp.CSS(`form[action$="/restrict"]`)),
		shot("12-agent-responder"))
	page := r.text(`body`)
	if !strings.Contains(page, "rosa (responder)") || !strings.Contains(page, "does not read decision records") ||
		strings.Contains(page, "Renew") || strings.Contains(page, "Reissue") {
		t.Errorf("agent page for a responder:\n%s", page)
	}
	if nav := r.text(`header nav`); strings.Contains(nav, "Decisions") || strings.Contains(nav, "Compliance") || !strings.Contains(nav, "Fleet") {
		t.Errorf("responder's navigation: %q", nav)
	}
}
