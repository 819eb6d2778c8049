package adversarial

import (
	"path/filepath"
	"testing"

	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/testca"
)

// TestPolicyReasonCannotAllow: only the policy's "allowed" decides. A
// denying policy whose reason is "allowed" (here copied from a request
// header, so chosen by the client) is still a denial, recorded as one.
func TestPolicyReasonCannotAllow(t *testing.T) {
	ca := testca.New(t)
	svc := startService(t, newConfig(t, ca.WriteBundle(), func(c *config.Config) {
		c.Policy.Dir = filepath.Join("testdata", "policies", "reason_from_header")
	}))
	leaf := issueSpec(ca, catalogueAgents()["reader"])
	for _, why := range []string{"allowed", "Allowed", "certificate_revoked", "x\r\ny", ""} {
		req := readerRequest(t, leaf, "/v1/payments/p-1")
		if why != "" {
			req.Attributes.Request.Http.Headers["x-why"] = why
		}
		for _, via := range []string{"direct", "grpc"} {
			resp := mustCheck(t, svc, req)
			if via == "grpc" {
				var err error
				if resp, err = svc.client.Check(t.Context(), req); err != nil {
					t.Fatal(err)
				}
				checkNoLeak(t, resp)
			}
			v := reduce(resp)
			if v.Allowed {
				t.Errorf("x-why %q (%s): a denying policy was answered with an allow (reason %q)", why, via, v.Reason)
			}
			if rec := svc.verifyLog(t)[v.DecisionID]; rec == nil || rec.Decision.Allowed {
				t.Errorf("x-why %q (%s): record %+v", why, via, rec)
			}
		}
	}
}
