package server

import (
	"bytes"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// invalidRequest marshals a request whose header value, header key, raw
// header map value and metadata string carry bytes that are not UTF-8
// (marshalled with placeholders, then patched: protobuf refuses to
// marshal them).
func invalidRequest(t testing.TB) ([]byte, *authv3.CheckRequest) {
	s, _ := structpb.NewStruct(map[string]any{"k": "PH3"})
	req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method:    "GET",
			Path:      "/v1",
			Headers:   map[string]string{"x-a": "PH1", "PH2": "v"},
			HeaderMap: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "x-b", Value: "PH4", RawValue: []byte{0xff}}}},
		}},
		MetadataContext: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"f": s}},
	}}
	b, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	for _, ph := range []string{"PH1", "PH2", "PH3", "PH4"} {
		b = bytes.Replace(b, []byte(ph), []byte("\xe9\xff"+ph[2:]), 1)
	}
	return b, req
}

func decode(t *testing.T, b []byte) (*checkFrame, error) {
	t.Helper()
	f := new(checkFrame)
	return f, newCheckCodec().Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, f)
}

func TestCheckCodecReplacesInvalidUTF8(t *testing.T) {
	b, _ := invalidRequest(t)
	if err := proto.Unmarshal(b, new(authv3.CheckRequest)); err == nil || !strings.Contains(err.Error(), "UTF-8") {
		t.Fatalf("plain decoding: %v, want the UTF-8 error", err)
	}
	f, err := decode(t, b)
	if err != nil || !f.invalidUTF8 {
		t.Fatalf("codec: %v, flagged %v", err, f.invalidUTF8)
	}
	h := f.req.GetAttributes().GetRequest().GetHttp()
	if h.Headers["x-a"] != "\ufffd1" || h.Headers["\ufffd2"] != "v" || h.GetHeaderMap().GetHeaders()[0].GetValue() != "\ufffd4" ||
		!bytes.Equal(h.GetHeaderMap().GetHeaders()[0].GetRawValue(), []byte{0xff}) || h.Method != "GET" {
		t.Errorf("decoded %v", h)
	}
	if got := f.req.GetAttributes().GetMetadataContext().GetFilterMetadata()["f"].GetFields()["k"].GetStringValue(); got != "\ufffd3" {
		t.Errorf("metadata string %q", got)
	}

	// A valid request is decoded as gRPC decodes it, unflagged.
	valid, err := proto.Marshal(&authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Path: "/café"}}}})
	if err != nil {
		t.Fatal(err)
	}
	if f, err := decode(t, valid); err != nil || f.invalidUTF8 || f.req.GetAttributes().GetRequest().GetHttp().GetPath() != "/café" {
		t.Errorf("valid request: %v %v %v", f.req.String(), f.invalidUTF8, err)
	}
	// Malformed wire data stays an error.
	if _, err := decode(t, append(b, 0x0a, 0x7f)); err == nil {
		t.Error("truncated message decoded")
	}
}

// FuzzReplaceInvalidUTF8: for any bytes, the codec either fails as
// protobuf fails, or decodes; it flags a request exactly when protobuf
// alone refused it, and a flagged request re-encodes cleanly.
func FuzzReplaceInvalidUTF8(f *testing.F) {
	b, _ := invalidRequest(f)
	f.Add(b)
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x02, 0x0a, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		plainErr := proto.Unmarshal(b, new(authv3.CheckRequest))
		fr, err := decode(t, b)
		switch {
		case plainErr == nil && (err != nil || fr.invalidUTF8):
			t.Fatalf("valid message: codec error %v, flagged %v", err, fr.invalidUTF8)
		case plainErr != nil && err == nil && !fr.invalidUTF8:
			t.Fatalf("protobuf refused (%v) but the codec decoded unflagged", plainErr)
		case err == nil && fr.invalidUTF8:
			if _, err := proto.Marshal(&fr.req); err != nil {
				t.Fatalf("flagged request does not re-encode: %v", err)
			}
		}
	})
}
