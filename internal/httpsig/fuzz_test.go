package httpsig

import (
	"crypto/ed25519"
	"testing"
)

// FuzzParseDictionary: the structured-field parser never panics, and every
// inner list it accepts serializes to a form that parses back to the same
// serialization (the verifier rebuilds @signature-params this way).
func FuzzParseDictionary(f *testing.F) {
	for _, s := range []string{
		`sig1=("@method" "@path";req "content-digest");created=1618884473;keyid="test-key-ed25519";alg="ed25519"`,
		`sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:, sha-512=:AAAA:`,
		`a=1, b=?0;x, c=(1 "two" :AQI=: tok);p=-1.5, d`,
		`a=("x" ;y=1)`, `*=1`, `a=(`, `a="\\"`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDictionary(s)
		if err != nil {
			return
		}
		for _, m := range d {
			if m.List == nil {
				continue
			}
			b, err := AppendInnerList(nil, *m.List)
			if err != nil {
				continue // e.g. a decimal out of range after rounding
			}
			l2, err := ParseInnerList(string(b))
			if err != nil {
				t.Fatalf("serialized %q does not parse: %v", b, err)
			}
			b2, err := AppendInnerList(nil, l2)
			if err != nil || string(b2) != string(b) {
				t.Fatalf("round trip %q -> %q (%v)", b, b2, err)
			}
		}
	})
}

// FuzzParse: the saved-message parsers never panic and keep their bounds.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
		"GET /v1/x?q=1 HTTP/1.1\r\nHost: api.example\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n5\r\nhello\r\n0\r\n\r\n",
		`{"request":{"method":"POST","url":"https://a/b?c"},"status":201,"headers":[["a","b"]],"body":"x"}`,
		`{"status":200,"headers":{"a":["1","2"]},"body_base64":"aGk="}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Parse(b)
		if err != nil {
			return
		}
		if m.Status < 100 || m.Status > 999 || len(m.Header) > MaxFields {
			t.Fatalf("accepted status %d with %d fields", m.Status, len(m.Header))
		}
	})
}

// FuzzVerify: arbitrary signature fields on a fixed response never panic
// and never verify unless they carry a real signature of the test key.
func FuzzVerify(f *testing.F) {
	pub, priv := loadRFCKey(f)
	m := testResponse()
	s, err := Sign(m, "sig", Params{Components: []Component{{Name: "@status"}, {Name: "@path", Req: true}}, KeyID: "k", Created: 1},
		func(b []byte) ([]byte, error) { return ed25519.Sign(priv, b), nil })
	if err != nil {
		f.Fatal(err)
	}
	f.Add(s.Input, s.Signature)
	f.Add(`sig=("@status" "x-decision-id" "@query";req "@target-uri";req);created=1;keyid="k"`, `sig=:AAAA:`)
	f.Add(`sig=();keyid="k"`, `sig=:`+string(make([]byte, 0))+`:`)
	f.Fuzz(func(t *testing.T, in, sig string) {
		m := testResponse()
		m.Set("Signature-Input", in)
		m.Set("Signature", sig)
		vs, err := Verify(m, VerifyOptions{Key: func(string) (ed25519.PublicKey, bool) { return pub, true }})
		if err != nil {
			return
		}
		for _, v := range vs {
			sm, _ := ParseDictionary(sig)
			mem, _ := sm.Get(v.Label)
			if !ed25519.Verify(pub, v.Base, mem.Item.Value.([]byte)) {
				t.Fatalf("accepted a signature that does not verify: %q %q", in, sig)
			}
		}
	})
}
