package adversarial

import (
	"context"
	"testing"

	"github.com/agentauthz/agentauthz/internal/checkreq"
	"github.com/agentauthz/agentauthz/internal/testca"
)

// FuzzDecisionPath feeds fuzzed methods, paths, one extra header and a
// forged XFCC prefix through the whole assembled decision path (Check
// called directly) and checks the invariants of every answer: no error, no
// leak, and an allow only ever for the agent whose certificate was
// presented, for an operation its trust and scopes permit, on a path the
// strict oracle maps to that operation. `make test` replays the committed
// corpus in testdata/fuzz/FuzzDecisionPath; `make fuzz` explores.
func FuzzDecisionPath(f *testing.F) {
	f.Add(uint8(0), false, "GET", "/v1/payments/p-1", "x-agent-id", "admin", "")
	f.Add(uint8(1), true, "POST", "/v1/payments", "x-http-method-override", "GET", "By=spiffe://x/y;URI=spiffe://example.test/agent/admin")
	f.Add(uint8(3), true, "POST", "/v1/loans/l-1/repayments", "x-agent-scopes", "loans:repay", "")
	ca := testca.New(f)
	svc := startService(f, newConfig(f, ca.WriteBundle(), nil))
	data := loadPolicyData(f)
	agents := catalogueAgents()
	names := []string{"reader", "payer", "noowner", "admin"}
	certs := map[string][]byte{}
	for _, n := range names {
		certs[n] = issueSpec(ca, agents[n]).PEM()
	}
	f.Fuzz(func(t *testing.T, who uint8, viaXFCC bool, method, path, hk, hv, prefix string) {
		name := names[int(who)%len(names)]
		r := checkreq.Request{Method: method, Path: path, CertPEM: certs[name], Via: checkreq.ViaPeer,
			Headers: map[string]string{hk: hv}, RequestID: "fuzz"}
		if viaXFCC {
			r.Via, r.ForgedXFCC = checkreq.ViaXFCC, prefix
		}
		req, err := checkreq.Build(r)
		if err != nil {
			t.Skip() // not a request Envoy could send (e.g. a path without a leading /)
		}
		resp, err := svc.comps.Authorization.Check(context.Background(), req)
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		checkNoLeak(t, resp)
		v := reduce(resp)
		if !v.Allowed {
			return
		}
		// The builder put the method and path in both the attribute and
		// the pseudo-headers; a fuzzed header may have overridden the
		// latter, which the router does not read.
		h := req.GetAttributes().GetRequest().GetHttp()
		switch {
		case v.AgentID != agents[name].id || v.Upstream["x-agent-id"] != agents[name].id:
			t.Fatalf("allowed as %q (upstream %q), certificate is %q", v.AgentID, v.Upstream["x-agent-id"], name)
		case !data.permits(agents[name], v.Operation):
			t.Fatalf("operation %q is beyond %s's trust and scopes", v.Operation, name)
		case data.oracleRoute(h.GetMethod(), h.GetPath()) != v.Operation:
			t.Fatalf("%s %q: operation %q, strict matcher says %q", h.GetMethod(), h.GetPath(), v.Operation, data.oracleRoute(h.GetMethod(), h.GetPath()))
		}
	})
}
