package server

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/extproc"
)

// Envoy sends a buffered response body of up to max_body_bytes (4 MiB) in
// one ext_proc message: the server takes it, while a Check keeps
// grpc.max_recv_msg_bytes (1 MiB).
func TestExtProcTakesBufferedBodiesChecksKeepTheirLimit(t *testing.T) {
	d := t.TempDir()
	dl, err := decisionlog.Open(decisionlog.Options{Dir: filepath.Join(d, "log"), KeyDir: filepath.Join(d, "keys"), Name: "t"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = dl.Close() }()
	table := extproc.NewTable(extproc.TableOptions{Size: 10, TTL: time.Minute})
	proc, err := extproc.New(extproc.Options{Decisions: table, Signer: dl.ResponseSigner, Log: extproc.DecisionLog{Log: dl}, Metrics: extproc.NewMetrics(nil)})
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Config{DataDir: d}
	cfg.ApplyDefaults()
	r := start(t, cfg, Components{Authorization: &stubAuthz{}, ExternalProcessor: proc})
	cc, err := grpc.NewClient(r.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cc.Close() }()

	big := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Body: strings.Repeat("x", cfg.GRPC.MaxRecvMsgBytes)}}}}
	if _, err := authv3.NewAuthorizationClient(cc).Check(context.Background(), big); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("oversize Check: %v, want ResourceExhausted", err)
	}
	big.Attributes.Request.Http.Body = strings.Repeat("x", cfg.GRPC.MaxRecvMsgBytes-64<<10)
	if _, err := authv3.NewAuthorizationClient(cc).Check(context.Background(), big); err != nil {
		t.Fatalf("Check under the limit: %v", err)
	}

	if _, err := extproc.NoteAllowed(dl, table).Append(context.Background(), &decisionlog.Record{DecisionID: "0190c6c4-7e0a-7d3c-9d6e-1f2a3b4c5d6e", Time: time.Now(),
		Agent:    decisionlog.Agent{ID: "payments-agent", TrustLevel: "L3"},
		Request:  decisionlog.Request{Method: "GET", Host: "files.internal", Path: "/big"},
		Decision: decisionlog.Decision{Allowed: true, HTTPStatus: 200, Reasons: []string{"allowed"}}}); err != nil {
		t.Fatal(err)
	}
	s, err := extprocv3.NewExternalProcessorClient(cc).Process(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	hm := func(kv ...string) *corev3.HeaderMap {
		m := &corev3.HeaderMap{}
		for i := 0; i < len(kv); i += 2 {
			m.Headers = append(m.Headers, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
		}
		return m
	}
	body := make([]byte, int(cfg.ResponseSigning.MaxBodyBytes))
	var last *extprocv3.ProcessingResponse
	for _, m := range []*extprocv3.ProcessingRequest{
		{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
			Headers: hm(":method", "GET", ":authority", "files.internal", ":path", "/big", "x-decision-id", "0190c6c4-7e0a-7d3c-9d6e-1f2a3b4c5d6e"), EndOfStream: true}}},
		{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{Headers: hm(":status", "200")}}},
		{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{Body: body, EndOfStream: true}}},
	} {
		if err := s.Send(m); err != nil {
			t.Fatal(err)
		}
		if last, err = s.Recv(); err != nil {
			t.Fatalf("ext_proc with a %d-byte body: %v", len(body), err)
		}
	}
	if last.GetResponseBody().GetResponse().GetHeaderMutation() == nil {
		t.Fatalf("a body of max_body_bytes was not signed: %v", last)
	}
}
