package adversarial

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/testca"
)

// rawCodec sends bytes as they are: a client that is not bound by
// protobuf's UTF-8 rule, as Envoy's C++ encoder is not.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return proto.Unmarshal(data.Materialize(), v.(proto.Message))
}

func (rawCodec) Name() string { return "proto" }

// TestNonUTF8HeaderValueIsRecordedDenial (#15.9): a header value with bytes
// that are not UTF-8 (obs-text, which Envoy forwards as received) is
// decided: denied with request_parse_error (400) and recorded, naming the
// agent. It was a gRPC Internal error from the codec, with no record.
func TestNonUTF8HeaderValueIsRecordedDenial(t *testing.T) {
	ca := testca.New(t)
	svc := startService(t, newConfig(t, ca.WriteBundle(), nil))
	leaf := issueSpec(ca, catalogueAgents()["reader"])
	req := readerRequest(t, leaf, "/v1/payments/p-1")
	req.Attributes.Request.Http.Headers["x-note"] = "caf\x01\x02" // placeholder, same length
	raw, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	raw = bytes.Replace(raw, []byte("caf\x01\x02"), []byte("caf\xe9\xff"), 1) // Latin-1 "é" and a stray byte

	var resp authv3.CheckResponse
	err = svc.conn.Invoke(context.Background(), authv3.Authorization_Check_FullMethodName, &raw, &resp,
		grpc.ForceCodecV2(rawCodec{}))
	if err != nil {
		t.Fatalf("Check: %v (want a decision, not a transport error)", err)
	}
	checkNoLeak(t, &resp)
	v := reduce(&resp)
	if v.Allowed || v.Status != 400 || v.Reason != "request_parse_error" {
		t.Fatalf("allowed=%v status=%d reason=%s, want a 400 request_parse_error denial", v.Allowed, v.Status, v.Reason)
	}
	rec := svc.verifyLog(t)[v.DecisionID]
	if rec == nil {
		t.Fatalf("decision %s is not in the log", v.DecisionID)
	}
	if rec.Decision.Allowed || rec.Decision.Reasons[0] != "request_parse_error" || rec.Agent.ID != catalogueAgents()["reader"].id {
		t.Errorf("record %+v %+v, want a request_parse_error denial of the reader", rec.Decision, rec.Agent)
	}

	// The same request in valid UTF-8 is decided as usual.
	req.Attributes.Request.Http.Headers["x-note"] = "café"
	ok, err := svc.client.Check(context.Background(), req)
	if err != nil || !reduce(ok).Allowed {
		t.Fatalf("valid request: %v %v", reduce(ok), err)
	}
}

// hpackLiteral encodes one header as an HPACK literal without indexing and
// without Huffman coding (name and value shorter than 127 bytes).
func hpackLiteral(b []byte, name, value string) []byte {
	b = append(b, 0x00, byte(len(name)))
	b = append(b, name...)
	b = append(b, byte(len(value)))
	return append(b, value...)
}

// TestHeadersWithoutMessageTimeOut (#15.9): a client that opens a Check
// stream, sends its headers and never the message gets DEADLINE_EXCEEDED
// after twice grpc.check_timeout. The stream waited for as long as the
// connection lived.
func TestHeadersWithoutMessageTimeOut(t *testing.T) {
	ca := testca.New(t)
	svc := startService(t, newConfig(t, ca.WriteBundle(), func(c *config.Config) {
		c.GRPC.CheckTimeout = config.Duration(200 * time.Millisecond)
	}))
	c, r, _ := h2Dial(t, svc.grpcAddr)
	var hb []byte
	for _, h := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", authv3.Authorization_Check_FullMethodName},
		{":authority", "agentauthz"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
		hb = hpackLiteral(hb, h[0], h[1])
	}
	const frameHeaders, frameRSTStream, flagEndStream, flagEndHeaders = 0x1, 0x3, 0x1, 0x4
	hdr := []byte{byte(len(hb) >> 16), byte(len(hb) >> 8), byte(len(hb)), frameHeaders, flagEndHeaders, 0, 0, 0, 1}
	if _, err := c.Write(append(hdr, hb...)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c.SetReadDeadline(start.Add(10 * time.Second))
	for {
		f, err := readFrame(r)
		if err != nil {
			t.Fatalf("no answer on a stream without its message after %v: %v", time.Since(start).Round(time.Millisecond), err)
		}
		if f.stream != 1 {
			continue
		}
		if f.typ == frameRSTStream || f.typ == frameHeaders && f.flags&flagEndStream != 0 {
			t.Logf("stream ended after %v (frame type %d, %s)", time.Since(start).Round(time.Millisecond), f.typ, describe(f))
			return
		}
	}
}

func describe(f h2Frame) string {
	if len(f.payload) == 4 {
		return fmt.Sprintf("code %d", binary.BigEndian.Uint32(f.payload))
	}
	return fmt.Sprintf("%d bytes", len(f.payload))
}
