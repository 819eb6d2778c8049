package extproc

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/google/uuid"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/httpsig"
	"github.com/agentauthz/agentauthz/internal/respsig"
	"github.com/agentauthz/agentauthz/internal/testenv"
)

func benchLog(b *testing.B, mode decisionlog.Mode) *decisionlog.Log {
	b.Helper()
	d := b.TempDir()
	dl, err := decisionlog.Open(decisionlog.Options{Dir: filepath.Join(d, "log"), KeyDir: filepath.Join(d, "keys"), Name: "bench", Mode: mode})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = dl.Close() })
	return dl
}

// BenchmarkSignResponse is the signing cost of one response: signature
// base, Ed25519 (curve25519-voi, the log's key), the field values.
func BenchmarkSignResponse(b *testing.B) {
	dl := benchLog(b, decisionlog.Async)
	body := []byte(`{"payment":"p-1","amount":"12.50"}`)
	digest := httpsig.DigestBody(body)
	req := &httpsig.Message{Method: "POST", Authority: "payments.internal", Path: "/v1/payments"}
	d := respsig.Decision{ID: "0190c6c4-7e0a-7d3c-9d6e-1f2a3b4c5d6e", AgentID: "payments-agent", TrustLevel: "L3", Operation: "payments:initiate"}
	b.ReportAllocs()
	defer reportCPU(b, testenv.CPUTime())
	for b.Loop() {
		kid, sign := dl.ResponseSigner()
		s := respsig.Signer{KeyID: kid, Sign: sign, Now: time.Now}
		m := &httpsig.Message{Status: 201, Request: req, Header: []httpsig.Field{{Name: "content-type", Value: "application/json"}}}
		if _, _, err := s.SignResponse(m, d, digest, ""); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExchange is one whole buffered exchange in process, without
// gRPC: request headers, response headers, a 1 KiB body, the signature and
// the response record — discarded (the processor alone: its allocations
// per response) or appended to an async decision log (queued; the fsync is
// the writer's).
func BenchmarkExchange(b *testing.B) {
	for _, logMode := range []string{"discard", "async"} {
		b.Run("log="+logMode, func(b *testing.B) {
			dl := benchLog(b, decisionlog.Async)
			table := NewTable(TableOptions{Size: 1 << 20, TTL: time.Hour})
			var rl ResponseLog = DecisionLog{Log: dl}
			if logMode == "discard" {
				rl = discardLog{}
			}
			p, err := New(Options{Decisions: table, Signer: dl.ResponseSigner, Log: rl, Metrics: NewMetrics(nil)})
			if err != nil {
				b.Fatal(err)
			}
			msgs := exchangeMessages("bench")
			ctx := context.Background()
			b.ReportAllocs()
			defer reportCPU(b, testenv.CPUTime())
			i := 0
			for b.Loop() {
				id := uuid.Must(uuid.NewV7()).String()
				i++
				noteDecision(table, id)
				msgs[0].GetRequestHeaders().GetHeaders().Headers[3].RawValue = []byte(id)
				x := &exchange{}
				for _, m := range msgs {
					if r := p.handle(ctx, x, m); r.GetImmediateResponse() != nil {
						b.Fatalf("refused: %s", r.GetImmediateResponse().GetBody())
					}
				}
			}
		})
	}
}

// discardLog isolates the processor from the decision log's cost.
type discardLog struct{}

func (discardLog) AppendResponse(context.Context, ResponseRecord) error { return nil }

func noteDecision(t *Table, id string) {
	t.Note(&decisionlog.Record{DecisionID: id, Time: time.Now(),
		Agent:    decisionlog.Agent{ID: "payments-agent", TrustLevel: "L3"},
		Request:  decisionlog.Request{Method: "POST", Host: "payments.internal", Path: "/v1/payments", Operation: "payments:initiate"},
		Decision: decisionlog.Decision{Allowed: true, HTTPStatus: 200, Reasons: []string{"allowed"}}})
}

// exchangeMessages is Envoy's message sequence for one buffered response;
// the decision id is headers[3] of the first message.
func exchangeMessages(id string) []*extprocv3.ProcessingRequest {
	body := make([]byte, 1024)
	return []*extprocv3.ProcessingRequest{
		{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: headerMap(
			":method", "POST", ":authority", "payments.internal", ":path", "/v1/payments", "x-decision-id", id, "x-agent-id", "payments-agent")}}},
		{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{Headers: headerMap(
			":status", "201", "content-type", "application/json", "content-length", "1024")}}},
		{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{Body: body, EndOfStream: true}}},
	}
}

type noopAuthz struct {
	authv3.UnimplementedAuthorizationServer
}

func (noopAuthz) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return &authv3.CheckResponse{Status: &status.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}}}, nil
}

// BenchmarkOverGRPC runs, in one process and one run, the processor (a
// whole ext_proc stream per response: open, three messages, close) and the
// no-op Check server (one unary call) over loopback gRPC at concurrency 16
// (8 goroutines per CPU on this 2-CPU machine). Client and server share the
// CPUs, as in the load harness; compare the two, not the absolute numbers.
func BenchmarkOverGRPC(b *testing.B) {
	for _, mode := range []string{"noop-check", "extproc-async", "extproc-sync"} {
		b.Run(mode, func(b *testing.B) {
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			gs := grpc.NewServer(grpc.NumStreamWorkers(64))
			var table *Table
			switch mode {
			case "noop-check":
				authv3.RegisterAuthorizationServer(gs, noopAuthz{})
			default:
				m := decisionlog.Async
				if mode == "extproc-sync" {
					m = decisionlog.Sync
				}
				dl := benchLog(b, m)
				table = NewTable(TableOptions{Size: 1 << 20, TTL: time.Hour})
				p, err := New(Options{Decisions: table, Signer: dl.ResponseSigner, Log: DecisionLog{Log: dl}, Metrics: NewMetrics(nil)})
				if err != nil {
					b.Fatal(err)
				}
				extprocv3.RegisterExternalProcessorServer(gs, p)
			}
			go func() { _ = gs.Serve(lis) }()
			defer gs.Stop()
			cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				b.Fatal(err)
			}
			defer func() { _ = cc.Close() }()
			authc, procc := authv3.NewAuthorizationClient(cc), extprocv3.NewExternalProcessorClient(cc)
			checkReq := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
				Http: &authv3.AttributeContext_HttpRequest{Method: "POST", Path: "/v1/payments", Host: "payments.internal"}}}}
			b.ReportAllocs()
			b.SetParallelism(8)
			b.ResetTimer()
			cpu0 := testenv.CPUTime()
			b.RunParallel(func(pb *testing.PB) {
				ctx := context.Background()
				for pb.Next() {
					if table == nil {
						if _, err := authc.Check(ctx, checkReq); err != nil {
							b.Error(err)
							return
						}
						continue
					}
					id := uuid.Must(uuid.NewV7()).String()
					noteDecision(table, id)
					msgs := exchangeMessages(id)
					msgs[0].ProtocolConfig = &extprocv3.ProtocolConfiguration{ResponseBodyMode: filterv3.ProcessingMode_BUFFERED_PARTIAL}
					s, err := procc.Process(ctx)
					if err != nil {
						b.Error(err)
						return
					}
					for _, m := range msgs {
						if err := s.Send(m); err != nil {
							b.Error(err)
							return
						}
						r, err := s.Recv()
						if err != nil || r.GetImmediateResponse() != nil {
							b.Errorf("%v %v", err, r)
							return
						}
					}
					_ = s.CloseSend()
					if _, err := s.Recv(); err == nil {
						b.Error("stream did not end")
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
			reportCPU(b, cpu0)
		})
	}
}

var _ = corev3.HeaderValue{}

// reportCPU adds the process's CPU per op (client and server together where
// both run here): on a shared VM, wall time per op also counts time spent
// descheduled.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64((testenv.CPUTime()-start).Microseconds())/float64(b.N), "cpu-µs/op")
}
