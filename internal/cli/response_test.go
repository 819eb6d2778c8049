package cli

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/httpsig"
	"github.com/agentauthz/agentauthz/internal/respsig"
)

// signedResponseFixture writes a signed response (with its request head),
// the same response without the request, and the key set.
func signedResponseFixture(t *testing.T) (dir string, jwks []byte, raw string) {
	t.Helper()
	pub, priv, _ := ed25519.GenerateKey(nil)
	kid := decisionlog.KeyID(pub)
	s := &respsig.Signer{KeyID: kid, Sign: func(b []byte) ([]byte, error) { return ed25519.Sign(priv, b), nil }, Now: func() time.Time { return time.Now().Add(-time.Hour) }}
	m := &httpsig.Message{Status: 201, Body: []byte(`{"payment":"p-1"}`),
		Header:  []httpsig.Field{{Name: "Content-Type", Value: "application/json"}},
		Request: &httpsig.Message{Method: "POST", Authority: "payments.internal", Path: "/v1/payments"}}
	if _, _, err := s.SignResponse(m, respsig.Decision{ID: "dec-1", AgentID: "payments-agent", TrustLevel: "L3", Operation: "payments:initiate"}, httpsig.DigestBody(m.Body), ""); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteString("HTTP/1.1 201 Created\r\n")
	for _, f := range m.Header {
		b.WriteString(f.Name + ": " + f.Value + "\r\n")
	}
	b.WriteString("\r\n")
	b.Write(m.Body)
	raw = b.String()
	dir = t.TempDir()
	jwks, _ = json.Marshal(decisionlog.KeySet{kid: pub}.JWKS())
	write := func(name, s string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("keys.jwks", string(jwks))
	write("resp.http", raw)
	write("exchange.http", "POST /v1/payments HTTP/1.1\r\nHost: payments.internal\r\n\r\n"+raw)
	write("tampered.http", "POST /v1/payments HTTP/1.1\r\nHost: payments.internal\r\n\r\n"+strings.Replace(raw, "p-1", "p-9", 1))
	write("other-path.http", "POST /v1/refunds HTTP/1.1\r\nHost: payments.internal\r\n\r\n"+raw)
	hdrs := [][2]string{}
	for _, f := range m.Header {
		hdrs = append(hdrs, [2]string{f.Name, f.Value})
	}
	js, _ := json.Marshal(map[string]any{"request": map[string]string{"method": "POST", "url": "https://payments.internal/v1/payments"},
		"status": 201, "headers": hdrs, "body": string(m.Body)})
	write("resp.json", string(js))
	return dir, jwks, raw
}

func TestResponseVerify(t *testing.T) {
	dir, jwks, _ := signedResponseFixture(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(jwks) }))
	defer srv.Close()
	p := func(n string) string { return filepath.Join(dir, n) }
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := Run(context.Background(), append([]string{"response", "verify"}, args...), strings.NewReader(""), &out, &errb)
		return code, out.String(), errb.String()
	}
	for _, c := range []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"exchange, key file", []string{"--keys", p("keys.jwks"), p("exchange.http")}, 0, "agent:       payments-agent", ""},
		{"response and --request, JWKS URL", []string{"--keys", srv.URL, "--request", "POST https://payments.internal/v1/payments", p("resp.http")}, 0, "operation:   payments:initiate", ""},
		{"json form", []string{"--keys", p("keys.jwks"), "--json", p("resp.json")}, 0, `"trust_level":"L3"`, ""},
		{"tampered body", []string{"--keys", p("keys.jwks"), p("tampered.http")}, 1, "invalid: content-digest: sha-256 does not match the body", ""},
		{"other request", []string{"--keys", p("keys.jwks"), p("other-path.http")}, 1, "invalid: ", ""},
		{"no request", []string{"--keys", p("keys.jwks"), p("resp.http")}, 2, "", "hint: put the request head before the response"},
		{"no keys", []string{p("resp.http")}, 2, "", "error: --keys is required"},
		{"garbage", []string{"--keys", p("keys.jwks"), p("keys.jwks")}, 2, "", "error: parse message"},
		{"missing file", []string{"--keys", p("keys.jwks"), p("nope.http")}, 2, "", "error: "},
		{"bad --request", []string{"--keys", p("keys.jwks"), "--request", "POST", p("resp.http")}, 2, "", "hint: write it as"},
		{"too old", []string{"--keys", p("keys.jwks"), "--max-age", "10m", p("exchange.http")}, 1, "outside its validity", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, out, errs := run(c.args...)
			if code != c.code || !strings.Contains(out, c.stdout) || !strings.Contains(errs, c.stderr) {
				t.Fatalf("exit %d (want %d)\nstdout: %s\nstderr: %s", code, c.code, out, errs)
			}
		})
	}
}

// audit who shows a decision and the response it produced.
func TestAuditWhoShowsResponse(t *testing.T) {
	d := t.TempDir()
	l, err := decisionlog.Open(decisionlog.Options{Dir: filepath.Join(d, "log"), KeyDir: filepath.Join(d, "keys"), Name: "t"})
	if err != nil {
		t.Fatal(err)
	}
	dec := &decisionlog.Record{DecisionID: "dec-1", Agent: decisionlog.Agent{ID: "payments-agent", TrustLevel: "L3"},
		Request:  decisionlog.Request{Method: "POST", Host: "payments.internal", Path: "/v1/payments", Operation: "payments:initiate"},
		Decision: decisionlog.Decision{Allowed: true, HTTPStatus: 200, Reasons: []string{"allowed"}}}
	resp := *dec
	resp.Kind = decisionlog.KindResponse
	resp.Response = &decisionlog.Response{Status: 201, Body: "signed", ContentDigest: httpsig.DigestBody([]byte("{}")), Bytes: 2,
		SignatureInput: `agentauthz=("@status");created=1`, Signature: "agentauthz=:AAAA:"}
	for _, r := range []*decisionlog.Record{dec, &resp} {
		if _, err := l.Append(context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := Run(context.Background(), []string{"audit", "who", "dec-1", "--log", filepath.Join(d, "log")}, strings.NewReader(""), &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	for _, want := range []string{"agent:", "payments-agent", "outcome:", "response to:", "status:", "201", "body:", "signed, 2 bytes", "content digest:", "sha-256=:"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("audit who lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if code := Run(context.Background(), []string{"audit", "query", "--log", filepath.Join(d, "log")}, strings.NewReader(""), &out, &errb); code != 0 || !strings.Contains(out.String(), "response 201") {
		t.Fatalf("audit query: exit %d\n%s%s", code, out.String(), errb.String())
	}
}

// response verify --log compares a response with the record agentauthz
// logged when it signed it.
func TestResponseVerifyAgainstLog(t *testing.T) {
	d := t.TempDir()
	l, err := decisionlog.Open(decisionlog.Options{Dir: filepath.Join(d, "log"), KeyDir: filepath.Join(d, "keys"), Name: "t"})
	if err != nil {
		t.Fatal(err)
	}
	kid, sign := l.ResponseSigner()
	s := &respsig.Signer{KeyID: kid, Sign: sign, Now: time.Now}
	body := []byte(`{"payment":"p-1","amount":"12.50"}`)
	m := &httpsig.Message{Status: 201, Body: body, Header: []httpsig.Field{{Name: "Content-Type", Value: "application/json"}},
		Request: &httpsig.Message{Method: "POST", Authority: "payments.internal", Path: "/v1/payments"}}
	set, _, err := s.SignResponse(m, respsig.Decision{ID: "dec-7", AgentID: "payments-agent", TrustLevel: "L3", Operation: "payments:initiate"}, httpsig.DigestBody(body), "")
	if err != nil {
		t.Fatal(err)
	}
	sig := set[len(set)-1].Value
	rec := &decisionlog.Record{DecisionID: "dec-7", Kind: decisionlog.KindResponse,
		Decision: decisionlog.Decision{Allowed: true, HTTPStatus: 200, Reasons: []string{"allowed"}},
		Response: &decisionlog.Response{Status: 201, Body: "signed", ContentDigest: httpsig.DigestBody(body), Bytes: int64(len(body)), Signature: sig}}
	if _, err := l.Append(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	jwks, _ := json.Marshal(l.PublicKeys().JWKS())
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	write := func(name string, m *httpsig.Message, body string) string {
		var b strings.Builder
		b.WriteString("POST /v1/payments HTTP/1.1\r\nHost: payments.internal\r\n\r\nHTTP/1.1 201 Created\r\n")
		for _, f := range m.Header {
			b.WriteString(f.Name + ": " + f.Value + "\r\n")
		}
		b.WriteString("\r\n" + body)
		p := filepath.Join(d, name)
		if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	keys := filepath.Join(d, "keys.jwks")
	os.WriteFile(keys, jwks, 0o600)
	run := func(file string) (int, string) {
		var out, errb bytes.Buffer
		code := Run(context.Background(), []string{"response", "verify", "--keys", keys, "--log", filepath.Join(d, "log"), file}, strings.NewReader(""), &out, &errb)
		return code, out.String() + errb.String()
	}
	if code, out := run(write("good.http", m, string(body))); code != 0 || !strings.Contains(out, "log:         matches the response record at index 0 of log t") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	// Body and Content-Digest changed together, the signature stripped:
	// the fields are self-consistent, the log is not fooled.
	forged := &httpsig.Message{Header: []httpsig.Field{}}
	for _, f := range m.Header {
		switch strings.ToLower(f.Name) {
		case "signature", "signature-input":
		case "content-digest":
			forged.Header = append(forged.Header, httpsig.Field{Name: f.Name, Value: httpsig.DigestBody([]byte(`{"payment":"p-1","amount":"9999.00"}`))})
		default:
			forged.Header = append(forged.Header, f)
		}
	}
	code, out := run(write("forged.http", forged, `{"payment":"p-1","amount":"9999.00"}`))
	if code != 1 || !strings.Contains(out, "MISMATCH: the body's digest is not the logged") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
}
