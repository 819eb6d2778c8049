package console

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/control"
)

func newCSR(t *testing.T) (string, *ecdsa.PrivateKey) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), k
}

// lastEvent returns the newest change-log event of an agent.
func (e *env) lastEvent(td, id string) ca.Event {
	e.t.Helper()
	d, err := e.auth.Show(td, id)
	if err != nil {
		e.t.Fatal(err)
	}
	return d.Events[len(d.Events)-1]
}

// TestIssueWithCSR: an admin issues a new agent from a CSR; the certificate
// carries the CSR's key, the inventory and the change log name the operator,
// and the log has the reason.
func TestIssueWithCSR(t *testing.T) {
	e := newEnv(t)
	c := e.signIn("ada", control.RoleAdmin)
	if code, body := e.get(c, "/ui/issue"); code != 200 || !strings.Contains(body, `<option value="acme.test">`) {
		t.Fatalf("issue page: %d\n%s", code, body)
	}
	csr, key := newCSR(t)
	f := url.Values{"csrf": {e.csrf(c, "/ui/issue")}, "trust_domain": {"acme.test"}, "agent_id": {"ledger-bot"}, "trust": {"L3"},
		"scopes": {"ledger:read ledger:write"}, "owner": {"team-ledger"}, "ttl": {"2d"}, "csr": {csr}, "reason": {"CHG-1 new ledger agent"}, "confirm": {"yes"}}
	code, _ := e.post(c, "/ui/issue", f)
	if code != http.StatusSeeOther {
		t.Fatalf("issue: %d", code)
	}
	d, err := e.auth.Show("acme.test", "ledger-bot")
	if err != nil || len(d.Certificates) != 1 {
		t.Fatalf("%+v %v", d, err)
	}
	ct := d.Certificates[0]
	if ct.Trust != "L3" || strings.Join(ct.Scopes, " ") != "ledger:read ledger:write" || ct.Owner != "team-ledger" || ct.Operator != "ada (admin)" {
		t.Errorf("certificate %+v", ct)
	}
	blk, _ := pem.Decode([]byte(ct.PEM))
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil || !key.PublicKey.Equal(cert.PublicKey) {
		t.Errorf("the certificate does not carry the CSR's key: %v", err)
	}
	if ev := e.lastEvent("acme.test", "ledger-bot"); ev.Event != "console_issue" || ev.Operator != "ada (admin)" || ev.Detail != "reason: CHG-1 new ledger agent" {
		t.Errorf("change log: %+v", ev)
	}
	// The certificate is on the agent's page, as a download.
	resp, err := c.Get(e.srv.URL + "/ui/agents/acme.test/ledger-bot/certificates/" + ct.Serial)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != ct.PEM {
		t.Errorf("certificate download: %d %s", resp.StatusCode, b)
	}
}

// TestIssueGeneratedKeyIsADownload: without a CSR the answer to the POST is
// the key and certificate as an uncacheable attachment, and the key is in
// no file of the control plane.
func TestIssueGeneratedKeyIsADownload(t *testing.T) {
	e := newEnv(t)
	c := e.signIn("ada", control.RoleAdmin)
	f := url.Values{"csrf": {e.csrf(c, "/ui/issue")}, "trust_domain": {"acme.test"}, "agent_id": {"keyed-bot"}, "trust": {"L1"},
		"scopes": {"reports:read"}, "reason": {"trial"}, "confirm": {"yes"}}
	resp, err := c.PostForm(e.srv.URL+"/ui/issue", f)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Cache-Control") != "no-store" || resp.Header.Get("Content-Type") != "application/x-pem-file" ||
		resp.Header.Get("Content-Disposition") != `attachment; filename="keyed-bot.pem"` {
		t.Fatalf("download: %d %v", resp.StatusCode, resp.Header)
	}
	pair, err := tls.X509KeyPair(b, b)
	if err != nil {
		t.Fatalf("key and certificate: %v", err)
	}
	leaf, _ := x509.ParseCertificate(pair.Certificate[0])
	if leaf.URIs[0].String() != "spiffe://acme.test/agent/keyed-bot" {
		t.Errorf("certificate of %v", leaf.URIs)
	}
	var keyB64 []byte
	rest := b
	for {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		if strings.Contains(blk.Type, "PRIVATE KEY") {
			keyB64 = blk.Bytes
		}
	}
	if keyB64 == nil {
		t.Fatal("no private key in the download")
	}
	_ = filepath.WalkDir(e.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, _ := os.ReadFile(p)
		if bytes.Contains(data, keyB64) || bytes.Contains(data, []byte(strings.Split(string(b), "\n")[1])) {
			t.Errorf("the agent's private key is in %s", p)
		}
		return nil
	})
}

// TestRenewAndReissue: renew keeps the attributes and the current
// certificate; reissue changes scopes and trust and supersedes it.
func TestRenewAndReissue(t *testing.T) {
	e := newEnv(t)
	c := e.signIn("ada", control.RoleAdmin)
	csr, _ := newCSR(t)
	code, _ := e.post(c, agentPage+"/renew", url.Values{"csrf": {e.csrf(c, agentPage)}, "csr": {csr}, "reason": {"rotation"}, "confirm": {"yes"}})
	if code != http.StatusSeeOther {
		t.Fatalf("renew: %d", code)
	}
	d, _ := e.auth.Show("acme.test", "payments-bot")
	if len(d.Certificates) != 2 || d.Certificates[0].Status != "active" || d.Certificates[1].Trust != "L2" {
		t.Fatalf("after renew: %+v", d.Certificates)
	}
	if ev := e.lastEvent("acme.test", "payments-bot"); ev.Event != "console_renew" || ev.Operator != "ada (admin)" {
		t.Errorf("renew in the change log: %+v", ev)
	}
	csr, _ = newCSR(t)
	code, _ = e.post(c, agentPage+"/reissue", url.Values{"csrf": {e.csrf(c, agentPage)}, "csr": {csr}, "trust": {"L1"},
		"scopes": {"reports:read"}, "owner": {"team-payments-bot"}, "reason": {"least privilege"}, "confirm": {"yes"}})
	if code != http.StatusSeeOther {
		t.Fatalf("reissue: %d", code)
	}
	d, _ = e.auth.Show("acme.test", "payments-bot")
	if d.Agent.TrustLabel != "L1" || strings.Join(d.Agent.Scopes, " ") != "reports:read" || len(d.Certificates) != 3 ||
		d.Certificates[0].Status != "revoked" || d.Certificates[1].Status != "revoked" || d.Certificates[2].Status != "active" {
		t.Errorf("after reissue: %+v %+v", d.Agent, d.Certificates)
	}
}

// TestIssueRefusals: only admins issue; a form without its token, its
// confirmation or its reason, or with bad input, issues nothing.
func TestIssueRefusals(t *testing.T) {
	e := newEnv(t)
	for _, role := range []control.Role{control.RoleResponder, control.RoleAuditor} {
		c := e.signIn("someone-"+string(role), role)
		if code, _ := e.get(c, "/ui/issue"); code != http.StatusForbidden {
			t.Errorf("%s: issue page %d", role, code)
		}
		_, body := e.get(c, agentPage)
		if strings.Contains(body, "/renew") || strings.Contains(body, "/reissue") || strings.Contains(body, "Issue a new agent") {
			t.Errorf("%s sees the issuing forms", role)
		}
		tok := ""
		if m := csrfRE.FindStringSubmatch(body); m != nil {
			tok = m[1]
		}
		if code, _ := e.post(c, agentPage+"/renew", url.Values{"csrf": {tok}, "reason": {"x"}, "confirm": {"yes"}}); code != http.StatusForbidden {
			t.Errorf("%s: renew %d", role, code)
		}
	}
	c := e.signIn("ada", control.RoleAdmin)
	tok := e.csrf(c, "/ui/issue")
	good := url.Values{"csrf": {tok}, "trust_domain": {"acme.test"}, "agent_id": {"new-bot"}, "trust": {"L1"}, "scopes": {"a:b"}, "reason": {"r"}, "confirm": {"yes"}}
	for name, change := range map[string]func(url.Values){
		"no csrf":    func(f url.Values) { f.Del("csrf") },
		"no confirm": func(f url.Values) { f.Del("confirm") },
		"no reason":  func(f url.Values) { f.Set("reason", " ") },
		"bad trust":  func(f url.Values) { f.Set("trust", "L9") },
		"bad scope":  func(f url.Values) { f.Set("scopes", "<script>") },
		"bad ttl":    func(f url.Values) { f.Set("ttl", "forever") },
		"bad csr": func(f url.Values) {
			f.Set("csr", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----")
		},
		"existing":     func(f url.Values) { f.Set("agent_id", "payments-bot") },
		"unknown td":   func(f url.Values) { f.Set("trust_domain", "other.test") },
		"bad agent id": func(f url.Values) { f.Set("agent_id", "../x") },
	} {
		f := url.Values{}
		for k, v := range good {
			f[k] = append([]string(nil), v...)
		}
		change(f)
		code, body := e.post(c, "/ui/issue", f)
		if code < 400 || code >= 500 || strings.Contains(body, "<script>") {
			t.Errorf("%s: %d", name, code)
		}
	}
	if _, err := e.auth.Show("acme.test", "new-bot"); err == nil {
		t.Error("a refused form issued new-bot")
	}
}
