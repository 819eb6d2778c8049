package cli

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/agentauthz/agentauthz/internal/testenv/browser"
)

// TestConsoleBrowserReplica drives Chromium through the console of a real
// control plane (`control serve`) with a real replica (`serve`, watching and
// shipping to it over mTLS), and sends the replica Checks over gRPC shaped
// as Envoy sends them (the agent's certificate as the peer certificate). An
// admin signs in with a link from `operator login-link`, issues an agent
// through the form (from a CSR: the key stays here), downloads its
// certificate from its page, and sees its first decision arrive in the live
// tail; quarantines it through the form and sees its next Check denied with
// agent_quarantined, and that denial arrive in the tail; lifts it and sees
// the next Check allowed; revokes it and sees the next Check denied with
// certificate_revoked; then searches for that decision id and opens it,
// verified. Screenshots go to bin/console/
// (replica-*.png).
func TestConsoleBrowserReplica(t *testing.T) {
	b := browser.Start(t, 3*time.Minute)
	f := startControlFleet(t, 1)
	rep := f.replicas[0]
	shot := func(name string) chromedp.Action[chromedp.Void] { return browser.Shot(t, "replica-"+name) }
	const agent, op = "ledger-bot", "ada (admin)"
	agentPage := f.url + "/ui/agents/" + f.env.TrustDomain + "/" + agent

	link := strings.TrimSpace(cli(t, "operator", "login-link", "ada", "--role", "admin", "--data-dir", f.cpDir, "--server", f.url))
	b.Do(chromedp.Navigate(link), chromedp.WaitVisible(chromedp.CSS(`button[type=submit]`)), shot("1-sign-in"))
	b.SignIn(link)
	b.Do(shot("2-fleet"))

	// Issue the agent from a CSR.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	const issue = `form[action="/ui/issue"] `
	b.Do(chromedp.Click(chromedp.CSS(`a[href="/ui/issue"]`)), chromedp.WaitVisible(chromedp.CSS(issue+`input[name=agent_id]`)),
		chromedp.SendKeys(chromedp.CSS(issue+`input[name=agent_id]`), agent),
		chromedp.SendKeys(chromedp.CSS(issue+`input[name=scopes]`), "payments:read"),
		chromedp.SendKeys(chromedp.CSS(issue+`input[name=owner]`), "team-ledger"),
		chromedp.SetValue(chromedp.CSS(issue+`textarea[name=csr]`), string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))),
		chromedp.SendKeys(chromedp.CSS(issue+`input[name=reason]`), "CHG-42 new ledger agent"),
		chromedp.Click(chromedp.CSS(issue+`input[name=confirm]`)),
		chromedp.Click(chromedp.CSS(issue+`button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`.done`)),
		shot("3-issued"))
	if page := b.Text(`main`); !strings.Contains(page, "Done: issue.") || !strings.Contains(page, op) {
		t.Fatalf("after issue:\n%s", page)
	}
	// The certificate, as the agent's operator downloads it from the page.
	certPEM := b.Eval(`fetch(document.querySelector('a[href*="/certificates/"]').href).then(r => r.ok ? r.text() : "HTTP " + r.status)`)
	if blk, _ := pem.Decode([]byte(certPEM)); blk == nil {
		t.Fatalf("the certificate link gave %q", certPEM)
	} else if c, err := x509.ParseCertificate(blk.Bytes); err != nil || !c.PublicKey.(*ecdsa.PublicKey).Equal(&key.PublicKey) {
		t.Fatalf("the downloaded certificate is not for the CSR's key: %v", err)
	}

	// A second tab keeps the live tail open throughout.
	live := b.NewTab()
	live.Do(chromedp.Navigate(f.url + "/ui/decisions/live"))
	live.WaitFor(`document.readyState === "complete" && document.getElementById("tail-status").textContent.startsWith("Live")`, 10*time.Second)
	inTail := func(id, want string) {
		t.Helper()
		row := `#tail-rows tr.new a[href="/ui/decisions/` + id + `"]`
		live.Do(chromedp.WaitVisible(chromedp.CSS(row)))
		tr := live.Eval(`document.querySelector('` + row + `').closest("tr").textContent`)
		if !strings.Contains(tr, agent) || !strings.Contains(tr, want) || !strings.Contains(tr, "GET /v1/payments") {
			t.Errorf("live tail row of %s: %q, want %q", id, tr, want)
		}
	}

	check := func() (string, string) {
		t.Helper()
		return envoyCheck(t, rep, "GET", []byte(certPEM))
	}
	// The first Check: allowed, and in the live tail.
	got, first := check()
	if got != "allowed" {
		t.Fatalf("the new agent's first Check: %s", got)
	}
	inTail(first, "allowed")
	live.Do(shot("4-live-first"))

	// Quarantine through the form; the replica's next Check is denied.
	const restrict = `form[action$="/restrict"] `
	b.Do(chromedp.Navigate(agentPage), chromedp.WaitVisible(chromedp.CSS(restrict+`input[name=quarantine]`)),
		chromedp.Click(chromedp.CSS(restrict+`input[name=quarantine]`)),
		chromedp.SendKeys(chromedp.CSS(restrict+`input[name=reason]`), "INC-77 odd payment reads"),
		chromedp.Click(chromedp.CSS(restrict+`input[name=confirm]`)),
		shot("5-restrict-form"))
	start := time.Now()
	b.Do(chromedp.Click(chromedp.CSS(restrict+`button[type=submit]`)), chromedp.WaitVisible(chromedp.CSS(`.done`)), shot("6-restricted"))
	if page := b.Text(`main`); !strings.Contains(page, "Done: restrict.") || !strings.Contains(page, "quarantined") || !strings.Contains(page, op) {
		t.Errorf("after restrict:\n%s", page)
	}
	quarantined := awaitCheck(t, check, "allowed", "agent_quarantined", start)
	t.Logf("the quarantine made in Chromium denied the replica's Check after %v", time.Since(start))
	inTail(quarantined, "agent_quarantined")
	live.Do(shot("7-live-quarantined"))

	// Lift it through the form; the next Check is allowed again.
	const lift = `form[action$="/lift"] `
	b.Do(chromedp.Navigate(agentPage), chromedp.WaitVisible(chromedp.CSS(lift+`input[name=reason]`)),
		chromedp.SendKeys(chromedp.CSS(lift+`input[name=reason]`), "INC-77 closed: reads were the nightly report"),
		chromedp.Click(chromedp.CSS(lift+`input[name=confirm]`)))
	start = time.Now()
	b.Do(chromedp.Click(chromedp.CSS(lift+`button[type=submit]`)), chromedp.WaitVisible(chromedp.CSS(`.done`)))
	// No restriction in force: the page has no lift form any more.
	if page := b.Text(`main`); !strings.Contains(page, "Done: lift.") || b.Eval(`String(document.querySelector('`+lift+`') !== null)`) != "false" {
		t.Errorf("after lift:\n%s", page)
	}
	lifted := awaitCheck(t, check, "agent_quarantined", "allowed", start)
	t.Logf("the lift made in Chromium allowed the replica's Check again after %v", time.Since(start))
	inTail(lifted, "allowed")

	// Revoke through the form; the next Check is denied as revoked.
	const revoke = `form[action$="/revoke"] `
	b.Do(chromedp.Navigate(agentPage), chromedp.WaitVisible(chromedp.CSS(revoke+`select[name=reason]`)),
		chromedp.SetValue(chromedp.CSS(revoke+`select[name=reason]`), "keyCompromise"),
		chromedp.Click(chromedp.CSS(revoke+`input[name=confirm]`)),
		shot("8-revoke-form"))
	start = time.Now()
	b.Do(chromedp.Click(chromedp.CSS(revoke+`button[type=submit]`)), chromedp.WaitVisible(chromedp.CSS(`.done`)), shot("9-revoked"))
	if page := b.Text(`main`); !strings.Contains(page, "Done: revoke.") || !strings.Contains(page, "revoked") || !strings.Contains(page, op) {
		t.Errorf("after revoke:\n%s", page)
	}
	revoked := awaitCheck(t, check, "allowed", "certificate_revoked", start)
	t.Logf("the revocation made in Chromium denied the replica's Check after %v", time.Since(start))
	inTail(revoked, "certificate_revoked")
	live.Do(shot("10-live-revoked"))
	if status := live.Text(`#tail-status`); !strings.Contains(status, "new since") {
		t.Errorf("live status: %q", status)
	}

	// Search for the revoked Check's decision id, typed into the form, and
	// open it: the record, verified on the spot.
	b.Do(chromedp.Navigate(f.url+"/ui/decisions"), chromedp.WaitVisible(chromedp.CSS(`input[name=decision_id]`)),
		chromedp.SendKeys(chromedp.CSS(`input[name=decision_id]`), revoked+"\r"))
	b.WaitFor(`location.search.includes("decision_id=") && document.readyState === "complete"`, 10*time.Second)
	b.Do(shot("11-search"))
	if rows := b.Eval(`String(document.querySelectorAll("main tbody tr").length)`); rows != "1" {
		t.Errorf("search for %s: %s rows", revoked, rows)
	}
	b.Do(chromedp.Click(chromedp.CSS(`main tbody a[href="/ui/decisions/`+revoked+`"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#verified`)), shot("12-decision"))
	if v := b.Text(`#verified`); v != "verified" {
		t.Errorf("the revoked Check's decision: %q", v)
	}
	if page := b.Text(`main`); !strings.Contains(page, "certificate_revoked") || !strings.Contains(page, agent) {
		t.Errorf("decision page:\n%s", page)
	}
	// The agent's page has the history with the operator of each change.
	b.Do(chromedp.Navigate(agentPage), chromedp.WaitVisible(chromedp.CSS(`h1`)), shot("13-agent-history"))
	page := b.Text(`main`)
	for _, want := range []string{"INC-77 odd payment reads", "INC-77 closed", "keyCompromise", "CHG-42 new ledger agent", op} {
		if !strings.Contains(page, want) {
			t.Errorf("agent page lacks %q", want)
		}
	}
}

// awaitCheck repeats check until it answers want, and returns that
// decision's id; until then it must answer before (the state the change
// replaces), nothing else.
func awaitCheck(t *testing.T, check func() (string, string), before, want string, start time.Time) string {
	t.Helper()
	for {
		got, id := check()
		if got == want {
			return id
		}
		if got != before {
			t.Fatalf("the replica answers %q, want %q (before the change reaches it) or %q", got, before, want)
		}
		if time.Since(start) > 20*time.Second {
			t.Fatalf("the replica still answers %q 20 s after the change, want %q", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
