package respsig

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/httpsig"
)

// TestKey returns RFC 9421's published test key (Appendix B.1.4), so
// fixtures are reproducible; never a real key.
func testKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	b, err := os.ReadFile("testdata/test-key-ed25519.key.pem")
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k.(ed25519.PrivateKey)
}

func newResponse() *httpsig.Message {
	return &httpsig.Message{
		Status:  201,
		Header:  []httpsig.Field{{Name: "Content-Type", Value: "application/json"}, {Name: "Signature", Value: "up=:AAAA:"}, {Name: "Signature-Input", Value: `up=("@status")`}},
		Body:    []byte(`{"payment":"p-1"}`),
		Request: &httpsig.Message{Method: "POST", Authority: "payments.internal", Path: "/v1/payments"},
	}
}

var decision = Decision{ID: "0190c6c4-7e0a-7d3c-9d6e-1f2a3b4c5d6e", AgentID: "payments-agent", TrustLevel: "L3", Operation: "payments:initiate"}

func TestSignVerify(t *testing.T) {
	priv := testKey(t)
	pub := priv.Public().(ed25519.PublicKey)
	s := &Signer{KeyID: "k1", Sign: func(b []byte) ([]byte, error) { return ed25519.Sign(priv, b), nil }, Now: func() time.Time { return time.Unix(1_800_000_000, 0) }}
	keys := func(id string) (ed25519.PublicKey, bool) { return pub, id == "k1" }

	m := newResponse()
	set, del, err := s.SignResponse(m, decision, httpsig.DigestBody(m.Body), "")
	if err != nil {
		t.Fatal(err)
	}
	if len(set) != 7 || len(del) != 1 || del[0] != HeaderBodyUnsigned {
		t.Fatalf("set %v del %v", set, del)
	}
	// The upstream's own signature was replaced, not kept beside ours.
	if v, _ := m.Get("signature"); strings.Contains(v, "up=") {
		t.Fatalf("upstream signature kept: %s", v)
	}
	r, err := Verify(m, Options{Keys: keys, Now: time.Unix(1_800_000_010, 0), MaxAge: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if r.DecisionID != decision.ID || r.AgentID != "payments-agent" || r.TrustLevel != "L3" || r.Operation != "payments:initiate" ||
		r.Method != "POST" || r.Path != "/v1/payments" || r.Status != 201 || !r.BodyCovered || r.KeyID != "k1" {
		t.Fatalf("%+v", r)
	}

	tamper := map[string]struct {
		f    func(*httpsig.Message)
		want error
	}{
		"body":           {func(m *httpsig.Message) { m.Body = []byte(`{"payment":"p-2"}`) }, httpsig.ErrDigest},
		"status":         {func(m *httpsig.Message) { m.Status = 200 }, httpsig.ErrBadSignature},
		"agent":          {func(m *httpsig.Message) { m.Set(HeaderAgentID, "other-agent") }, httpsig.ErrBadSignature},
		"trust level":    {func(m *httpsig.Message) { m.Set(HeaderTrustLevel, "L4") }, httpsig.ErrBadSignature},
		"decision":       {func(m *httpsig.Message) { m.Set(HeaderDecisionID, "x") }, httpsig.ErrBadSignature},
		"path":           {func(m *httpsig.Message) { m.Request.Path = "/v1/refunds" }, httpsig.ErrBadSignature},
		"content type":   {func(m *httpsig.Message) { m.Set("content-type", "text/html") }, httpsig.ErrBadSignature},
		"digest swapped": {func(m *httpsig.Message) { m.Set("content-digest", httpsig.DigestBody(nil)) }, httpsig.ErrBadSignature},
	}
	for name, c := range tamper {
		t.Run(name, func(t *testing.T) {
			m := newResponse()
			if _, _, err := s.SignResponse(m, decision, httpsig.DigestBody(m.Body), ""); err != nil {
				t.Fatal(err)
			}
			c.f(m)
			if _, err := Verify(m, Options{Keys: keys}); !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
		})
	}

	// A body that could not be covered is signed as such, never silently.
	m = newResponse()
	if _, _, err := s.SignResponse(m, decision, "", UnsignedTooLarge); err != nil {
		t.Fatal(err)
	}
	r, err = Verify(m, Options{Keys: keys})
	if err != nil || r.BodyCovered || r.BodyUnsigned != UnsignedTooLarge {
		t.Fatalf("%+v %v", r, err)
	}
	m.Set(HeaderBodyUnsigned, UnsignedStreamed)
	if _, err := Verify(m, Options{Keys: keys}); !errors.Is(err, httpsig.ErrBadSignature) {
		t.Fatalf("changed marker: %v", err)
	}
	if _, _, err := s.SignResponse(newResponse(), decision, "", ""); err == nil {
		t.Fatal("neither digest nor marker accepted")
	}

	// No content-type: not covered; one added later is refused.
	m = newResponse()
	m.Del("content-type")
	if _, _, err := s.SignResponse(m, decision, httpsig.DigestBody(m.Body), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(m, Options{Keys: keys}); err != nil {
		t.Fatal(err)
	}
	m.Set("content-type", "text/html")
	if _, err := Verify(m, Options{Keys: keys}); !errors.Is(err, ErrProfile) {
		t.Fatalf("added content-type: %v", err)
	}
}

// A valid RFC 9421 signature that is not ours is refused.
func TestVerifyProfile(t *testing.T) {
	priv := testKey(t)
	pub := priv.Public().(ed25519.PublicKey)
	m := newResponse()
	m.Del("signature")
	m.Del("signature-input")
	sg, err := httpsig.Sign(m, Label, httpsig.Params{Components: []httpsig.Component{{Name: "@status"}}, KeyID: "k1", Tag: Tag, Created: 1},
		func(b []byte) ([]byte, error) { return ed25519.Sign(priv, b), nil })
	if err != nil {
		t.Fatal(err)
	}
	m.Set("signature-input", sg.Input)
	m.Set("signature", sg.Signature)
	if _, err := Verify(m, Options{Keys: func(string) (ed25519.PublicKey, bool) { return pub, true }}); !errors.Is(err, ErrProfile) {
		t.Fatalf("err = %v", err)
	}
}
