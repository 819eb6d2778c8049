package envoy

import (
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
		extauthz.HeaderOwner, extauthz.HeaderDecisionID, extauthz.HeaderReceipt,
	}
	got := IdentityHeaders()
	slices.Sort(server)
	slices.Sort(got)
	if !slices.Equal(got, server) {
		t.Fatalf("envoy strips %v, agentauthz sets %v", got, server)
	}
}
