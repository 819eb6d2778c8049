package adversarial

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agentauthz/agentauthz/internal/checkreq"
	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/testca"
)

// liveness bounds how long a test waits for something that must happen;
// exceeding it is a hang, not a slow machine.
const liveness = 30 * time.Second

func readerRequest(t *testing.T, leaf *testca.Leaf, path string) *authv3.CheckRequest {
	t.Helper()
	req, err := checkreq.Build(checkreq.Request{Method: "GET", Path: path, CertPEM: leaf.PEM(), Via: checkreq.ViaPeer, RequestID: "limits"})
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// TestOversizeCheckRequestRefused: a CheckRequest over grpc.max_recv_msg_bytes
// is refused by the transport with ResourceExhausted before any decoding;
// one just under it is decided normally.
func TestOversizeCheckRequestRefused(t *testing.T) {
	ca := testca.New(t)
	svc := startService(t, newConfig(t, ca.WriteBundle(), nil))
	leaf := issueSpec(ca, catalogueAgents()["reader"])
	limit := svc.cfg.GRPC.MaxRecvMsgBytes

	big := readerRequest(t, leaf, "/v1/payments/p-1")
	big.Attributes.Request.Http.Body = strings.Repeat("x", limit)
	_, err := svc.client.Check(context.Background(), big)
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("oversize Check: %v, want ResourceExhausted", err)
	}

	fits := readerRequest(t, leaf, "/v1/payments/p-1")
	fits.Attributes.Request.Http.Body = strings.Repeat("x", limit-64<<10)
	resp, err := svc.client.Check(context.Background(), fits)
	if err != nil {
		t.Fatalf("Check just under the limit: %v", err)
	}
	checkNoLeak(t, resp)
	if v := reduce(resp); !v.Allowed {
		t.Errorf("a request under the limit is decided normally; got %s", v.Reason)
	}
}

// h2Frame is one raw HTTP/2 frame.
type h2Frame struct {
	typ, flags byte
	stream     uint32
	payload    []byte
}

func readFrame(r io.Reader) (h2Frame, error) {
	var hdr [9]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return h2Frame{}, err
	}
	n := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
	f := h2Frame{typ: hdr[3], flags: hdr[4], stream: binary.BigEndian.Uint32(hdr[5:]) & 0x7fffffff, payload: make([]byte, n)}
	_, err := io.ReadFull(r, f.payload)
	return f, err
}

func writeFrame(w io.Writer, typ, flags byte, payload []byte) error {
	hdr := []byte{byte(len(payload) >> 16), byte(len(payload) >> 8), byte(len(payload)), typ, flags, 0, 0, 0, 0}
	_, err := w.Write(append(hdr, payload...))
	return err
}

const (
	frameSettings = 0x4
	framePing     = 0x6
	frameGoAway   = 0x7
	flagAck       = 0x1
)

// h2Dial opens a raw HTTP/2 connection to the gRPC listener and returns the
// server's SETTINGS parameters.
func h2Dial(t *testing.T, addr string) (net.Conn, *bufio.Reader, map[uint16]uint32) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(liveness))
	if _, err := io.WriteString(c, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := writeFrame(c, frameSettings, 0, nil); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	for {
		f, err := readFrame(r)
		if err != nil {
			t.Fatalf("reading server SETTINGS: %v", err)
		}
		if f.typ != frameSettings || f.flags&flagAck != 0 {
			continue
		}
		params := map[uint16]uint32{}
		for p := f.payload; len(p) >= 6; p = p[6:] {
			params[binary.BigEndian.Uint16(p)] = binary.BigEndian.Uint32(p[2:])
		}
		if err := writeFrame(c, frameSettings, flagAck, nil); err != nil {
			t.Fatal(err)
		}
		return c, r, params
	}
}

// TestMaxConcurrentStreamsAdvertised: the server announces
// grpc.max_concurrent_streams in its HTTP/2 SETTINGS, so a client cannot
// open more streams than that on one connection.
func TestMaxConcurrentStreamsAdvertised(t *testing.T) {
	ca := testca.New(t)
	svc := startService(t, newConfig(t, ca.WriteBundle(), func(c *config.Config) { c.GRPC.MaxConcurrentStreams = 7 }))
	_, _, params := h2Dial(t, svc.grpcAddr)
	const settingsMaxConcurrentStreams = 0x3
	if got, ok := params[settingsMaxConcurrentStreams]; !ok || got != 7 {
		t.Fatalf("SETTINGS_MAX_CONCURRENT_STREAMS = %d (present %v), want 7; all: %v", got, ok, params)
	}
	const settingsMaxFrameSize = 0x5
	t.Logf("server SETTINGS: %v (max frame %d)", params, params[settingsMaxFrameSize])
}

// TestKeepalivePingFloodGetsGoAway: the keepalive enforcement policy (pings
// no more often than every 5 s) answers a ping flood with GOAWAY
// ENHANCE_YOUR_CALM ("too_many_pings") and closes the connection.
func TestKeepalivePingFloodGetsGoAway(t *testing.T) {
	ca := testca.New(t)
	svc := startService(t, newConfig(t, ca.WriteBundle(), nil))
	c, r, _ := h2Dial(t, svc.grpcAddr)
	done := make(chan struct{})
	defer close(done)
	go func() {
		for i := uint64(0); i < 100; i++ {
			select {
			case <-done:
				return
			default:
			}
			payload := binary.BigEndian.AppendUint64(nil, i)
			if writeFrame(c, framePing, 0, payload) != nil {
				return
			}
		}
	}()
	for {
		f, err := readFrame(r)
		if err != nil {
			t.Fatalf("connection ended without GOAWAY: %v", err)
		}
		if f.typ != frameGoAway {
			continue
		}
		const enhanceYourCalm = 0xb
		code := binary.BigEndian.Uint32(f.payload[4:8])
		if code != enhanceYourCalm || !strings.Contains(string(f.payload[8:]), "too_many_pings") {
			t.Fatalf("GOAWAY code %#x %q, want ENHANCE_YOUR_CALM too_many_pings", code, f.payload[8:])
		}
		return
	}
}

// TestHTTPHeaderLimits: the HTTP listener refuses headers over 16 KiB
// (431) and closes a connection whose headers never finish
// (ReadHeaderTimeout, 5 s): a slowloris client cannot hold it.
func TestHTTPHeaderLimits(t *testing.T) {
	t.Parallel() // waits out ReadHeaderTimeout
	ca := testca.New(t)
	svc := startService(t, newConfig(t, ca.WriteBundle(), nil))
	req, err := http.NewRequest("GET", "http://"+svc.httpAddr+"/healthz", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Big", strings.Repeat("a", 64<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("64 KiB header: %d, want 431", resp.StatusCode)
	}

	c, err := net.Dial("tcp", svc.httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(liveness))
	_, err = io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("server kept an unfinished header open for %v", liveness)
	}
}

// slowConfig serves the slow test policy (GET /slow never finishes).
func slowConfig(t *testing.T, bundle string, evalTimeout, checkTimeout time.Duration) config.Config {
	return newConfig(t, bundle, func(c *config.Config) {
		c.Policy.Dir = filepath.Join("testdata", "policies", "slow")
		c.Policy.EvalTimeout = config.Duration(evalTimeout)
		c.GRPC.CheckTimeout = config.Duration(checkTimeout)
	})
}

// within runs f and fails the test if it does not return within liveness.
func within[T any](t *testing.T, what string, f func() T) T {
	t.Helper()
	ch := make(chan T, 1)
	go func() { ch <- f() }()
	select {
	case v := <-ch:
		return v
	case <-time.After(liveness):
		t.Fatalf("%s did not return within %v: a deadline is not honoured", what, liveness)
		panic("unreachable")
	}
}

// TestCallerDeadlineHonoured: with a policy budget and a check timeout far
// longer than the test, a caller deadline ends the evaluation: a direct
// Check answers with a policy_error denial (and records it), a gRPC caller
// gets DeadlineExceeded or a denial, never an allow.
func TestCallerDeadlineHonoured(t *testing.T) {
	ca := testca.New(t)
	svc := startService(t, slowConfig(t, ca.WriteBundle(), 10*time.Minute, 10*time.Minute))
	leaf := issueSpec(ca, catalogueAgents()["reader"])

	if v := reduce(mustCheck(t, svc, readerRequest(t, leaf, "/fast"))); !v.Allowed {
		t.Fatalf("fast path: %s", v.Reason)
	}
	ids := []string{}
	for _, d := range []time.Duration{-time.Second, 0, 50 * time.Millisecond} {
		type res struct {
			resp *authv3.CheckResponse
			err  error
		}
		r := within(t, "direct Check with a caller deadline", func() res {
			ctx, cancel := context.WithTimeout(context.Background(), d)
			defer cancel()
			resp, err := svc.comps.Authorization.Check(ctx, readerRequest(t, leaf, "/slow"))
			return res{resp, err}
		})
		if r.err != nil {
			t.Fatalf("deadline %v: direct Check returned an error %v; it must answer with a denial", d, r.err)
		}
		checkNoLeak(t, r.resp)
		v := reduce(r.resp)
		if v.Allowed || v.Reason != "policy_error" {
			t.Errorf("deadline %v: allowed=%v reason=%s, want policy_error", d, v.Allowed, v.Reason)
		}
		ids = append(ids, v.DecisionID)

		r = within(t, "gRPC Check with a caller deadline", func() res {
			ctx, cancel := context.WithTimeout(context.Background(), d)
			defer cancel()
			resp, err := svc.client.Check(ctx, readerRequest(t, leaf, "/slow"))
			return res{resp, err}
		})
		switch {
		case r.err != nil:
			if status.Code(r.err) != codes.DeadlineExceeded {
				t.Errorf("deadline %v over gRPC: %v, want DeadlineExceeded", d, r.err)
			}
		case reduce(r.resp).Allowed:
			t.Errorf("deadline %v over gRPC: allowed", d)
		}
	}
	logged := svc.verifyLog(t)
	for _, id := range ids {
		if logged[id] == nil || logged[id].Decision.Allowed {
			t.Errorf("denial %s past the caller's deadline is not recorded as a denial", id)
		}
	}
}

// TestCheckTimeoutBoundsEvaluation: without a caller deadline,
// grpc.check_timeout still ends a policy evaluation whose own budget is
// longer: denial policy_error.
func TestCheckTimeoutBoundsEvaluation(t *testing.T) {
	ca := testca.New(t)
	svc := startService(t, slowConfig(t, ca.WriteBundle(), 10*time.Minute, 100*time.Millisecond))
	leaf := issueSpec(ca, catalogueAgents()["reader"])
	resp := within(t, "Check bounded by check_timeout", func() *authv3.CheckResponse {
		return mustCheck(t, svc, readerRequest(t, leaf, "/slow"))
	})
	if v := reduce(resp); v.Allowed || v.Reason != "policy_error" {
		t.Errorf("allowed=%v reason=%s, want policy_error", v.Allowed, v.Reason)
	}
}

func mustCheck(t *testing.T, svc *service, req *authv3.CheckRequest) *authv3.CheckResponse {
	t.Helper()
	resp, err := svc.comps.Authorization.Check(context.Background(), req)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	checkNoLeak(t, resp)
	return resp
}

// TestLargeInputsAreAnswered: inputs that fit in one CheckRequest but are
// hostile in shape (60,000 headers, 400,000-deep or -wide JSON bodies, 100,000 query or
// 200,000 form fields) are answered with a decision, never a
// transport error, a panic or a leak. What the policy cannot be given
// (a JSON body nested deeper than the decoder allows, a query or form with
// more fields than Go's parser accepts) is a request_parse_error denial
// (400), as opa-envoy-plugin answers.
func TestLargeInputsAreAnswered(t *testing.T) {
	ca := testca.New(t)
	svc := startService(t, newConfig(t, ca.WriteBundle(), nil))
	leaf := issueSpec(ca, catalogueAgents()["reader"])
	for _, c := range []struct {
		name, path, contentType, body, want string
		headers                             int
	}{
		{name: "60000 headers", headers: 60000, want: "allowed"},
		{name: "deep json", contentType: "application/json", body: strings.Repeat("[", 400000) + strings.Repeat("]", 400000), want: "request_parse_error"},
		{name: "wide json", contentType: "application/json", body: "[" + strings.Repeat("0,", 400000) + "0]", want: "allowed"},
		{name: "9999 query fields", path: "?" + strings.Repeat("a=1&", 9999), want: "allowed"},
		{name: "100000 query fields", path: "?" + strings.Repeat("a=1&", 100000), want: "request_parse_error"},
		{name: "200000 form fields", contentType: "application/x-www-form-urlencoded", body: strings.Repeat("a=1&", 200000), want: "request_parse_error"},
		{name: "bad content-length", contentType: "application/json", body: "{}", want: "request_parse_error"},
	} {
		t.Run(c.name, func(t *testing.T) {
			req := readerRequest(t, leaf, "/v1/payments/p-1"+c.path)
			h := req.Attributes.Request.Http
			for i := 0; i < c.headers; i++ {
				h.Headers[fmt.Sprintf("x-h%d", i)] = "v"
			}
			if c.contentType != "" {
				h.Headers["content-type"] = c.contentType
			}
			if c.name == "bad content-length" {
				h.Headers["content-length"] = "twelve"
			}
			h.Body = c.body
			resp, err := svc.client.Check(context.Background(), req)
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			checkNoLeak(t, resp)
			if v := reduce(resp); v.Reason != c.want {
				t.Errorf("reason %s, want %s", v.Reason, c.want)
			}
		})
	}
}

// TestHugeHostAndRequestIDAreRecorded (#15.4): a 33 KB Host of '&' (six
// bytes each under HTML escaping) and a 40 KB x-request-id used to make the
// record exceed its limit: the Check was denied decision_log_unavailable and
// nothing was written. The decision is now made as usual and recorded,
// each field cut to its bound and the record flagged truncated.
func TestHugeHostAndRequestIDAreRecorded(t *testing.T) {
	ca := testca.New(t)
	svc := startService(t, newConfig(t, ca.WriteBundle(), nil))
	leaf := issueSpec(ca, catalogueAgents()["reader"])
	req := readerRequest(t, leaf, "/v1/payments/p-1")
	req.Attributes.Request.Http.Host = strings.Repeat("&", 33<<10)
	req.Attributes.Request.Http.Headers["x-request-id"] = strings.Repeat("r", 40<<10)
	resp, err := svc.client.Check(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	v := reduce(resp)
	if v.Reason == "decision_log_unavailable" || v.DecisionID == "" {
		t.Fatalf("the decision was not recorded: %+v", v)
	}
	rec := svc.verifyLog(t)[v.DecisionID]
	if rec == nil {
		t.Fatalf("decision %s not in the log", v.DecisionID)
	}
	if !rec.Truncated || len(rec.Request.Host) > 1024 || len(rec.Request.ID) > 256 || !strings.HasPrefix(rec.Request.Host, "&&&") {
		t.Errorf("record: truncated=%v host %d bytes, request id %d bytes", rec.Truncated, len(rec.Request.Host), len(rec.Request.ID))
	}
}
