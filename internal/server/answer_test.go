package server

import (
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/agentauthz/agentauthz/internal/testenv"
)

// TestMarshalCheckResponse: the codec's hand-written CheckResponse encoding
// decodes to the message it was given, for allowed and denied answers with
// metadata of every value kind, large and small, and falls back to
// protobuf where it does not apply.
func TestMarshalCheckResponse(t *testing.T) {
	// The encoding writes these fields by number: a new field in a later
	// go-control-plane must be added to it.
	fields := func(md protoreflect.MessageDescriptor) map[protowire.Number]string {
		out := map[protowire.Number]string{}
		for i := range md.Fields().Len() {
			out[md.Fields().Get(i).Number()] = string(md.Fields().Get(i).Name())
		}
		return out
	}
	want := map[protowire.Number]string{1: "status", 2: "denied_response", 3: "ok_response", 4: "dynamic_metadata", 5: "error_response"}
	if got := fields((&authv3.CheckResponse{}).ProtoReflect().Descriptor()); len(got) != len(want) {
		t.Fatalf("CheckResponse fields %v, the codec knows %v", got, want)
	} else {
		for n, name := range want {
			if got[n] != name {
				t.Fatalf("CheckResponse fields %v, the codec knows %v", got, want)
			}
		}
	}
	if got := fields((&structpb.Struct{}).ProtoReflect().Descriptor()); len(got) != 1 || got[1] != "fields" {
		t.Fatalf("Struct fields %v", got)
	}
	if got := fields((&structpb.Value{}).ProtoReflect().Descriptor()); got[3] != "string_value" {
		t.Fatalf("Value fields %v", got)
	}

	hdr := func(k, v string) *corev3.HeaderValueOption {
		return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: v}, AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}
	}
	md := func(m map[string]any) *structpb.Struct {
		s, err := structpb.NewStruct(m)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	strs := map[string]any{"decision_id": "0193a0b4-7c1e-7d2a-9f3e-2b8c4d5e6f70", "reason": "allowed", "agent_id": "payments-bot", "trust_level": "L3", "operation": "payments:initiate", "empty": ""}
	kinds := map[string]any{"n": 1.5, "b": true, "z": nil, "l": []any{"a", 2.0, map[string]any{"x": "y"}}, "s": map[string]any{"k": "v", "deep": map[string]any{}}, "str": "é\x00"}
	ok := func(m *structpb.Struct) *authv3.CheckResponse {
		return &authv3.CheckResponse{
			Status: &status.Status{Code: 0},
			HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
				Headers:              []*corev3.HeaderValueOption{hdr("x-agent-id", "payments-bot"), hdr("x-agent-receipt", strings.Repeat("A", 512))},
				HeadersToRemove:      []string{"x-agent-owner"},
				ResponseHeadersToAdd: []*corev3.HeaderValueOption{hdr("x-decision-id", "0193")},
			}},
			DynamicMetadata: m,
		}
	}
	denied := func(m *structpb.Struct) *authv3.CheckResponse {
		return &authv3.CheckResponse{
			Status: &status.Status{Code: 7},
			HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
				Status: &typev3.HttpStatus{Code: typev3.StatusCode_Forbidden}, Headers: []*corev3.HeaderValueOption{hdr("content-type", "application/json")},
				Body: `{"error":"forbidden"}`,
			}},
			DynamicMetadata: m,
		}
	}
	big := map[string]any{}
	for i := range 200 {
		big[strings.Repeat("k", i+1)] = strings.Repeat("v", 40)
	}
	withUnknown := ok(md(strs))
	withUnknown.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1))
	nilValue := ok(md(strs))
	nilValue.DynamicMetadata.Fields["nil"] = nil
	for name, r := range map[string]*authv3.CheckResponse{
		"allowed, string metadata":      ok(md(strs)),
		"denied, string metadata":       denied(md(strs)),
		"allowed, every kind":           ok(md(kinds)),
		"denied, empty metadata":        denied(md(map[string]any{})),
		"large (pooled buffer)":         ok(md(big)),
		"no status, no answer":          {DynamicMetadata: md(strs)},
		"no metadata (protobuf's path)": ok(nil),
		"unknown fields (protobuf's)":   withUnknown,
		"a nil value (protobuf's)":      nilValue,
		"error response (protobuf's)":   {HttpResponse: &authv3.CheckResponse_ErrorResponse{ErrorResponse: &authv3.DeniedHttpResponse{Body: "x"}}, DynamicMetadata: md(strs)},
		"ok response nil (protobuf's)":  {HttpResponse: &authv3.CheckResponse_OkResponse{}, DynamicMetadata: md(strs)},
	} {
		t.Run(name, func(t *testing.T) {
			before := proto.Clone(r)
			data, err := newCheckCodec().Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			b := data.Materialize()
			data.Free()
			if len(b) != proto.Size(r) {
				t.Errorf("%d bytes, protobuf's encoding has %d", len(b), proto.Size(r))
			}
			got := &authv3.CheckResponse{}
			if err := proto.Unmarshal(b, got); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(got, r) {
				t.Errorf("decoded %v\nwant %v", got, r)
			}
			if !proto.Equal(r, before) {
				t.Error("Marshal changed the message")
			}
		})
	}

	// What it is for: no allocation per metadata entry.
	r := ok(md(strs))
	codec := newCheckCodec()
	testenv.SkipAllocsUnderRace(t)
	ours := testing.AllocsPerRun(100, func() {
		d, _ := codec.Marshal(r)
		d.Free()
	})
	generic := testing.AllocsPerRun(100, func() {
		d, _ := codec.CodecV2.Marshal(r)
		d.Free()
	})
	if ours > 3 || ours >= generic {
		t.Errorf("%v allocations per answer (protobuf's codec: %v)", ours, generic)
	}
	t.Logf("allocations per answer: %v (protobuf's codec: %v)", ours, generic)
}
