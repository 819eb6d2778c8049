package server

import (
	"context"
	"errors"
	"strings"
	"time"
	"unicode/utf8"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	gproto "google.golang.org/grpc/encoding/proto"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// A CheckRequest whose strings are not all valid UTF-8 (Envoy forwards
// header bytes as the client sent them, obs-text included) fails protobuf
// decoding, and gRPC answered Internal before any handler ran: no decision,
// no record. The server decodes CheckRequests with checkCodec instead: a
// request that fails only on UTF-8 is decoded again with each bad sequence
// replaced by U+FFFD, and the Authorization service then refuses and
// records it (extauthz CheckInvalidUTF8). Other messages, and requests that
// are malformed otherwise, are decoded exactly as before.

// checkFrame is what the Check handler decodes into.
type checkFrame struct {
	req         authv3.CheckRequest
	invalidUTF8 bool
	wire        int // bytes on the wire
}

// invalidUTF8Checker is the Authorization service's entry for such a
// request.
type invalidUTF8Checker interface {
	CheckInvalidUTF8(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error)
}

// checkCodec is gRPC's proto codec, except for checkFrame.
type checkCodec struct{ encoding.CodecV2 }

func newCheckCodec() checkCodec { return checkCodec{encoding.GetCodecV2(gproto.Name)} }

func (c checkCodec) Unmarshal(data mem.BufferSlice, v any) error {
	f, ok := v.(*checkFrame)
	if !ok {
		return c.CodecV2.Unmarshal(data, v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	b := buf.ReadOnlyData()
	f.wire = len(b)
	err := proto.Unmarshal(b, &f.req)
	if err == nil {
		return nil
	}
	fixed, changed, ferr := replaceInvalidUTF8(f.req.ProtoReflect().Descriptor(), b, 0)
	if ferr != nil || !changed {
		return err
	}
	proto.Reset(&f.req)
	if err := proto.Unmarshal(fixed, &f.req); err != nil {
		return err
	}
	f.invalidUTF8 = true
	return nil
}

// maxWireDepth bounds replaceInvalidUTF8's recursion (protobuf's own
// decoder allows 10,000 levels; no CheckRequest needs 100).
const maxWireDepth = 100

// replaceInvalidUTF8 returns the wire-format message b of type md with
// every string field, at any depth, that is not valid UTF-8 replaced by
// strings.ToValidUTF8(s, "\uFFFD"); changed reports whether there was one.
func replaceInvalidUTF8(md protoreflect.MessageDescriptor, b []byte, depth int) (out []byte, changed bool, err error) {
	if depth > maxWireDepth {
		return nil, false, errors.New("message nesting too deep")
	}
	out = make([]byte, 0, len(b))
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, false, protowire.ParseError(n)
		}
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if m < 0 {
			return nil, false, protowire.ParseError(m)
		}
		field := b[:n+m]
		b = b[n+m:]
		fd := md.Fields().ByNumber(num)
		if fd == nil || typ != protowire.BytesType {
			out = append(out, field...)
			continue
		}
		v, _ := protowire.ConsumeBytes(field[n:])
		switch fd.Kind() {
		case protoreflect.StringKind:
			if !utf8.Valid(v) {
				out = protowire.AppendTag(out, num, typ)
				out = protowire.AppendString(out, strings.ToValidUTF8(string(v), "\uFFFD"))
				changed = true
				continue
			}
		case protoreflect.MessageKind: // map entries too
			sub, ch, err := replaceInvalidUTF8(fd.Message(), v, depth+1)
			if err != nil {
				return nil, false, err
			}
			if ch {
				out = protowire.AppendTag(out, num, typ)
				out = protowire.AppendBytes(out, sub)
				changed = true
				continue
			}
		}
		out = append(out, field...)
	}
	return out, changed, nil
}

// authorizationDesc is envoy.service.auth.v3.Authorization with a Check
// handler that decodes through checkFrame. limit > 0 refuses a request
// larger than that many bytes on the wire, as the transport would with
// the smaller limit (limitUnary's job for the other unary calls; it would
// re-encode the whole request to size it).
func authorizationDesc(limit int) *grpc.ServiceDesc {
	d := authv3.Authorization_ServiceDesc
	handler := func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) { //nolint:revive // gRPC's signature
		return checkHandler(srv, ctx, dec, interceptor, limit)
	}
	d.Methods = []grpc.MethodDesc{{MethodName: "Check", Handler: handler}}
	return &d
}

// checkHandler has grpc.MethodDesc's handler signature, context second,
// and the size limit.
func checkHandler(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor, limit int) (any, error) { //nolint:revive // gRPC's signature
	f := new(checkFrame)
	if err := dec(f); err != nil {
		return nil, err
	}
	if limit > 0 && f.wire > limit {
		return nil, status.Errorf(codes.ResourceExhausted, "grpc: received message larger than max (%d vs. %d)", f.wire, limit)
	}
	s := srv.(authv3.AuthorizationServer)
	call := s.Check
	if u, ok := s.(invalidUTF8Checker); ok && f.invalidUTF8 {
		call = u.CheckInvalidUTF8
	}
	if interceptor == nil {
		return call(ctx, &f.req)
	}
	info := &grpc.UnaryServerInfo{Server: srv, FullMethod: authv3.Authorization_Check_FullMethodName}
	return interceptor(ctx, &f.req, info, func(ctx context.Context, req any) (any, error) {
		return call(ctx, req.(*authv3.CheckRequest))
	})
}

// receiveDeadline bounds the unary calls (Check, health Check) whose caller
// set no shorter deadline: a client that opens a stream and never sends its
// message is cut off with DEADLINE_EXCEEDED instead of holding the stream
// for as long as the connection lives. Streaming calls (health Watch,
// reflection) are left alone.
func receiveDeadline(d time.Duration) tap.ServerInHandle {
	return func(ctx context.Context, info *tap.Info) (context.Context, error) {
		switch info.FullMethodName {
		case authv3.Authorization_Check_FullMethodName, healthpb.Health_Check_FullMethodName:
		default:
			return ctx, nil
		}
		ctx, cancel := context.WithTimeout(ctx, d) //nolint:gosec // cancelled with the stream, see below
		// Not called here: the stream's context is the parent, and gRPC
		// cancels it when the stream ends, which stops this timer too.
		_ = cancel
		return ctx, nil
	}
}
