package compat

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/agentauthz/agentauthz/internal/identity"
	"github.com/agentauthz/agentauthz/internal/loadtest"
	"github.com/agentauthz/agentauthz/internal/policy"
)

var update = flag.Bool("update", false, "rewrite testdata/input.golden.json from the input builder")

// goldenAgent is a fixed identity: the golden file must not change with
// freshly generated certificates.
func goldenAgent() *identity.Agent {
	return &identity.Agent{
		ID: "payments-bot", SPIFFEID: "spiffe://example.test/agent/payments-bot", Tenant: "example.test",
		TrustLevel: 3, Scopes: []string{"payments:initiate", "payments:read"}, Owner: "team-payments",
		Serial: "1a2b", CertSHA256: "ab12", Issuer: "CN=example.test CA",
		NotBefore: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), NotAfter: time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC),
		Profile: identity.ProfileNative, Source: identity.SourcePeerCertificate,
	}
}

// TestGoldenInput pins the whole input for a fully populated, Envoy-shaped
// CheckRequest (testdata/checkrequest.json, protojson): every
// AttributeContext field, a headers map and a raw header map, a body both
// as text and as bytes, Struct and Any metadata, a leading "//" and a
// fragment in the path. Without input.agent and input.operation, the
// golden file is what opa-envoy-plugin's envoyauth.RequestToInput gives
// for the same request (docs/policies.md says how to check that); the
// test also holds it against the in-tree transcription of that conversion
// (loadtest.NaiveInput). Run with -update to rewrite it after a deliberate
// change, and review the diff.
func TestGoldenInput(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("testdata", "checkrequest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var req authv3.CheckRequest
	if err := protojson.Unmarshal(raw, &req); err != nil {
		t.Fatal(err)
	}
	v, err := policy.BuildInput(&req, goldenAgent(), "payments:initiate")
	if err != nil {
		t.Fatal(err)
	}
	got := render(t, v)
	ref, err := loadtest.NaiveInput(&req, goldenAgent(), "payments:initiate")
	if err != nil {
		t.Fatal(err)
	}
	refV, err := ast.InterfaceToValue(ref)
	if err != nil {
		t.Fatal(err)
	}
	if want := render(t, refV); !bytes.Equal(got, want) {
		t.Errorf("BuildInput differs from the reference conversion\n got: %s\nwant: %s", got, want)
	}
	golden := filepath.Join("testdata", "input.golden.json")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("input differs from %s (run with -update after a deliberate change)\n got: %s", golden, got)
	}
}

// render is the value as indented JSON with sorted keys, numbers as written.
func render(t *testing.T, v ast.Value) []byte {
	t.Helper()
	x, err := ast.JSON(v)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(x); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}
