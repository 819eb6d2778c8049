package demo

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/httpsig"
	"github.com/agentauthz/agentauthz/internal/respsig"
)

// SignedResponse is the API's answer to one allowed request, signed by the
// replica that decided it (ext_proc on the same gRPC port as ext_authz),
// verified as a client would, and verified again after tampering.
type SignedResponse struct {
	DecisionID     string `json:"decision_id"`
	Replica        string `json:"replica"`
	Agent          string `json:"agent"`
	TrustLevel     string `json:"trust_level"`
	Operation      string `json:"operation"`
	Request        string `json:"request"`
	Status         int    `json:"status"`
	SignatureInput string `json:"signature_input"`
	Verified       bool   `json:"verified"`
	VerifyError    string `json:"verify_error,omitempty"`
	// TamperError is why the tampered copy failed verification; empty
	// means it verified, which would be a defect.
	TamperError string `json:"tamper_error"`
}

const demoResponseBody = `{"payment_id":"pay_8Kx1","status":"accepted","amount":"12.50"}`

// signResponse plays Envoy's ext_proc filter for the response to d: request
// headers as ext_authz left them, response headers, the whole body.
func signResponse(ctx context.Context, r *replica, d Decision) (*SignedResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	stream, err := extprocv3.NewExternalProcessorClient(r.conn).Process(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: ext_proc: %w", r.Name, err)
	}
	hm := func(kv ...string) *corev3.HeaderMap {
		m := &corev3.HeaderMap{}
		for i := 0; i+1 < len(kv); i += 2 {
			m.Headers = append(m.Headers, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
		}
		return m
	}
	msgs := []*extprocv3.ProcessingRequest{
		{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
			Headers: hm(":method", d.Method, ":authority", apiHost, ":path", d.Path, ":scheme", "https",
				"x-decision-id", d.DecisionID, "x-agent-receipt", d.Receipt, "x-agent-id", d.Agent),
			EndOfStream: d.Method == "GET"}},
			ProtocolConfig: &extprocv3.ProtocolConfiguration{ResponseBodyMode: filterv3.ProcessingMode_BUFFERED_PARTIAL}},
		{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
			Headers: hm(":status", "201", "content-type", "application/json", "content-length", fmt.Sprint(len(demoResponseBody)))}}},
		{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{Body: []byte(demoResponseBody), EndOfStream: true}}},
	}
	resp := &httpsig.Message{Status: 201, Body: []byte(demoResponseBody),
		Header:  []httpsig.Field{{Name: "content-type", Value: "application/json"}},
		Request: &httpsig.Message{Method: d.Method, Authority: apiHost, Path: d.Path}}
	for _, m := range msgs {
		if err := stream.Send(m); err != nil {
			return nil, fmt.Errorf("%s: ext_proc send: %w", r.Name, err)
		}
		pr, err := stream.Recv()
		if err != nil {
			return nil, fmt.Errorf("%s: ext_proc: %w", r.Name, err)
		}
		if ir := pr.GetImmediateResponse(); ir != nil {
			return nil, fmt.Errorf("%s: ext_proc refused the response: %d %s", r.Name, ir.GetStatus().GetCode(), ir.GetBody())
		}
		var mut *extprocv3.HeaderMutation
		switch x := pr.GetResponse().(type) {
		case *extprocv3.ProcessingResponse_ResponseHeaders:
			mut = x.ResponseHeaders.GetResponse().GetHeaderMutation()
		case *extprocv3.ProcessingResponse_ResponseBody:
			mut = x.ResponseBody.GetResponse().GetHeaderMutation()
		}
		for _, n := range mut.GetRemoveHeaders() {
			resp.Del(n)
		}
		for _, o := range mut.GetSetHeaders() {
			resp.Set(o.GetHeader().GetKey(), string(o.GetHeader().GetRawValue()))
		}
	}
	_ = stream.CloseSend()

	ks, err := decisionlog.ParseKeySet(r.JWKS)
	if err != nil {
		return nil, fmt.Errorf("%s: public keys: %w", r.Name, err)
	}
	opts := respsig.Options{Keys: func(kid string) (ed25519.PublicKey, bool) { k, ok := ks[kid]; return k, ok }}
	out := &SignedResponse{DecisionID: d.DecisionID, Replica: r.Name, Request: d.Method + " " + apiHost + d.Path, Status: 201}
	out.SignatureInput, _ = resp.Get("signature-input")
	res, err := respsig.Verify(resp, opts)
	if err != nil {
		out.VerifyError = err.Error()
	} else {
		out.Verified = res.DecisionID == d.DecisionID && res.BodyCovered
		out.Agent, out.TrustLevel, out.Operation = res.AgentID, res.TrustLevel, res.Operation
	}
	// On the way to the client, someone changes the amount.
	resp.Body = []byte(strings.Replace(demoResponseBody, "12.50", "9999.00", 1))
	if _, err := respsig.Verify(resp, opts); err != nil {
		out.TamperError = err.Error()
	}
	return out, nil
}

func (sr *SignedResponse) problems() []string {
	var out []string
	if !sr.Verified {
		out = append(out, "the signed response did not verify: "+sr.VerifyError)
	}
	if sr.TamperError == "" {
		out = append(out, "a tampered response verified")
	}
	return out
}

func (p *printer) signedResponse(sr *SignedResponse) {
	p.section("3b. The API's answer, signed by agentauthz (ext_proc on the same gRPC port) and checked by the client")
	p.line("%s -> %d, decided and signed by %s", sr.Request, sr.Status, sr.Replica)
	p.line("signature-input: %s", sr.SignatureInput)
	if sr.Verified {
		p.line("verify:          valid: decision %s, agent %s (%s), operation %s, body covered", sr.DecisionID, sr.Agent, sr.TrustLevel, sr.Operation)
	} else {
		p.line("verify:          INVALID: %s", sr.VerifyError)
	}
	if sr.TamperError != "" {
		p.line("amount changed in transit (12.50 -> 9999.00): invalid: %s", sr.TamperError)
	} else {
		p.line("amount changed in transit (12.50 -> 9999.00): still verifies (DEFECT)")
	}
}

// signDemoResponse signs the response to payments-agent's first allowed
// payment, on the replica that decided it.
func signDemoResponse(ctx context.Context, reps []*replica, ds []Decision) (*SignedResponse, error) {
	for _, d := range ds {
		if !d.Allowed || d.Method != "POST" || d.Agent != "payments-agent" {
			continue
		}
		for _, r := range reps {
			if r.Name == d.Replica {
				return signResponse(ctx, r, d)
			}
		}
	}
	return nil, fmt.Errorf("%w: no allowed payment to sign a response for", ErrUnexpected)
}
