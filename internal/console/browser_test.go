package console

import (
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/agentauthz/agentauthz/internal/control"
	"github.com/agentauthz/agentauthz/internal/testenv/browser"
)

// TestBrowser drives Debian's Chromium through the console as a person
// would: open a sign-in link, look at the fleet, open an agent, restrict it
// through the form, and find a decision. Screenshots of each page go to
// bin/console/.
func TestBrowser(t *testing.T) {
	b := browser.Start(t, 90*time.Second)
	e := newEnv(t)
	link, err := CreateLink(e.auth, "ada", control.RoleAdmin, time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	shot := func(name string) chromedp.Action[chromedp.Void] { return browser.Shot(t, name) }
	b.Do(chromedp.Navigate(e.srv.URL+"/ui/login?token="+link),
		chromedp.WaitVisible(chromedp.CSS(`button[type=submit]`)),
		shot("1-sign-in"),
		chromedp.Click(chromedp.CSS(`button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`table`)),
		shot("2-fleet"))
	loc := b.Location()
	if h1, fleet := b.Text(`h1`), b.Text(`main`); !strings.HasSuffix(loc, "/ui/fleet") || h1 != "Fleet" ||
		!strings.Contains(fleet, "payments-bot") || !strings.Contains(fleet, "reports-bot") {
		t.Fatalf("after sign-in: %s %q\n%s", loc, h1, fleet)
	}
	b.Do(chromedp.Click(chromedp.CSS(`a[href="/ui/agents/acme.test/payments-bot"]`)),
		chromedp.WaitVisible(chromedp.CSS(`form[action$="/restrict"]`)),
		shot("3-agent"))
	// The decision with an HTML request path shows it as text.
	if agent := b.Text(`main`); !strings.Contains(agent, htmlPath) || !strings.Contains(agent, "dec-2") {
		t.Errorf("agent page lacks its decisions:\n%s", agent)
	}
	browser.CheckLabels(b, 8)

	const form = `form[action$="/restrict"] `
	b.Do(chromedp.Click(chromedp.CSS(form+`input[name=quarantine]`)),
		chromedp.SendKeys(chromedp.CSS(form+`input[name=reason]`), "suspicious payments, incident 7"),
		chromedp.Click(chromedp.CSS(form+`input[name=confirm]`)),
		shot("4-restrict-form"),
		chromedp.Click(chromedp.CSS(form+`button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`.done`)),
		shot("5-restricted"))
	if done := b.Text(`main`); !strings.Contains(done, "Done: restrict.") || !strings.Contains(done, "quarantined") || !strings.Contains(done, "ada (admin)") {
		t.Errorf("after restrict:\n%s", done)
	}
	r, err := e.auth.AgentRestriction("acme.test", "payments-bot")
	if err != nil || r == nil || !r.Quarantined || r.Operator != "ada (admin)" || r.Reason != "suspicious payments, incident 7" {
		t.Fatalf("restriction in the inventory: %+v %v", r, err)
	}
	b.Do(chromedp.Click(chromedp.CSS(`a[href="/ui/decisions/dec-2"]`)),
		chromedp.WaitVisible(chromedp.CSS(`pre.record`)),
		shot("6-decision"))
	if decision := b.Text(`main`); !strings.Contains(decision, htmlPath) || !strings.Contains(decision, "scope_missing") {
		t.Errorf("decision page:\n%s", decision)
	}
	// An auditor, in a new tab, reads the agent but gets no forms.
	alink, err := CreateLink(e.auth, "audrey", control.RoleAuditor, time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	a := b.NewTab()
	a.Do(chromedp.Navigate(e.srv.URL+"/ui/login?token="+alink),
		chromedp.WaitVisible(chromedp.CSS(`button[type=submit]`)),
		chromedp.Click(chromedp.CSS(`button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`table`)),
		chromedp.Click(chromedp.CSS(`a[href="/ui/agents/acme.test/payments-bot"]`)),
		chromedp.WaitVisible(chromedp.CSS(`h2`)),
		shot("7-agent-auditor"))
	if page := a.Text(`body`); !strings.Contains(page, "audrey (auditor)") || strings.Contains(page, "Actions") || !strings.Contains(page, "quarantined") {
		t.Errorf("agent page for an auditor:\n%s", page)
	}
	t.Logf("screenshots in %s", browser.ShotDir(t))
}
