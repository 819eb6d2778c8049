package policy_test

import (
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"google.golang.org/protobuf/proto"

	"github.com/agentauthz/agentauthz/internal/identity"
	"github.com/agentauthz/agentauthz/internal/loadtest"
	"github.com/agentauthz/agentauthz/internal/policy"
)

// naiveValue is the reference: opa-envoy-plugin's map (loadtest.NaiveInput,
// the load harness's baseline), then ast.InterfaceToValue as
// opa-envoy-plugin calls it.
func naiveValue(t testing.TB, req *authv3.CheckRequest, agent *identity.Agent, op string) ast.Value {
	t.Helper()
	m, err := loadtest.NaiveInput(req, agent, op)
	if err != nil {
		t.Fatalf("NaiveInput: %v", err)
	}
	v, err := ast.InterfaceToValue(m)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestBuildInputEqualsReference(t *testing.T) {
	for name, req := range policy.TestRequests() {
		t.Run(name, func(t *testing.T) {
			for _, agent := range []*identity.Agent{nil, policy.TestAgent()} {
				got, err := policy.BuildInput(req, agent, "payments:read")
				if err != nil {
					t.Fatalf("BuildInput: %v", err)
				}
				want := naiveValue(t, req, agent, "payments:read")
				if got.Compare(want) != 0 {
					t.Fatalf("input differs from the reference (opa-envoy-plugin's conversion)\n got: %v\nwant: %v", got, want)
				}
			}
		})
	}
}

// FuzzBuildInput checks that for any CheckRequest the direct builder agrees
// with the reference: both fail, or both give the same document.
func FuzzBuildInput(f *testing.F) {
	for _, req := range policy.TestRequests() {
		bs, err := proto.Marshal(req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(bs)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var req authv3.CheckRequest
		if err := proto.Unmarshal(data, &req); err != nil {
			t.Skip()
		}
		got, errA := policy.BuildInput(&req, policy.TestAgent(), "op")
		m, errB := loadtest.NaiveInput(&req, policy.TestAgent(), "op")
		if (errA == nil) != (errB == nil) {
			t.Fatalf("BuildInput error %v, reference error %v", errA, errB)
		}
		if errA != nil {
			return
		}
		want, err := ast.InterfaceToValue(m)
		if err != nil {
			t.Fatal(err)
		}
		if got.Compare(want) != 0 {
			t.Fatalf("input differs\n got: %v\nwant: %v", got, want)
		}
	})
}

func BenchmarkBuildInputNaive(b *testing.B) {
	req, agent := policy.SampleRequest("POST", "/v1/payments", "", ""), policy.TestAgent()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := loadtest.NaiveInput(req, agent, "payments:initiate"); err != nil {
			b.Fatal(err)
		}
	}
}
