package console

import (
	"database/sql"
	"html"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/control"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
)

// pre returns the text of the <pre> with id in a page.
func pre(t *testing.T, body, id string) string {
	t.Helper()
	m := regexp.MustCompile(`(?s)<pre class="record" id="` + id + `">(.*?)</pre>`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no <pre id=%q> in the page:\n%s", id, body)
	}
	return html.UnescapeString(m[1])
}

// TestDecisionVerifiedWithReceipt: a decision's page verifies the record
// from the store on the spot and shows a receipt that the receipt verifier
// accepts with the keys shown beside it, for the record line shown above
// it; after a stored row is changed, the page says it does not verify.
func TestDecisionVerifiedWithReceipt(t *testing.T) {
	e := newEnv(t)
	c := e.signIn("audrey", control.RoleAuditor)
	code, body := e.get(c, "/ui/decisions/dec-1")
	if code != 200 || !strings.Contains(body, `id="verified">verified<`) {
		t.Fatalf("decision page: %d\n%s", code, body)
	}
	keys, err := decisionlog.ParseKeySet([]byte(pre(t, body, "log-keys")))
	if err != nil {
		t.Fatal(err)
	}
	r, err := decisionlog.VerifyReceipt(pre(t, body, "receipt"), keys)
	if err != nil {
		t.Fatalf("the page's receipt: %v", err)
	}
	line := pre(t, body, "record-line")
	if decisionlog.LeafHash([]byte(line)) != r.RecordHash || !strings.Contains(line, `"dec-1"`) {
		t.Errorf("the receipt does not name the record shown: %s", line)
	}

	db, err := sql.Open("sqlite", filepath.Join(e.dir, "records.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`UPDATE records SET line = REPLACE(line, '"allowed"', '"allowee"') WHERE decision_id = 'dec-1'`); err != nil {
		t.Fatal(err)
	}
	code, body = e.get(c, "/ui/decisions/dec-1")
	if code != 200 || !strings.Contains(body, `id="verified">does not verify<`) || strings.Contains(body, `id="receipt"`) {
		t.Errorf("tampered record: %d\n%s", code, body)
	}
}

// TestNewestFirst: the agent page and the decision search list the newest
// decision first; the search can still go oldest first.
func TestNewestFirst(t *testing.T) {
	e := newEnv(t)
	c := e.signIn("ada", control.RoleAdmin)
	order := func(body string) string {
		var ids []string
		for _, m := range regexp.MustCompile(`/ui/decisions/(dec-\d)"`).FindAllStringSubmatch(body, -1) {
			ids = append(ids, m[1])
		}
		return strings.Join(ids, " ")
	}
	for path, want := range map[string]string{
		agentPage:                             "dec-2 dec-1 dec-0",
		"/ui/decisions":                       "dec-2 dec-1 dec-0",
		"/ui/decisions?agent=payments-bot":    "dec-2 dec-1 dec-0",
		"/ui/decisions?order=oldest":          "dec-0 dec-1 dec-2",
		"/ui/decisions?order=oldest&outcome=": "dec-0 dec-1 dec-2",
	} {
		code, body := e.get(c, path)
		if got := order(body); code != 200 || got != want {
			t.Errorf("%s: %d, order %q, want %q", path, code, got, want)
		}
	}
}

// TestChart: the fleet and agent pages draw decisions and denials over time
// as SVG with the numbers beside it, for roles that read records only.
func TestChart(t *testing.T) {
	e := newEnv(t)
	// The test's records are up to 2 s in the future: look from 10 s on,
	// so that none falls past a range's last bucket.
	e.con.cfg.Now = func() time.Time { return time.Now().Add(10 * time.Second) }
	c := e.signIn("ada", control.RoleAdmin)
	for _, path := range []string{"/ui/fleet", agentPage, "/ui/fleet?range=1h", agentPage + "?range=7d"} {
		code, body := e.get(c, path)
		if code != 200 || !strings.Contains(body, "<svg") || !strings.Contains(body, "3 decisions, <span class=\"den\">1 denied</span>") ||
			!strings.Contains(body, `class="deny"`) || !strings.Contains(body, "<td>3</td><td>1</td>") {
			t.Errorf("%s: %d, no chart of 3 decisions and 1 denial:\n%s", path, code, body)
		}
	}
	_, body := e.get(c, "/ui/agents/acme.test/reports-bot")
	if strings.Contains(body, "<svg") {
		t.Errorf("an agent without decisions has a chart")
	}
	r := e.signIn("rosa", control.RoleResponder)
	if _, body := e.get(r, "/ui/fleet"); strings.Contains(body, "<svg") || strings.Contains(body, "decisions,") {
		t.Errorf("a responder (no record access) sees the decisions chart")
	}
}

// TestFleetSnapshot: the fleet page reads a snapshot of the inventory, yet a
// revocation made elsewhere (the CLI, the API) shows at once, and a new
// agent issued elsewhere within the snapshot's lifetime.
func TestFleetSnapshot(t *testing.T) {
	e := newEnv(t)
	c := e.signIn("ada", control.RoleAdmin)
	if _, body := e.get(c, "/ui/fleet?status=revoked"); strings.Contains(body, "reports-bot") {
		t.Fatal("reports-bot revoked before it was")
	}
	if _, err := e.auth.Revoke("acme.test", "reports-bot", 0, "cli (admin)"); err != nil {
		t.Fatal(err)
	}
	if _, body := e.get(c, "/ui/fleet?status=revoked"); !strings.Contains(body, ">reports-bot</a>") {
		t.Error("a revocation made outside the console is not on the fleet page at once")
	}
	if _, err := e.auth.Issue(ca.IssueRequest{TrustDomain: "acme.test", AgentID: "late-bot", Trust: 1, Scopes: []string{"a:b"}, TTL: time.Hour, Operator: "cli"}); err != nil {
		t.Fatal(err)
	}
	e.con.cfg.Now = func() time.Time { return time.Now().Add(fleetTTL + time.Second) }
	if _, body := e.get(c, "/ui/fleet"); !strings.Contains(body, ">late-bot</a>") || !strings.Contains(body, "3 agents.") {
		t.Error("an agent issued outside the console is not on the fleet page after the snapshot's lifetime")
	}
}
