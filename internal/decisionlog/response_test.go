package decisionlog

import (
	"context"
	"crypto/ed25519"
	"testing"
)

// A response record is appended, chained and verified like a decision;
// a response on another kind, or a response kind without one, is refused.
func TestResponseRecord(t *testing.T) {
	o := testOptions(t)
	l := mustOpen(t, o)
	appendN(t, l, 1, 1)
	rec := sampleRecord(2)
	rec.Kind = KindResponse
	rec.Response = &Response{Status: 201, Body: "signed", ContentDigest: "sha-256=:AAAA:", Bytes: 17,
		SignatureInput: `agentauthz=("@status");created=1`, Signature: "agentauthz=:AAAA:"}
	rc, err := l.Append(context.Background(), rec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyReceipt(rc.Header, l.PublicKeys()); err != nil {
		t.Fatal(err)
	}
	records, _, _ := logLines(t, o.Dir)
	got, err := decodeRecordLine(records[rc.Index])
	if err != nil {
		t.Fatal(err)
	}
	if got.Kind != KindResponse || got.Response == nil || *got.Response != *rec.Response {
		t.Fatalf("%+v", got)
	}
	for _, bad := range []*Record{
		{DecisionID: "x", Kind: KindResponse},
		{DecisionID: "x", Response: &Response{Status: 200}},
		{DecisionID: "x", Kind: KindKeyRotation},
	} {
		if _, err := l.Append(context.Background(), bad); err == nil {
			t.Errorf("appended %+v", bad)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	res := mustVerify(t, o)
	if res.Records != 2 {
		t.Fatalf("verified %d records", res.Records)
	}
}

func TestResponseSigner(t *testing.T) {
	l := mustOpen(t, testOptions(t))
	defer l.Close()
	kid, sign := l.ResponseSigner()
	if kid != l.KeyID() {
		t.Fatalf("kid %s, log key %s", kid, l.KeyID())
	}
	base := []byte(`"@status": 200` + "\n" + `"@signature-params": ("@status");keyid="` + kid + `"`)
	sig, err := sign(base)
	if err != nil || !ed25519.Verify(l.PublicKeys()[kid], base, sig) {
		t.Fatalf("signature does not verify: %v", err)
	}
	// Never a checkpoint's note text (it starts with the log's name) nor a
	// v1 JWS signing input: those are the log's own signatures.
	for _, msg := range []string{"test-1\n1\nAAAA\n", "eyJhbGciOiJFZERTQSJ9.eyJzZXEiOjF9"} {
		if _, err := sign([]byte(msg)); err == nil {
			t.Fatalf("signed %q", msg)
		}
	}
}
