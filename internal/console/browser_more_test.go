package console

import (
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/agentauthz/agentauthz/internal/control"
	"github.com/agentauthz/agentauthz/internal/testenv/browser"
)

// signInTab opens a one-time link for name with role in a new tab of b.
func signInTab(b *browser.Tab, e *env, name string, role control.Role) *browser.Tab {
	b.T.Helper()
	link, err := CreateLink(e.auth, name, role, time.Minute, time.Now())
	if err != nil {
		b.T.Fatal(err)
	}
	tab := b.NewTab()
	tab.SignIn(e.srv.URL + "/ui/login?token=" + link)
	return tab
}

// TestBrowserIssueLiveKeyboard: an admin issues an agent through the form
// (with a CSR), sees the agent's first decision arrive in the live tail,
// and opens it from there; the pages work from the keyboard alone; a
// responder's agent page has the restrict form but no decisions and no
// issuing forms. Screenshots go to bin/console/.
func TestBrowserIssueLiveKeyboard(t *testing.T) {
	b := browser.Start(t, 90*time.Second)
	e := newEnv(t)
	shot := func(name string) chromedp.Action[chromedp.Void] { return browser.Shot(t, name) }
	a := signInTab(b, e, "ada", control.RoleAdmin)

	// Keyboard: Tab walks the header's links in order, Enter follows one.
	a.Do(chromedp.Navigate(e.srv.URL+"/ui/fleet"), chromedp.WaitVisible(chromedp.CSS(`main table`)))
	var order []string
	for range 5 {
		a.Do(chromedp.KeyEvent("\t"))
		order = append(order, a.Eval(`document.activeElement ? document.activeElement.textContent.trim() : "(nothing)"`))
	}
	if got := strings.Join(order, ","); got != "agentauthz console,Fleet,Decisions,Live,Compliance" {
		t.Errorf("Tab order from the top of the fleet page: %s", got)
	}
	a.Do(chromedp.KeyEvent("\r"), chromedp.WaitVisible(chromedp.CSS(`form[action="/ui/compliance/evidence"]`)))
	if loc := a.Location(); !strings.HasSuffix(loc, "/ui/compliance") {
		t.Errorf("Enter on the focused Compliance link went to %s", loc)
	}
	// The search form is filled and sent from the keyboard: focus on the
	// first field, type, Enter submits.
	a.Do(chromedp.Navigate(e.srv.URL+"/ui/decisions"), chromedp.WaitVisible(chromedp.CSS(`input[name=decision_id]`)),
		chromedp.Focus(chromedp.CSS(`input[name=decision_id]`)), chromedp.KeyEvent("dec-1\r"))
	a.WaitFor(`location.search.includes("decision_id=dec-1") && document.readyState === "complete"`, 10*time.Second)
	if rows := a.Eval(`String(document.querySelectorAll("main tbody tr").length)`); rows != "1" {
		t.Errorf("search for dec-1 typed from the keyboard: %s rows", rows)
	}
	browser.CheckLabels(a, 8)

	// Issue ledger-bot from a CSR.
	csr, _ := newCSR(t)
	const f = `form[action="/ui/issue"] `
	a.Do(chromedp.Navigate(e.srv.URL+"/ui/fleet"), chromedp.WaitVisible(chromedp.CSS(`a[href="/ui/issue"]`)),
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
	if page := a.Text(`main`); !strings.Contains(page, "Done: issue.") || !strings.Contains(page, "ledger:write") || !strings.Contains(page, "ada (admin)") {
		t.Errorf("after issue:\n%s", page)
	}
	if d, err := e.auth.Show("acme.test", "ledger-bot"); err != nil || d.Certificates[0].Operator != "ada (admin)" {
		t.Fatalf("ledger-bot in the inventory: %+v %v", d, err)
	}

	// A decision stored after the live page was rendered and before its
	// stream connected is its stream's first row, once.
	held, release := e.holdStreams()
	a.Do(chromedp.Navigate(e.srv.URL + "/ui/decisions/live"))
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("the live page opened no stream")
	}
	shipMore(t, e.rs, "replica-gap", "payments-bot", 1)
	release()
	a.Do(chromedp.WaitVisible(chromedp.CSS(`#tail-rows tr.new a[href="/ui/decisions/replica-gap-0"]`)))
	a.WaitFor(`document.getElementById("tail-status").textContent.startsWith("Live")`, 10*time.Second)
	// The live tail shows ledger-bot's first decision when it is shipped.
	shipMore(t, e.rs, "replica-ledger", "ledger-bot", 1)
	a.Do(chromedp.WaitVisible(chromedp.CSS(`#tail-rows tr.new a[href="/ui/decisions/replica-ledger-0"]`)),
		shot("10-live-tail"))
	if first := a.Text(`#tail-rows tr:first-child`); !strings.Contains(first, "ledger-bot") || !strings.Contains(first, "GET /v1/reports") {
		t.Errorf("the live tail's first row: %q", first)
	}
	if n := a.Eval(`String(document.querySelectorAll('#tail-rows tr[data-id="replica-gap-0"]').length)`); n != "1" {
		t.Errorf("the decision stored while the stream connected is on the page %s times", n)
	}
	if status := a.Text(`#tail-status`); !strings.Contains(status, "2 new") {
		t.Errorf("live status: %q", status)
	}
	a.Do(chromedp.Click(chromedp.CSS(`a[href="/ui/decisions/replica-ledger-0"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#receipt`)), shot("11-decision-receipt"))
	if v := a.Text(`#verified`); v != "verified" {
		t.Errorf("the shipped decision's verification: %q", v)
	}

	// The responder's page: restrict, lift, revoke; no decisions, no issuing.
	r := signInTab(b, e, "rosa", control.RoleResponder)
	r.Do(chromedp.Click(chromedp.CSS(`a[href="/ui/agents/acme.test/ledger-bot"]`)),
		chromedp.WaitVisible(chromedp.CSS(`form[action$="/restrict"]`)),
		shot("12-agent-responder"))
	page := r.Text(`body`)
	if !strings.Contains(page, "rosa (responder)") || !strings.Contains(page, "does not read decision records") ||
		strings.Contains(page, "Renew") || strings.Contains(page, "Reissue") {
		t.Errorf("agent page for a responder:\n%s", page)
	}
	if nav := r.Text(`header nav`); strings.Contains(nav, "Decisions") || strings.Contains(nav, "Compliance") || !strings.Contains(nav, "Fleet") {
		t.Errorf("responder's navigation: %q", nav)
	}
}
