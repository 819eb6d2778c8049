package extproc

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
)

// FuzzExchange drives the processor with any sequence of Envoy's messages,
// built from the fuzzer's bytes: it must answer each one (or stay silent in
// observability mode) without panicking, and a response it lets through
// with a header mutation always carries a signature.
func FuzzExchange(f *testing.F) {
	d := f.TempDir()
	dl, err := decisionlog.Open(decisionlog.Options{Dir: filepath.Join(d, "log"), KeyDir: filepath.Join(d, "keys"), Name: "fuzz", Mode: decisionlog.Async})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = dl.Close() })
	table := NewTable(TableOptions{Size: 1024, TTL: time.Hour})
	p, err := New(Options{Decisions: table, Signer: dl.ResponseSigner, Log: DecisionLog{Log: dl}, MaxBodyBytes: 64,
		MaxHeaderBytes: 1024, Metrics: NewMetrics(prometheus.NewRegistry())})
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte{0, 1, 2, 2}, "200", "application/json", uint8(0))
	f.Add([]byte{0, 1, 3}, "204", "", uint8(1))
	f.Add([]byte{1, 0, 2, 3, 2}, "abc", "x", uint8(2))
	f.Add([]byte{0, 1, 2, 2, 2, 2, 3}, "201", "text/plain", uint8(3))
	f.Add([]byte{0, 0, 4, 5, 1, 1}, "999", "", uint8(4))
	f.Fuzz(func(t *testing.T, seq []byte, status, ctype string, mode uint8) {
		if len(seq) > 32 {
			seq = seq[:32]
		}
		id := testID("dec-fuzz")
		noteDecision(table, id)
		x := &exchange{}
		for i, op := range seq {
			req := &extprocv3.ProcessingRequest{}
			if i == 0 {
				req.ProtocolConfig = &extprocv3.ProtocolConfiguration{ResponseBodyMode: filterv3.ProcessingMode_BodySendMode(mode % 6)}
			}
			switch op % 6 {
			case 0:
				req.Request = &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: headerMap(
					":method", "POST", ":authority", "payments.internal", ":path", "/v1/payments", "x-decision-id", id)}}
			case 1:
				req.Request = &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
					Headers: headerMap(":status", status, "content-type", ctype, "content-length", status), EndOfStream: op&8 != 0}}
			case 2:
				req.Request = &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{Body: seq, EndOfStream: op&8 != 0}}
			case 3:
				req.Request = &extprocv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: &extprocv3.HttpTrailers{}}
			case 4:
				req.Request = &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: seq}}
			case 5:
				req.ObservabilityMode = true
			}
			resp := p.handle(context.Background(), x, req)
			if resp == nil {
				if op%6 != 5 && !req.ObservabilityMode {
					t.Fatalf("no answer to %v", req)
				}
				continue
			}
			var hm *extprocv3.HeaderMutation
			switch r := resp.GetResponse().(type) {
			case *extprocv3.ProcessingResponse_ResponseHeaders:
				hm = r.ResponseHeaders.GetResponse().GetHeaderMutation()
			case *extprocv3.ProcessingResponse_ResponseBody:
				hm = r.ResponseBody.GetResponse().GetHeaderMutation()
			}
			if hm == nil {
				continue
			}
			signed := false
			for _, o := range hm.GetSetHeaders() {
				if o.GetHeader().GetKey() == "signature" {
					signed = true
				}
			}
			if !signed {
				t.Fatalf("a header mutation without a signature: %v", hm)
			}
		}
		if x.phase != phaseDone && x.phase != phaseRequest {
			p.endedEarly(context.Background(), x)
		}
		_, _, _ = table.Lookup(id, nil, "POST", "payments.internal", "/v1/payments") // drop a decision left unused
	})
}
