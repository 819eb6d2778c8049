package envoy

import (
	"os"
	"regexp"
	"slices"
	"testing"

	"github.com/agentauthz/agentauthz/internal/extauthz"
)

// TestStrippedHeadersAreTheServersIdentityHeaders keeps the header_mutation
// strip list (and the invariant that demands it) equal to the headers the
// decision service sets on allow.
func TestStrippedHeadersAreTheServersIdentityHeaders(t *testing.T) {
	server := []string{
		extauthz.HeaderAgentID, extauthz.HeaderSPIFFEID, extauthz.HeaderTrustLevel, extauthz.HeaderScopes,
		extauthz.HeaderOwner, extauthz.HeaderDecisionID, extauthz.HeaderReceipt, extauthz.HeaderMCPTools,
	}
	got := IdentityHeaders()
	slices.Sort(server)
	slices.Sort(got)
	if !slices.Equal(got, server) {
		t.Fatalf("envoy strips %v, agentauthz sets %v", got, server)
	}
}

// TestStrippedHeadersCoverThePolicysHeaders: every request header the
// shipped policy sets on allow is stripped from client requests, so a
// client-sent copy cannot reach the upstream where ext_authz is off.
func TestStrippedHeadersCoverThePolicysHeaders(t *testing.T) {
	rego, err := os.ReadFile("../policies/authz.rego")
	if err != nil {
		t.Fatal(err)
	}
	block := regexp.MustCompile(`"headers":\s*\{([^}]*)\}`).FindAllSubmatch(rego, -1)
	if len(block) == 0 {
		t.Fatal("policies/authz.rego sets no headers: update this test")
	}
	stripped := StrippedHeaders()
	for _, b := range block {
		for _, h := range regexp.MustCompile(`"([A-Za-z0-9-]+)"\s*:`).FindAllSubmatch(b[1], -1) {
			if !slices.Contains(stripped, string(h[1])) {
				t.Errorf("the policy sets %s, which the proxies do not strip from client requests", h[1])
			}
		}
	}
	for _, h := range IdentityHeaders() {
		if !slices.Contains(stripped, h) {
			t.Errorf("identity header %s is not stripped", h)
		}
	}
}
