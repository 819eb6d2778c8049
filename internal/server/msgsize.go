package server

import (
	"context"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/agentauthz/agentauthz/internal/config"
)

// extProcMsgMargin is room for the rest of an ext_proc message beside a
// buffered body: its headers (bounded by max_header_bytes) and framing.
const extProcMsgMargin = 64 << 10

// recvLimits returns the transport's receive limit and, when it had to be
// raised above grpc.max_recv_msg_bytes for ext_proc (Envoy sends a buffered
// response body of up to response_signing.max_body_bytes in one message),
// the smaller limit every other call keeps; 0 when not raised.
func recvLimits(cfg config.Config, extProc bool) (transport, others int) {
	transport = cfg.GRPC.MaxRecvMsgBytes
	if !extProc {
		return transport, 0
	}
	need := int(cfg.ResponseSigning.MaxBodyBytes) + cfg.ResponseSigning.MaxHeaderBytes + extProcMsgMargin
	if need <= transport {
		return transport, 0
	}
	return need, transport
}

// limitUnary refuses a unary request larger than limit, as the transport
// would have with the smaller limit (only after decoding: gRPC has no
// per-method limit, and ext_proc is a stream, so every unary call keeps it).
func limitUnary(limit int) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if info.FullMethod == authv3.Authorization_Check_FullMethodName {
			return handler(ctx, req) // checkHandler refused it by its size on the wire
		}
		if m, ok := req.(proto.Message); ok {
			if n := proto.Size(m); n > limit {
				return nil, status.Errorf(codes.ResourceExhausted, "grpc: received message larger than max (%d vs. %d)", n, limit)
			}
		}
		return handler(ctx, req)
	}
}

// limitStreams does the same for the messages of every stream but ext_proc's.
func limitStreams(limit int) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if info.FullMethod == "/"+extprocv3.ExternalProcessor_ServiceDesc.ServiceName+"/Process" {
			return handler(srv, ss)
		}
		return handler(srv, limitedStream{ss, limit})
	}
}

type limitedStream struct {
	grpc.ServerStream
	limit int
}

func (s limitedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if pm, ok := m.(proto.Message); ok {
		if n := proto.Size(pm); n > s.limit {
			return status.Errorf(codes.ResourceExhausted, "grpc: received message larger than max (%d vs. %d)", n, s.limit)
		}
	}
	return nil
}
