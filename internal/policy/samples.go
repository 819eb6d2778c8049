package policy

import (
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentauthz/agentauthz/internal/identity"
)

type sample struct {
	name  string
	req   *authv3.CheckRequest
	agent *identity.Agent
}

// sampleRequests are the smoke inputs every policy must evaluate without an
// error before it is swapped in: a read and a write by a known agent, and a
// request without identity. They are built fresh each time (the protobuf
// messages are mutable).
func sampleRequests() []sample {
	agent := &identity.Agent{
		ID: "smoke-agent", SPIFFEID: "spiffe://smoke.invalid/agent/smoke-agent", Tenant: "smoke.invalid",
		TrustLevel: 2, Scopes: []string{"payments:read"}, Owner: "smoke", Serial: "1",
		CertSHA256: "00", Issuer: "CN=smoke", NotBefore: time.Unix(0, 0), NotAfter: time.Unix(1<<32, 0),
		Profile: identity.ProfileNative, Source: identity.SourcePeerCertificate,
	}
	return []sample{
		{"GET with agent", sampleRequest("GET", "/v1/payments/p-1?expand=true", "", ""), agent},
		{"POST JSON with agent", sampleRequest("POST", "/v1/payments", "application/json", `{"amount":1}`), agent},
		{"GET without agent", sampleRequest("GET", "/", "", ""), nil},
	}
}

func sampleRequest(method, path, contentType, body string) *authv3.CheckRequest {
	headers := map[string]string{":authority": "api.smoke.invalid", ":method": method, ":path": path, "x-request-id": "smoke"}
	if contentType != "" {
		headers["content-type"] = contentType
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
			SocketAddress: &corev3.SocketAddress{Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 50000}},
		}}},
		Request: &authv3.AttributeContext_Request{
			Time: timestamppb.New(time.Unix(1700000000, 0)),
			Http: &authv3.AttributeContext_HttpRequest{
				Id: "1", Method: method, Path: path, Host: "api.smoke.invalid", Scheme: "https",
				Protocol: "HTTP/1.1", Headers: headers, Body: body,
			},
		},
	}}
}
