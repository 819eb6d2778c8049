package adversarial

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/proto"

	"github.com/agentauthz/agentauthz/internal/checkreq"
	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/testca"
)

// TestBodyCutInsideACharacterReachesThePolicyAsBytes: with pack_as_bytes
// (packAsBytes in Istio) Envoy sends the first max_request_bytes of a body
// in raw_body. A cut that falls inside a multi-byte character is not UTF-8;
// over a real gRPC connection it must reach the policy byte for byte, marked
// truncated. The same bytes in the string field body (no pack_as_bytes)
// cannot even be sent: protobuf strings must be UTF-8.
func TestBodyCutInsideACharacterReachesThePolicyAsBytes(t *testing.T) {
	const limit = 8192 // with_request_body.max_request_bytes in the shipped kit
	full := []byte(`{"memo":"` + strings.Repeat("€", limit/3+10) + `"}`)
	cut := full[:limit]
	if utf8.Valid(cut) {
		t.Fatal("the cut does not fall inside a character: adjust the body")
	}

	// The policy allows only when it sees exactly the bytes Envoy sent.
	dir := t.TempDir()
	rego := `package agentauthz.authz

decision := {"allowed": true, "reason": "allowed"} if {
	input.attributes.request.http.rawBody == "` + base64.StdEncoding.EncodeToString(cut) + `"
	input.truncated_body == true
} else := {"allowed": false, "reason": "policy_denied", "http_status": 403}
`
	if err := os.WriteFile(filepath.Join(dir, "authz.rego"), []byte(rego), 0o600); err != nil {
		t.Fatal(err)
	}
	ca := testca.New(t)
	svc := startService(t, newConfig(t, ca.WriteBundle(), func(c *config.Config) { c.Policy.Dir = dir }))
	leaf := issueSpec(ca, catalogueAgents()["reader"])
	req, err := checkreq.Build(checkreq.Request{
		Method: "POST", Path: "/v1/notes", CertPEM: leaf.PEM(), Via: checkreq.ViaPeer, RequestID: "raw-body",
		Headers: map[string]string{"content-type": "application/json", "content-length": strconv.Itoa(len(full))},
	})
	if err != nil {
		t.Fatal(err)
	}
	req.Attributes.Request.Http.RawBody = cut
	req.Attributes.Request.Http.Size = int64(len(full))

	resp, err := svc.client.Check(t.Context(), req)
	if err != nil {
		t.Fatalf("Check over gRPC: %v", err)
	}
	checkNoLeak(t, resp)
	v := reduce(resp)
	if !v.Allowed {
		t.Fatalf("the policy did not see the cut body byte for byte: %+v", v)
	}
	if rec := svc.verifyLog(t)[v.DecisionID]; rec == nil || !rec.Decision.Allowed {
		t.Fatalf("record %+v", rec)
	}

	asString := proto.Clone(req).(*authv3.CheckRequest)
	asString.Attributes.Request.Http.RawBody = nil
	asString.Attributes.Request.Http.Body = string(cut)
	if _, err := svc.client.Check(t.Context(), asString); err == nil || !strings.Contains(err.Error(), "UTF-8") {
		t.Fatalf("the cut body as a protobuf string: %v, want a UTF-8 marshalling error", err)
	}
}
