package cli

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestConsoleEndToEnd: on a real control plane with a real replica, a
// responder signs in to the console with a link from `operator login-link`,
// sees the agent's first decision arrive from the replica, quarantines the
// agent through the form and the replica's next Check is denied, then
// revokes it through the form.
func TestConsoleEndToEnd(t *testing.T) {
	f := startControlFleet(t, 1)
	if got := f.check(t, f.replicas[0], "payments-agent"); got != "allowed" {
		t.Fatalf("first check: %s", got)
	}
	if msg := cliFails(t, "operator", "login-link", "r1", "--role", "replica", "--data-dir", f.cpDir); !strings.Contains(msg, "auditor, responder or admin") {
		t.Errorf("replica link: %s", msg)
	}
	if msg := cliFails(t, "operator", "login-link", "rosa", "--role", "responder", "--data-dir", f.cpDir, "--server", "http://x"); !strings.Contains(msg, "https://") {
		t.Errorf("plain http server: %s", msg)
	}
	link := strings.TrimSpace(cli(t, "operator", "login-link", "rosa", "--role", "admin", "--data-dir", f.cpDir, "--server", f.url))
	u, err := url.Parse(link)
	if err != nil || !strings.HasPrefix(link, f.url+"/ui/login?token=") {
		t.Fatalf("link %q: %v", link, err)
	}
	caPEM, err := os.ReadFile(filepath.Join(f.cpDir, "operator", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	do := func(method, path string, form url.Values) (int, string) {
		t.Helper()
		var resp *http.Response
		var err error
		if method == "GET" {
			resp, err = c.Get(f.url + path)
		} else {
			resp, err = c.PostForm(f.url+path, form)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := do("POST", "/ui/login", url.Values{"token": {u.Query().Get("token")}}); code != http.StatusSeeOther {
		t.Fatalf("sign in: %d", code)
	}
	// The replica ships its records; the decision shows in the console (a
	// link to a decision id, not the navigation's /ui/decisions/live).
	deadline := time.Now().Add(30 * time.Second)
	decisionLink := regexp.MustCompile(`href="/ui/decisions/[0-9a-f]+-[0-9a-f-]+"`)
	for {
		_, body := do("GET", "/ui/decisions?agent=payments-agent", nil)
		if decisionLink.MatchString(body) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no decision of payments-agent in the console after 30 s:\n%s", body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	agentPage := "/ui/agents/" + f.env.TrustDomain + "/payments-agent"
	code, body := do("GET", agentPage, nil)
	m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(body)
	if code != 200 || m == nil {
		t.Fatalf("agent page: %d\n%s", code, body)
	}
	start := time.Now()
	if code, body := do("POST", agentPage+"/restrict", url.Values{"csrf": {m[1]}, "quarantine": {"yes"}, "reason": {"INC-77"}, "confirm": {"yes"}}); code != http.StatusSeeOther {
		t.Fatalf("restrict: %d %s", code, body)
	}
	t.Logf("quarantine through the console in force on the replica after %v", f.awaitAll(t, "payments-agent", "agent_quarantined", start))
	start = time.Now()
	if code, body := do("POST", agentPage+"/revoke", url.Values{"csrf": {m[1]}, "reason": {"keyCompromise"}, "confirm": {"yes"}}); code != http.StatusSeeOther {
		t.Fatalf("revoke: %d %s", code, body)
	}
	t.Logf("revocation through the console in force on the replica after %v", f.awaitAll(t, "payments-agent", "certificate_revoked", start))
	_, body = do("GET", agentPage, nil)
	for _, want := range []string{"rosa (admin)", "INC-77", "revoked"} {
		if !strings.Contains(body, want) {
			t.Errorf("agent page lacks %q", want)
		}
	}

	// The evidence pack from the Compliance page is signed with the key
	// `audit report --data-dir` signs with, and `audit report-verify`, the
	// auditor's command, checks it.
	resp, err := c.PostForm(f.url+"/ui/compliance/evidence", url.Values{"csrf": {m[1]}, "days": {"1"}, "format": {"html"}})
	if err != nil {
		t.Fatal(err)
	}
	zipped, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/zip" {
		t.Fatalf("evidence pack: %d %s", resp.StatusCode, zipped)
	}
	dir := t.TempDir()
	pack := unzipTo(t, zipped, dir)
	cli(t, "audit", "report", "--log", f.replicas[0].logDir, "--data-dir", f.cpDir, "--out", filepath.Join(dir, "cli.html"))
	pinned := filepath.Join(dir, "cli.html.pub.pem")
	if out := cli(t, "audit", "report-verify", pack, "--pubkey", pinned); !strings.HasPrefix(out, "ok: ") {
		t.Errorf("report-verify of the console's pack: %s", out)
	}
	b, err := os.ReadFile(pack)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "<html") {
		t.Errorf("the console's pack is not the HTML report: %.200s", b)
	}
	b[len(b)/2] ^= 1
	if err := os.WriteFile(pack, b, 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := Run(context.Background(), []string{"audit", "report-verify", pack, "--pubkey", pinned}, nil, &out, &errb); code != 1 || !strings.Contains(out.String(), "FAILED") {
		t.Errorf("report-verify of a changed pack: exit %d %s%s", code, out.String(), errb.String())
	}
}

// unzipTo writes the files of a zip into dir and returns the path of the
// one that is neither a .sig nor a .pub.pem (the pack).
func unzipTo(t *testing.T, b []byte, dir string) string {
	t.Helper()
	z, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	pack := ""
	for _, f := range z.File {
		if f.Name != filepath.Base(f.Name) {
			t.Fatalf("a path in the zip: %q", f.Name)
		}
		r, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(r)
		r.Close()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f.Name), data, 0o644); err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(f.Name, ".sig") && !strings.HasSuffix(f.Name, ".pub.pem") {
			pack = filepath.Join(dir, f.Name)
		}
	}
	if len(z.File) != 3 || pack == "" {
		t.Fatalf("the zip holds %d files", len(z.File))
	}
	return pack
}
