package httpsig

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func loadRFCKey(t testing.TB) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(b)
		if blk == nil {
			t.Fatalf("%s: no PEM", name)
		}
		return blk.Bytes
	}
	pub, err := x509.ParsePKIXPublicKey(read("test-key-ed25519.pub.pem"))
	if err != nil {
		t.Fatal(err)
	}
	priv, err := x509.ParsePKCS8PrivateKey(read("test-key-ed25519.key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return pub.(ed25519.PublicKey), priv.(ed25519.PrivateKey)
}

// The signature base of RFC 9421 Appendix B.2.6, RFC 8792 wrapping undone.
const rfcB26Base = `"date": Tue, 20 Apr 2021 02:07:55 GMT
"@method": POST
"@path": /foo
"@authority": example.com
"content-type": application/json
"content-length": 18
"@signature-params": ("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519"`

// TestRFC9421B26 verifies RFC 9421's own Ed25519 example with our verifier,
// and checks our signer reproduces it byte for byte (Ed25519 is
// deterministic).
func TestRFC9421B26(t *testing.T) {
	pub, priv := loadRFCKey(t)
	raw, err := os.ReadFile("testdata/rfc9421-b26-request.http")
	if err != nil {
		t.Fatal(err)
	}
	m, err := ParseRequest(raw)
	if err != nil {
		t.Fatal(err)
	}
	keys := func(id string) (ed25519.PublicKey, bool) { return pub, id == "test-key-ed25519" }
	vs, err := Verify(m, VerifyOptions{Key: keys})
	if err != nil {
		t.Fatalf("RFC 9421 B.2.6 does not verify: %v", err)
	}
	if len(vs) != 1 || vs[0].Label != "sig-b26" || string(vs[0].Base) != rfcB26Base {
		t.Fatalf("verified %+v; base:\n%s", vs, vs[0].Base)
	}
	// The test-request's own Content-Digest (sha-512) matches its body.
	cd, _ := m.Get("content-digest")
	if err := CheckContentDigest(cd, m.Body); err != nil {
		t.Fatal(err)
	}

	// Our signer makes the same fields.
	m.Del("signature-input")
	sigIn, sig := "", ""
	for _, f := range mustParseRequest(t, raw).Header {
		switch f.Name {
		case "Signature-Input":
			sigIn = f.Value
		case "Signature":
			sig = f.Value
		}
	}
	m.Del("signature")
	s, err := Sign(m, "sig-b26", Params{
		Components: []Component{{Name: "date"}, {Name: "@method"}, {Name: "@path"}, {Name: "@authority"}, {Name: "content-type"}, {Name: "content-length"}},
		Created:    1618884473, KeyID: "test-key-ed25519",
	}, func(b []byte) ([]byte, error) { return ed25519.Sign(priv, b), nil })
	if err != nil {
		t.Fatal(err)
	}
	if s.Input != sigIn || s.Signature != sig {
		t.Fatalf("signer differs from RFC 9421 B.2.6:\n got %s\n     %s\nwant %s\n     %s", s.Input, s.Signature, sigIn, sig)
	}

	// One changed byte anywhere covered breaks it.
	for _, mutate := range []func(*Message){
		func(m *Message) { m.Method = "PUT" },
		func(m *Message) { m.Path = "/fo" },
		func(m *Message) { m.Authority = "example.org" },
		func(m *Message) { m.Set("Date", "Tue, 20 Apr 2021 02:07:56 GMT") },
		func(m *Message) { m.Set("Content-Length", "19") },
	} {
		m2 := mustParseRequest(t, raw)
		mutate(m2)
		if _, err := Verify(m2, VerifyOptions{Key: keys}); !errors.Is(err, ErrBadSignature) {
			t.Errorf("mutated message: err = %v, want ErrBadSignature", err)
		}
	}
}

func mustParseRequest(t *testing.T, raw []byte) *Message {
	t.Helper()
	m, err := ParseRequest(raw)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func testResponse() *Message {
	req := &Message{Method: "POST", Authority: "payments.internal", Path: "/v1/payments", Query: "?x=1",
		Header: []Field{{Name: "x-agent-id", Value: "payments-agent"}}}
	return &Message{Status: 201, Request: req, Body: []byte(`{"id":"p-1"}`),
		Header: []Field{{Name: "Content-Type", Value: "application/json"}, {Name: "X-Decision-Id", Value: "d-1"}}}
}

func TestSignVerifyResponse(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	m := testResponse()
	m.Set("Content-Digest", DigestBody(m.Body))
	p := Params{
		Components: []Component{{Name: "@status"}, {Name: "content-type"}, {Name: "content-digest"}, {Name: "x-decision-id"},
			{Name: "@method", Req: true}, {Name: "@authority", Req: true}, {Name: "@path", Req: true}, {Name: "x-agent-id", Req: true}},
		Created: 1_700_000_000, KeyID: "k1", Alg: AlgEd25519, Tag: "agentauthz-response",
	}
	s, err := Sign(m, "agentauthz", p, func(b []byte) ([]byte, error) { return ed25519.Sign(priv, b), nil })
	if err != nil {
		t.Fatal(err)
	}
	want := `agentauthz=("@status" "content-type" "content-digest" "x-decision-id" "@method";req "@authority";req "@path";req "x-agent-id";req);created=1700000000;keyid="k1";alg="ed25519";tag="agentauthz-response"`
	if s.Input != want {
		t.Fatalf("input\n got %s\nwant %s", s.Input, want)
	}
	m.Set("Signature-Input", s.Input)
	m.Set("Signature", s.Signature)
	keys := func(id string) (ed25519.PublicKey, bool) { return pub, id == "k1" }
	vs, err := Verify(m, VerifyOptions{Key: keys, Now: time.Unix(1_700_000_030, 0), MaxAge: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if !vs[0].Covers(Component{Name: "@path", Req: true}) || vs[0].Params.Tag != "agentauthz-response" {
		t.Fatalf("%+v", vs[0].Params)
	}
	if !strings.HasPrefix(string(vs[0].Base), "\"@status\": 201\n\"content-type\": application/json\n") {
		t.Fatalf("base:\n%s", vs[0].Base)
	}

	cases := []struct {
		name   string
		mutate func(*Message)
		opts   func(*VerifyOptions)
		want   error
	}{
		{"status", func(m *Message) { m.Status = 200 }, nil, ErrBadSignature},
		{"request path", func(m *Message) { m.Request.Path = "/v1/refunds" }, nil, ErrBadSignature},
		{"agent", func(m *Message) { m.Request.Set("x-agent-id", "other") }, nil, ErrBadSignature},
		{"no request", func(m *Message) { m.Request = nil }, nil, ErrNeedRequest},
		{"field removed", func(m *Message) { m.Del("x-decision-id") }, nil, ErrComponent},
		{"unknown key", nil, func(o *VerifyOptions) { o.Key = func(string) (ed25519.PublicKey, bool) { return nil, false } }, ErrUnknownKey},
		{"too old", nil, func(o *VerifyOptions) { o.Now = time.Unix(1_700_000_000+3600, 0) }, ErrExpired},
		{"no signature", func(m *Message) { m.Del("signature") }, nil, ErrNoSignature},
		{"garbled input", func(m *Message) { m.Set("signature-input", "agentauthz=(") }, nil, ErrMalformed},
		{"alg", func(m *Message) {
			m.Set("signature-input", strings.Replace(s.Input, `"ed25519"`, `"rsa-pss-sha512"`, 1))
		}, nil, ErrMalformed},
		{"bad sig size", func(m *Message) { m.Set("signature", "agentauthz=:AAAA:") }, nil, ErrBadSignature},
		{"wrong label", nil, func(o *VerifyOptions) { o.Label = "other" }, ErrNoSignature},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m2 := testResponse()
			m2.Set("Content-Digest", DigestBody(m2.Body))
			m2.Set("Signature-Input", s.Input)
			m2.Set("Signature", s.Signature)
			if c.mutate != nil {
				c.mutate(m2)
			}
			o := VerifyOptions{Key: keys, Now: time.Unix(1_700_000_030, 0), MaxAge: time.Minute}
			if c.opts != nil {
				c.opts(&o)
			}
			if _, err := Verify(m2, o); !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
		})
	}
}

func TestContentDigest(t *testing.T) {
	body := []byte(`{"hello": "world"}`)
	// RFC 9530 §2's example value for this body.
	if got, want := DigestBody(body), "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"; got != want {
		t.Fatalf("got %s want %s", got, want)
	}
	if err := CheckContentDigest(DigestBody(body), body); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "sha-256=:AAAA:", "md5=:AAAA:", "sha-256=abc", "sha-256=:!!:"} {
		if err := CheckContentDigest(bad, body); !errors.Is(err, ErrDigest) {
			t.Errorf("%q: err = %v", bad, err)
		}
	}
	if err := CheckContentDigest(DigestBody(body), append(body, ' ')); !errors.Is(err, ErrDigest) {
		t.Fatal("changed body accepted")
	}
}

func TestParseDictionary(t *testing.T) {
	good := map[string]string{
		`a=1, b=?0;x, c=(1 "two" :AQI=: tok);p=-1.5`:          `a=1, b=?0;x, c=(1 "two" :AQI=: tok);p=-1.5`,
		`sig1=("@method" "@path";req);created=1;keyid="k\"1"`: ``,
	}
	for in := range good {
		if _, err := ParseDictionary(in); err != nil {
			t.Errorf("%q: %v", in, err)
		}
	}
	for _, bad := range []string{`A=1`, `a=`, `a=1,`, `a=(1`, `a="x`, `a=:AQI`, `a=?2`, `a="\x"`, `a=1 b=2`, `a=12345678901234567`, `a=1.2345`} {
		if _, err := ParseDictionary(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	l, err := ParseInnerList(`("@status" "x";req);created=5;keyid="k"`)
	if err != nil {
		t.Fatal(err)
	}
	b, err := AppendInnerList(nil, l)
	if err != nil || string(b) != `("@status" "x";req);created=5;keyid="k"` {
		t.Fatalf("%s %v", b, err)
	}
}

func TestParseRaw(t *testing.T) {
	raw := "GET /v1/x?q=1 HTTP/1.1\r\nHost: api.example\r\n\r\n" +
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
	m, err := ParseRaw([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	if m.Status != 200 || string(m.Body) != "hello" || m.Request.Method != "GET" || m.Request.Authority != "api.example" || m.Request.Path != "/v1/x" || m.Request.Query != "?q=1" {
		t.Fatalf("%+v %+v", m, m.Request)
	}
	chunked := "HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n5\r\nhello\r\n0\r\n\r\n"
	if m, err := ParseRaw([]byte(chunked)); err != nil || string(m.Body) != "hello" {
		t.Fatalf("%v %q", err, m.Body)
	}
	for _, bad := range []string{
		"", "HTTP/1.1 200 OK\r\n", "HTTP/1.1 2000 OK\r\n\r\n", "HTTP/1.1 200 OK\r\nbad line\r\n\r\n",
		"HTTP/1.1 200 OK\r\nA: b\r\n folded\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nhello",
		"NOT A REQUEST\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", "HTTP/1.1 200 OK\r\nA: b\x00c\r\n\r\n",
	} {
		if _, err := ParseRaw([]byte(bad)); !errors.Is(err, ErrParse) {
			t.Errorf("%q: err = %v", bad, err)
		}
	}
	huge := "HTTP/1.1 200 OK\r\nA: " + strings.Repeat("x", MaxHeadBytes) + "\r\n\r\n"
	if _, err := ParseRaw([]byte(huge)); !errors.Is(err, ErrParse) {
		t.Fatalf("huge head: %v", err)
	}
}

func TestParseJSON(t *testing.T) {
	j := `{"request":{"method":"POST","url":"https://api.example/v1/p?x=1"},"status":201,
	       "headers":[["Content-Type","application/json"],["X-A","1"],["x-a","2"]],"body":"{}"}`
	m, err := Parse([]byte(j))
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := m.Get("x-a"); v != "1, 2" || m.Request.Authority != "api.example" || m.Request.Path != "/v1/p" || m.Request.Scheme != "https" {
		t.Fatalf("%+v %+v", m, m.Request)
	}
	m, err = Parse([]byte(`{"status":200,"headers":{"b":"2","a":["1","3"]},"body_base64":"aGk="}`))
	if err != nil || string(m.Body) != "hi" {
		t.Fatal(err)
	}
	for _, bad := range []string{`{}`, `{"status":200,"headers":[["a"]]}`, `{"status":200,"body":"a","body_base64":"YQ=="}`, `{"status":200,"extra":1}`, `{"status":200,"request":{}}`} {
		if _, err := Parse([]byte(bad)); !errors.Is(err, ErrParse) {
			t.Errorf("%s: err = %v", bad, err)
		}
	}
}

// The signer serializes parameters directly; the verifier re-serializes the
// parsed list. Both must give the same bytes.
func TestSerializedParamsMatchInnerList(t *testing.T) {
	p := Params{Components: []Component{{Name: "@status"}, {Name: "x-a"}, {Name: "@path", Req: true}},
		Created: 1700000000, Expires: 1700000300, KeyID: `k"1\`, Alg: AlgEd25519, Nonce: "n", Tag: "t"}
	a, err := p.appendSerialized(nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := AppendInnerList(nil, p.InnerList())
	if err != nil || string(a) != string(b) {
		t.Fatalf("%s\n%s %v", a, b, err)
	}
	l, err := ParseInnerList(string(a))
	if err != nil {
		t.Fatal(err)
	}
	c, _ := AppendInnerList(nil, l)
	if string(c) != string(a) {
		t.Fatalf("%s\n%s", c, a)
	}
}
