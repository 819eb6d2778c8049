// Package interop checks agentauthz's signed responses with independent
// implementations: the npm http-message-signatures package (RFC 9421) and
// Node's crypto (RFC 9530 Content-Digest). .ci/run installs the package
// with `npm ci --prefix test/interop/node`.
package interop

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/httpsig"
	"github.com/agentauthz/agentauthz/internal/respsig"
	"github.com/agentauthz/agentauthz/internal/testenv"
)

// nodeVerifier returns the node binary and the verify script, or skips
// (fails under CI=true) when they are not installed.
func nodeVerifier(t *testing.T) (string, string) {
	t.Helper()
	node := testenv.LookPath(t, "node", "nodejs")
	script, _ := filepath.Abs("node/verify.js")
	if _, err := os.Stat("node/node_modules/http-message-signatures/package.json"); err != nil {
		testenv.Missing(t, "the npm package http-message-signatures", "npm ci --prefix test/interop/node")
	}
	return node, script
}

type nodeResult struct {
	Signature bool   `json:"signature"`
	Digest    *bool  `json:"digest"`
	KeyID     string `json:"keyid"`
	Error     string `json:"error"`
}

func runNode(t *testing.T, node, script string, in any) (nodeResult, int) {
	t.Helper()
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(node, script) //nolint:gosec // node from PATH running the committed verify.js
	cmd.Stdin = bytes.NewReader(b)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	var r nodeResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("node output %q (stderr %s): %v", out, stderr.String(), err)
	}
	return r, code
}

func TestNodeVerifiesSignedResponse(t *testing.T) {
	node, script := nodeVerifier(t)
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	kid := decisionlog.KeyID(pub)
	jwk := decisionlog.KeySet{kid: pub}.JWKS().Keys[0]
	signer := &respsig.Signer{KeyID: kid, Sign: func(b []byte) ([]byte, error) { return ed25519.Sign(priv, b), nil }, Now: time.Now}

	sign := func(status int, body string, ct string) *httpsig.Message {
		m := &httpsig.Message{Status: status, Body: []byte(body),
			Request: &httpsig.Message{Method: "POST", Scheme: "https", Authority: "payments.internal", Path: "/v1/payments"}}
		if ct != "" {
			m.Set("Content-Type", ct)
		}
		if _, _, err := signer.SignResponse(m, respsig.Decision{ID: "0190c6c4-7e0a-7d3c-9d6e-1f2a3b4c5d6e", AgentID: "payments-agent", TrustLevel: "L3", Operation: "payments:initiate"},
			httpsig.DigestBody(m.Body), ""); err != nil {
			t.Fatal(err)
		}
		return m
	}
	input := func(m *httpsig.Message) map[string]any {
		h := map[string]string{}
		for _, f := range m.Header {
			h[f.Name] = f.Value
		}
		return map[string]any{
			"jwk":         jwk,
			"request":     map[string]any{"method": "POST", "url": "https://payments.internal/v1/payments", "headers": map[string]string{}},
			"response":    map[string]any{"status": m.Status, "headers": h},
			"body_base64": base64.StdEncoding.EncodeToString(m.Body),
		}
	}

	for _, c := range []struct {
		name, body, ct string
		status         int
	}{
		{"json", `{"payment":"p-1","amount":"12.50"}`, "application/json", 201},
		{"empty body", "", "", 204},
		{"binary", "\x00\xff\x10 bytes", "application/octet-stream", 200},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := sign(c.status, c.body, c.ct)
			r, code := runNode(t, node, script, input(m))
			if code != 0 || !r.Signature || r.Digest == nil || !*r.Digest || r.KeyID != kid {
				t.Fatalf("node did not verify agentauthz's signature: exit %d %+v", code, r)
			}
		})
	}

	// The independent verifier must also reject tampering, or the checks
	// above prove nothing.
	m := sign(201, `{"payment":"p-1"}`, "application/json")
	in := input(m)
	in["body_base64"] = base64.StdEncoding.EncodeToString([]byte(`{"payment":"p-2"}`))
	if r, code := runNode(t, node, script, in); code != 1 || r.Digest == nil || *r.Digest {
		t.Fatalf("changed body accepted by node: exit %d %+v", code, r)
	}
	in = input(m)
	in["response"].(map[string]any)["status"] = 200
	if r, code := runNode(t, node, script, in); code != 1 || r.Signature {
		t.Fatalf("changed status accepted by node: exit %d %+v", code, r)
	}
	in = input(m)
	in["request"].(map[string]any)["url"] = "https://payments.internal/v1/refunds"
	if r, code := runNode(t, node, script, in); code != 1 || r.Signature {
		t.Fatalf("changed request path accepted by node: exit %d %+v", code, r)
	}
}
