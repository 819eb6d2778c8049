package extproc

import (
	"context"
	"crypto/ed25519"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/httpsig"
	"github.com/agentauthz/agentauthz/internal/respsig"
)

// fixture is a processor on a real gRPC socket, backed by a real decision
// log, with a client that speaks as Envoy's ext_proc filter does.
type fixture struct {
	t       *testing.T
	log     *decisionlog.Log
	table   *Table
	decider Appender // what extauthz records with
	metrics *Metrics
	client  extprocv3.ExternalProcessorClient
	logDir  string
}

func newFixture(t *testing.T, maxBody int64) *fixture {
	t.Helper()
	d := t.TempDir()
	dl, err := decisionlog.Open(decisionlog.Options{Dir: filepath.Join(d, "log"), KeyDir: filepath.Join(d, "keys"), Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dl.Close() })
	table := NewTable(TableOptions{Size: 1000, TTL: time.Minute})
	m := NewMetrics(prometheus.NewRegistry())
	p, err := New(Options{Decisions: table, Signer: dl.ResponseSigner, Log: DecisionLog{Log: dl}, MaxBodyBytes: maxBody, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(gs, p)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return &fixture{t: t, log: dl, table: table, decider: NoteAllowed(dl, table), metrics: m,
		client: extprocv3.NewExternalProcessorClient(cc), logDir: filepath.Join(d, "log")}
}

// decide records an allowed decision as extauthz does and returns the
// request headers ext_authz leaves for the next filters.
func (f *fixture) decide(id, method, host, path string) map[string]string {
	f.t.Helper()
	rc, err := f.decider.Append(context.Background(), &decisionlog.Record{
		DecisionID: id, Time: time.Now(),
		Agent:    decisionlog.Agent{ID: "payments-agent", TrustLevel: "L3"},
		Request:  decisionlog.Request{Method: method, Host: host, Path: pathOnly(path), Operation: "payments:initiate"},
		Decision: decisionlog.Decision{Allowed: true, HTTPStatus: 200, Reasons: []string{"allowed"}},
	})
	if err != nil {
		f.t.Fatal(err)
	}
	return map[string]string{
		":method": method, ":authority": host, ":path": path, ":scheme": "https",
		"x-decision-id": id, "x-agent-id": "payments-agent", "x-agent-trust-level": "L3", "x-agent-receipt": rc.Header,
	}
}

// headerMap builds Envoy's HeaderMap: lowercase keys, values in raw_value.
func headerMap(kv ...string) *corev3.HeaderMap {
	hm := &corev3.HeaderMap{}
	for i := 0; i+1 < len(kv); i += 2 {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
	}
	return hm
}

func mapHeaders(m map[string]string) *corev3.HeaderMap {
	var kv []string
	for k, v := range m {
		kv = append(kv, k, v)
	}
	return headerMap(kv...)
}

// envoyStream is one ext_proc stream as Envoy drives it.
type envoyStream struct {
	f      *fixture
	stream extprocv3.ExternalProcessor_ProcessClient
	first  bool
	mode   filterv3.ProcessingMode_BodySendMode
}

func (f *fixture) open(mode filterv3.ProcessingMode_BodySendMode) *envoyStream {
	f.t.Helper()
	s, err := f.client.Process(context.Background())
	if err != nil {
		f.t.Fatal(err)
	}
	return &envoyStream{f: f, stream: s, first: true, mode: mode}
}

func (e *envoyStream) send(r *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	e.f.t.Helper()
	if e.first {
		// Envoy sends protocol_config in the first message only.
		r.ProtocolConfig = &extprocv3.ProtocolConfiguration{ResponseBodyMode: e.mode}
		e.first = false
	}
	if err := e.stream.Send(r); err != nil {
		e.f.t.Fatal(err)
	}
	resp, err := e.stream.Recv()
	if err != nil {
		e.f.t.Fatal(err)
	}
	return resp
}

func (e *envoyStream) requestHeaders(h *corev3.HeaderMap) *extprocv3.ProcessingResponse {
	return e.send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: h, EndOfStream: true}}})
}

func (e *envoyStream) responseHeaders(h *corev3.HeaderMap, eos bool) *extprocv3.ProcessingResponse {
	return e.send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{Headers: h, EndOfStream: eos}}})
}

func (e *envoyStream) responseBody(b []byte, eos bool) *extprocv3.ProcessingResponse {
	return e.send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{Body: b, EndOfStream: eos}}})
}

func (e *envoyStream) responseTrailers(h *corev3.HeaderMap) *extprocv3.ProcessingResponse {
	return e.send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: &extprocv3.HttpTrailers{Trailers: h}}})
}

// close ends the stream as Envoy does when the exchange is over.
func (e *envoyStream) close() {
	e.f.t.Helper()
	if err := e.stream.CloseSend(); err != nil {
		e.f.t.Fatal(err)
	}
	if _, err := e.stream.Recv(); !errors.Is(err, io.EOF) {
		e.f.t.Fatalf("after CloseSend: %v", err)
	}
}

// apply applies a header mutation to the response a client would see.
func apply(m *httpsig.Message, hm *extprocv3.HeaderMutation) {
	for _, n := range hm.GetRemoveHeaders() {
		m.Del(n)
	}
	for _, o := range hm.GetSetHeaders() {
		m.Set(o.GetHeader().GetKey(), header(o.GetHeader()))
	}
}

func (f *fixture) verify(m *httpsig.Message) (respsig.Result, error) {
	ks := f.log.PublicKeys()
	return respsig.Verify(m, respsig.Options{Keys: func(kid string) (ed25519.PublicKey, bool) { k, ok := ks[kid]; return k, ok }})
}

// responses returns the response records of the log.
func (f *fixture) responses() []*decisionlog.Record {
	f.t.Helper()
	r := decisionlog.NewReader(f.logDir)
	defer func() { _ = r.Close() }()
	var out []*decisionlog.Record
	for {
		e, err := r.Next()
		if err != nil {
			break
		}
		if e.Record.Kind == decisionlog.KindResponse {
			out = append(out, e.Record)
		}
	}
	return out
}

func (f *fixture) count(outcome string) float64 {
	return testutil.ToFloat64(f.metrics.responses.WithLabelValues(outcome))
}

func immediate(t *testing.T, r *extprocv3.ProcessingResponse, code int, reason string) {
	t.Helper()
	ir := r.GetImmediateResponse()
	if ir == nil || int(ir.GetStatus().GetCode()) != code || !strings.Contains(string(ir.GetBody()), reason) {
		t.Fatalf("want immediate %d %s, got %v", code, reason, r)
	}
}

const req = "/v1/payments?amount=12.50"

// The buffered exchange of docs/responses.md: request headers, response
// headers (held by Envoy), the whole body; the signature goes with the body
// answer, and the log holds the response beside its decision.
func TestSignedBufferedResponse(t *testing.T) {
	f := newFixture(t, 4<<20)
	body := []byte(`{"payment":"p-1","amount":"12.50"}`)
	e := f.open(filterv3.ProcessingMode_BUFFERED_PARTIAL)
	if r := e.requestHeaders(mapHeaders(f.decide(testID("dec-1"), "POST", "payments.internal", req))); r.GetRequestHeaders() == nil {
		t.Fatalf("request headers: %v", r)
	}
	r := e.responseHeaders(headerMap(":status", "201", "content-type", "application/json", "content-length", strconv.Itoa(len(body)),
		"x-agent-id", "spoofed-by-upstream"), false)
	if r.GetResponseHeaders() == nil || r.GetResponseHeaders().GetResponse().GetHeaderMutation() != nil {
		t.Fatalf("response headers: want a plain continue, got %v", r)
	}
	r = e.responseBody(body, true)
	hm := r.GetResponseBody().GetResponse().GetHeaderMutation()
	if hm == nil {
		t.Fatalf("no header mutation with the body answer: %v", r)
	}
	e.close()

	m := &httpsig.Message{Status: 201, Body: body,
		Header:  []httpsig.Field{{Name: "content-type", Value: "application/json"}, {Name: "x-agent-id", Value: "spoofed-by-upstream"}},
		Request: &httpsig.Message{Method: "POST", Authority: "payments.internal", Path: "/v1/payments"}}
	apply(m, hm)
	res, err := f.verify(m)
	if err != nil {
		t.Fatal(err)
	}
	if res.DecisionID != testID("dec-1") || res.AgentID != "payments-agent" || res.TrustLevel != "L3" || res.Operation != "payments:initiate" || !res.BodyCovered {
		t.Fatalf("%+v", res)
	}
	recs := f.responses()
	if len(recs) != 1 {
		t.Fatalf("%d response records", len(recs))
	}
	rr := recs[0].Response
	cd, _ := m.Get("content-digest")
	sig, _ := m.Get("signature")
	if recs[0].DecisionID != testID("dec-1") || rr.Status != 201 || rr.Body != BodySigned || rr.ContentDigest != cd || rr.Bytes != int64(len(body)) || rr.Signature != sig {
		t.Fatalf("record %+v %+v", recs[0], rr)
	}
	// A changed body is detectable from the log alone.
	if httpsig.CheckContentDigest(rr.ContentDigest, []byte(`{"payment":"p-1","amount":"99.00"}`)) == nil {
		t.Fatal("log digest matches a changed body")
	}
	if f.count("signed") != 1 {
		t.Fatalf("signed = %v", f.count("signed"))
	}

	// One decision binds one response.
	e = f.open(filterv3.ProcessingMode_BUFFERED_PARTIAL)
	h := map[string]string{":method": "POST", ":authority": "payments.internal", ":path": req, "x-decision-id": testID("dec-1")}
	immediate(t, e.requestHeaders(mapHeaders(h)), 403, "response_no_decision")
}

func TestNoBodyTrailersAndUpstreamSignature(t *testing.T) {
	f := newFixture(t, 4<<20)
	// 204: end_of_stream on the headers; the digest is of the empty body.
	e := f.open(filterv3.ProcessingMode_BUFFERED_PARTIAL)
	e.requestHeaders(mapHeaders(f.decide(testID("dec-204"), "DELETE", "payments.internal", "/v1/payments/p-1")))
	r := e.responseHeaders(headerMap(":status", "204", "signature", "up=:AAAA:", "signature-input", `up=("@status")`), true)
	hm := r.GetResponseHeaders().GetResponse().GetHeaderMutation()
	e.close()
	m := &httpsig.Message{Status: 204, Header: []httpsig.Field{{Name: "signature", Value: "up=:AAAA:"}, {Name: "signature-input", Value: `up=("@status")`}},
		Request: &httpsig.Message{Method: "DELETE", Authority: "payments.internal", Path: "/v1/payments/p-1"}}
	apply(m, hm)
	if res, err := f.verify(m); err != nil || !res.BodyCovered {
		t.Fatalf("%+v %v", res, err)
	}
	if v, _ := m.Get("signature"); strings.Contains(v, "up=") {
		t.Fatal("upstream signature kept")
	}
	if f.count("replaced_upstream_signature") != 1 {
		t.Fatal("replacement not counted")
	}

	// Trailers: Envoy sends the buffered body with end_of_stream false,
	// then the trailers.
	e = f.open(filterv3.ProcessingMode_BUFFERED_PARTIAL)
	e.requestHeaders(mapHeaders(f.decide(testID("dec-tr"), "GET", "payments.internal", "/v1/stream")))
	e.responseHeaders(headerMap(":status", "200", "content-type", "text/plain"), false)
	r = e.responseBody([]byte("hello"), false)
	hm = r.GetResponseBody().GetResponse().GetHeaderMutation()
	if r2 := e.responseTrailers(headerMap("grpc-status", "0")); r2.GetResponseTrailers() == nil {
		t.Fatalf("trailers: %v", r2)
	}
	e.close()
	m = &httpsig.Message{Status: 200, Body: []byte("hello"), Header: []httpsig.Field{{Name: "content-type", Value: "text/plain"}},
		Request: &httpsig.Message{Method: "GET", Authority: "payments.internal", Path: "/v1/stream"}}
	apply(m, hm)
	if res, err := f.verify(m); err != nil || !res.BodyCovered {
		t.Fatalf("%+v %v", res, err)
	}
}

func TestLargeBodies(t *testing.T) {
	f := newFixture(t, 1024)
	// Chunked, larger than the partial buffer: Envoy sends the first
	// MaxBodyBytes with end_of_stream false and streams the rest past us.
	e := f.open(filterv3.ProcessingMode_BUFFERED_PARTIAL)
	e.requestHeaders(mapHeaders(f.decide(testID("dec-big"), "GET", "files.internal", "/big")))
	e.responseHeaders(headerMap(":status", "200", "content-type", "application/octet-stream"), false)
	r := e.responseBody(make([]byte, 1024), false)
	hm := r.GetResponseBody().GetResponse().GetHeaderMutation()
	e.close()
	m := &httpsig.Message{Status: 200, Body: make([]byte, 5000), Header: []httpsig.Field{{Name: "content-type", Value: "application/octet-stream"}},
		Request: &httpsig.Message{Method: "GET", Authority: "files.internal", Path: "/big"}}
	apply(m, hm)
	res, err := f.verify(m)
	if err != nil || res.BodyCovered || res.BodyUnsigned != respsig.UnsignedTooLarge {
		t.Fatalf("%+v %v", res, err)
	}
	if _, has := m.Get("content-digest"); has {
		t.Fatal("a digest of part of the body was sent")
	}

	// Content-Length says too large: signed at the headers, Envoy told to
	// stream, and the whole body's digest lands in the log.
	e = f.open(filterv3.ProcessingMode_BUFFERED_PARTIAL)
	e.requestHeaders(mapHeaders(f.decide(testID("dec-cl"), "GET", "files.internal", "/big2")))
	r = e.responseHeaders(headerMap(":status", "200", "content-length", "3000"), false)
	if r.GetModeOverride().GetResponseBodyMode() != filterv3.ProcessingMode_STREAMED || r.GetResponseHeaders().GetResponse().GetHeaderMutation() == nil {
		t.Fatalf("want signed headers and a STREAMED override: %v", r)
	}
	body := []byte(strings.Repeat("x", 3000))
	for i := 0; i < 3; i++ {
		if r := e.responseBody(body[i*1000:(i+1)*1000], i == 2); r.GetResponseBody() == nil {
			t.Fatalf("chunk %d: %v", i, r)
		}
	}
	e.close()
	var rec *decisionlog.Response
	for _, r := range f.responses() {
		if r.DecisionID == testID("dec-cl") {
			rec = r.Response
		}
	}
	if rec == nil || rec.Body != "unsigned: streamed" || rec.Bytes != 3000 || httpsig.CheckContentDigest(rec.ContentDigest, body) != nil {
		t.Fatalf("streamed record %+v", rec)
	}
	if f.count("unsigned_too_large") != 1 || f.count("unsigned_streamed") != 1 {
		t.Fatal("outcomes not counted")
	}
}

func TestRefusals(t *testing.T) {
	f := newFixture(t, 4<<20)
	cases := []struct {
		name string
		run  func(e *envoyStream) *extprocv3.ProcessingResponse
		code int
		why  string
	}{
		{"no decision id", func(e *envoyStream) *extprocv3.ProcessingResponse {
			return e.requestHeaders(headerMap(":method", "GET", ":authority", "a", ":path", "/"))
		}, 403, "response_no_decision"},
		{"unknown decision", func(e *envoyStream) *extprocv3.ProcessingResponse {
			return e.requestHeaders(headerMap(":method", "GET", ":authority", "a", ":path", "/", "x-decision-id", "nope"))
		}, 403, "response_no_decision"},
		{"decision for another path", func(e *envoyStream) *extprocv3.ProcessingResponse {
			h := f.decide(testID("dec-other"), "GET", "a", "/allowed")
			h[":path"] = "/admin"
			return e.requestHeaders(mapHeaders(h))
		}, 403, "response_no_decision"},
		{"another request's Envoy metadata", func(e *envoyStream) *extprocv3.ProcessingResponse {
			return e.requestHeadersWith(headerMap(":method", "GET", ":authority", "a", ":path", "/", "x-decision-id", testID("dec-claimed")),
				envoyMetadata(testID("dec-other"), "allowed", "payments-agent"))
		}, 403, "response_no_decision"},
		{"Envoy metadata of a denial", func(e *envoyStream) *extprocv3.ProcessingResponse {
			return e.requestHeadersWith(headerMap(":method", "GET", ":authority", "a", ":path", "/", "x-decision-id", testID("dec-denied")),
				envoyMetadata(testID("dec-denied"), "scope_missing", "payments-agent"))
		}, 403, "response_no_decision"},
		{"response before request", func(e *envoyStream) *extprocv3.ProcessingResponse {
			return e.responseHeaders(headerMap(":status", "200"), true)
		}, 502, "response_no_decision"},
		{"huge headers", func(e *envoyStream) *extprocv3.ProcessingResponse {
			e.requestHeaders(mapHeaders(f.decide(testID("dec-huge"), "GET", "a", "/h")))
			return e.responseHeaders(headerMap(":status", "200", "x-big", strings.Repeat("b", 70<<10)), true)
		}, 502, "response_headers_too_large"},
		{"trailers before the body", func(e *envoyStream) *extprocv3.ProcessingResponse {
			e.requestHeaders(mapHeaders(f.decide(testID("dec-tr2"), "GET", "a", "/t")))
			e.responseHeaders(headerMap(":status", "200"), false)
			return e.responseTrailers(headerMap("x", "y"))
		}, 502, "response_unsignable"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := f.open(filterv3.ProcessingMode_BUFFERED_PARTIAL)
			immediate(t, c.run(e), c.code, c.why)
			e.close()
		})
	}
	if f.count("no_decision") != 6 || f.count("headers_too_large") != 1 || f.count("unsignable") != 1 {
		t.Fatalf("counts: no_decision %v headers_too_large %v unsignable %v", f.count("no_decision"), f.count("headers_too_large"), f.count("unsignable"))
	}

	// A decision another replica made is bound through the ext_authz
	// metadata Envoy forwards with the request headers.
	other := newFixture(t, 4<<20)
	h := other.decide(testID("dec-remote"), "GET", "a", "/r")
	e := f.open(filterv3.ProcessingMode_BUFFERED_PARTIAL)
	if r := e.requestHeadersWith(mapHeaders(h), envoyMetadata(testID("dec-remote"), "allowed", "payments-agent")); r.GetRequestHeaders() == nil {
		t.Fatalf("Envoy's ext_authz metadata not accepted: %v", r)
	}
	r := e.responseHeaders(headerMap(":status", "204"), true)
	hm := r.GetResponseHeaders().GetResponse().GetHeaderMutation()
	e.close()
	m := &httpsig.Message{Status: 204, Request: &httpsig.Message{Method: "GET", Authority: "a", Path: "/r"}}
	apply(m, hm)
	if res, err := f.verify(m); err != nil || res.DecisionID != testID("dec-remote") || res.AgentID != "payments-agent" || res.Operation != "payments:initiate" {
		t.Fatalf("%+v %v", res, err)
	}
	if testutil.ToFloat64(f.metrics.lookups.WithLabelValues("envoy_metadata")) != 1 {
		t.Fatal("the metadata lookup was not counted")
	}
}

// envoyMetadata is the dynamic metadata Envoy's ext_authz filter keeps
// from agentauthz's answer, as the ext_proc filter forwards it.
func envoyMetadata(id, reason, agent string) *corev3.Metadata {
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{ExtAuthzNamespace: {Fields: map[string]*structpb.Value{
		"decision_id": structpb.NewStringValue(id), "reason": structpb.NewStringValue(reason),
		"agent_id": structpb.NewStringValue(agent), "trust_level": structpb.NewStringValue("L3"),
		"operation": structpb.NewStringValue("payments:initiate"),
	}}}}
}

func (e *envoyStream) requestHeadersWith(h *corev3.HeaderMap, md *corev3.Metadata) *extprocv3.ProcessingResponse {
	return e.send(&extprocv3.ProcessingRequest{MetadataContext: md,
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: h, EndOfStream: true}}})
}

// A stream that ends before the body came leaves an "incomplete" record.
func TestStreamEndsEarly(t *testing.T) {
	f := newFixture(t, 4<<20)
	e := f.open(filterv3.ProcessingMode_BUFFERED_PARTIAL)
	e.requestHeaders(mapHeaders(f.decide(testID("dec-early"), "GET", "a", "/e")))
	e.responseHeaders(headerMap(":status", "200"), false)
	e.close()
	deadline := time.Now().Add(5 * time.Second)
	for f.count("stream_ended_early") == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if f.count("stream_ended_early") != 1 {
		t.Fatal("early end not counted")
	}
	recs := f.responses()
	if len(recs) != 1 || recs[0].Response.Body != BodyIncomplete {
		t.Fatalf("%+v", recs)
	}
}

// TestStreamed100MiB streams 100 MiB through the processor in Envoy's
// STREAMED mode: nothing is held, the digest reaches the log, and the
// process stays far below 200 MB.
func TestStreamed100MiB(t *testing.T) {
	if testing.Short() {
		t.Skip("streams 100 MiB")
	}
	f := newFixture(t, 4<<20)
	e := f.open(filterv3.ProcessingMode_STREAMED)
	e.requestHeaders(mapHeaders(f.decide(testID("dec-100m"), "GET", "files.internal", "/huge")))
	if r := e.responseHeaders(headerMap(":status", "200", "content-type", "application/octet-stream"), false); r.GetResponseHeaders().GetResponse().GetHeaderMutation() == nil {
		t.Fatalf("streamed response not signed at the headers: %v", r)
	}
	chunk := make([]byte, 64<<10)
	const total = 100 << 20
	for sent := 0; sent < total; sent += len(chunk) {
		chunk[0] = byte(sent >> 16)
		e.responseBody(chunk, sent+len(chunk) == total)
	}
	e.close()
	recs := f.responses()
	if len(recs) != 1 || recs[0].Response.Bytes != total || recs[0].Response.ContentDigest == "" {
		t.Fatalf("%+v", recs)
	}
	if hwm := peakRSS(t); hwm > 200<<20 {
		t.Fatalf("peak RSS %d MB, want < 200 MB", hwm>>20)
	} else {
		t.Logf("peak RSS %d MB after streaming 100 MiB", hwm>>20)
	}
}

var errNoProc = errors.New("no /proc/self/status")

type failingLog struct{}

func (failingLog) AppendResponse(context.Context, ResponseRecord) error {
	return decisionlog.ErrUnavailable
}

// Nothing leaves without its signature and its record: a log that cannot
// take the record, or a key that cannot sign, turns the response into 502.
func TestRecordOrSignFailure(t *testing.T) {
	for _, c := range []struct {
		name    string
		log     ResponseLog
		signer  func() (string, func([]byte) ([]byte, error))
		outcome string
	}{
		{"log unavailable", failingLog{}, nil, "log_failed"},
		{"signer fails", nil, func() (string, func([]byte) ([]byte, error)) {
			return "k", func([]byte) ([]byte, error) { return nil, errors.New("no key") }
		}, "sign_failed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, 4<<20)
			table := NewTable(TableOptions{Size: 10, TTL: time.Minute})
			o := Options{Decisions: table, Signer: f.log.ResponseSigner, Log: DecisionLog{Log: f.log}, Metrics: NewMetrics(prometheus.NewRegistry())}
			if c.log != nil {
				o.Log = c.log
			}
			if c.signer != nil {
				o.Signer = c.signer
			}
			p, err := New(o)
			if err != nil {
				t.Fatal(err)
			}
			noteDecision(table, testID("dec-f"))
			x := &exchange{}
			msgs := exchangeMessages(testID("dec-f"))
			var last *extprocv3.ProcessingResponse
			for _, m := range msgs {
				last = p.handle(context.Background(), x, m)
				if last.GetImmediateResponse() != nil {
					break
				}
			}
			immediate(t, last, 502, "response_"+c.outcome)
			if testutil.ToFloat64(o.Metrics.responses.WithLabelValues(c.outcome)) != 1 {
				t.Fatalf("%s not counted", c.outcome)
			}
		})
	}
}
