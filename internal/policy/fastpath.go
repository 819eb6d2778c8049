package policy

import (
	"encoding/base64"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"
)

// The hot messages of every CheckRequest (AttributeContext, Peer, Request,
// HttpRequest, SocketAddress) are converted by direct field access: protobuf
// reflection costs about half of the input build. Everything else goes
// through the reflective converter. Field counts are pinned by
// TestFastPathCoversAllFields, so a go-control-plane upgrade that adds a
// field fails a test instead of silently dropping it from the input; the
// protojson equivalence test and FuzzBuildInput check the values.

// JSON names of the fields handled here, allocated once and never mutated.
var (
	kSource               = ast.StringTerm("source")
	kDestination          = ast.StringTerm("destination")
	kRequest              = ast.StringTerm("request")
	kContextExtensions    = ast.StringTerm("contextExtensions")
	kMetadataContext      = ast.StringTerm("metadataContext")
	kRouteMetadataContext = ast.StringTerm("routeMetadataContext")
	kTLSSession           = ast.StringTerm("tlsSession")

	kAddress     = ast.StringTerm("address")
	kService     = ast.StringTerm("service")
	kLabels      = ast.StringTerm("labels")
	kPrincipal   = ast.StringTerm("principal")
	kCertificate = ast.StringTerm("certificate")

	kSocketAddress            = ast.StringTerm("socketAddress")
	kProtocol                 = ast.StringTerm("protocol")
	kPortValue                = ast.StringTerm("portValue")
	kNamedPort                = ast.StringTerm("namedPort")
	kResolverName             = ast.StringTerm("resolverName")
	kIpv4Compat               = ast.StringTerm("ipv4Compat")
	kNetworkNamespaceFilepath = ast.StringTerm("networkNamespaceFilepath")

	kTime      = ast.StringTerm("time")
	kHTTP      = ast.StringTerm("http")
	kID        = ast.StringTerm("id")
	kMethod    = ast.StringTerm("method")
	kHeaders   = ast.StringTerm("headers")
	kHeaderMap = ast.StringTerm("headerMap")
	kPath      = ast.StringTerm("path")
	kHost      = ast.StringTerm("host")
	kScheme    = ast.StringTerm("scheme")
	kQuery     = ast.StringTerm("query")
	kFragment  = ast.StringTerm("fragment")
	kSize      = ast.StringTerm("size")
	kBody      = ast.StringTerm("body")
	kRawBody   = ast.StringTerm("rawBody")
)

// fastpathFieldCounts is what the hand-written converters below handle.
var fastpathFieldCounts = map[string]int{
	"envoy.service.auth.v3.AttributeContext":             7,
	"envoy.service.auth.v3.AttributeContext.Peer":        5,
	"envoy.service.auth.v3.AttributeContext.Request":     2,
	"envoy.service.auth.v3.AttributeContext.HttpRequest": 13,
	"envoy.config.core.v3.SocketAddress":                 7,
}

func attributesValue(a *authv3.AttributeContext) (ast.Object, error) {
	obj := ast.NewObject()
	if a.Source != nil {
		v, err := peerValue(a.Source)
		if err != nil {
			return nil, err
		}
		obj.Insert(kSource, ast.NewTerm(v))
	}
	if a.Destination != nil {
		v, err := peerValue(a.Destination)
		if err != nil {
			return nil, err
		}
		obj.Insert(kDestination, ast.NewTerm(v))
	}
	if a.Request != nil {
		v, err := requestValue(a.Request)
		if err != nil {
			return nil, err
		}
		obj.Insert(kRequest, ast.NewTerm(v))
	}
	if len(a.ContextExtensions) > 0 {
		obj.Insert(kContextExtensions, ast.NewTerm(stringMap(a.ContextExtensions)))
	}
	if a.MetadataContext != nil {
		v, err := messageToValue(a.MetadataContext.ProtoReflect(), 1)
		if err != nil {
			return nil, err
		}
		obj.Insert(kMetadataContext, ast.NewTerm(v))
	}
	if a.RouteMetadataContext != nil {
		v, err := messageToValue(a.RouteMetadataContext.ProtoReflect(), 1)
		if err != nil {
			return nil, err
		}
		obj.Insert(kRouteMetadataContext, ast.NewTerm(v))
	}
	if a.TlsSession != nil {
		v, err := messageToValue(a.TlsSession.ProtoReflect(), 1)
		if err != nil {
			return nil, err
		}
		obj.Insert(kTLSSession, ast.NewTerm(v))
	}
	return obj, nil
}

func peerValue(p *authv3.AttributeContext_Peer) (ast.Object, error) {
	obj := ast.NewObject()
	if p.Address != nil {
		v, err := addressValue(p.Address)
		if err != nil {
			return nil, err
		}
		obj.Insert(kAddress, ast.NewTerm(v))
	}
	if p.Service != "" {
		obj.Insert(kService, ast.StringTerm(p.Service))
	}
	if len(p.Labels) > 0 {
		obj.Insert(kLabels, ast.NewTerm(stringMap(p.Labels)))
	}
	if p.Principal != "" {
		obj.Insert(kPrincipal, ast.StringTerm(p.Principal))
	}
	if p.Certificate != "" {
		obj.Insert(kCertificate, ast.StringTerm(p.Certificate))
	}
	return obj, nil
}

func addressValue(a *corev3.Address) (ast.Value, error) {
	sa, ok := a.Address.(*corev3.Address_SocketAddress)
	if !ok || sa.SocketAddress == nil {
		return messageToValue(a.ProtoReflect(), 2) // pipe, internal address, unset
	}
	s := sa.SocketAddress
	so := ast.NewObject()
	if s.Protocol != 0 {
		so.Insert(kProtocol, ast.StringTerm(s.Protocol.String()))
	}
	if s.Address != "" {
		so.Insert(kAddress, ast.StringTerm(s.Address))
	}
	switch ps := s.PortSpecifier.(type) {
	case *corev3.SocketAddress_PortValue:
		so.Insert(kPortValue, ast.UIntNumberTerm(uint64(ps.PortValue)))
	case *corev3.SocketAddress_NamedPort:
		so.Insert(kNamedPort, ast.StringTerm(ps.NamedPort))
	}
	if s.ResolverName != "" {
		so.Insert(kResolverName, ast.StringTerm(s.ResolverName))
	}
	if s.Ipv4Compat {
		so.Insert(kIpv4Compat, trueTerm)
	}
	if s.NetworkNamespaceFilepath != "" {
		so.Insert(kNetworkNamespaceFilepath, ast.StringTerm(s.NetworkNamespaceFilepath))
	}
	return ast.NewObject(ast.Item(kSocketAddress, ast.NewTerm(so))), nil
}

func requestValue(r *authv3.AttributeContext_Request) (ast.Object, error) {
	obj := ast.NewObject()
	if r.Time != nil {
		s, err := formatTimestamp(r.Time.Seconds, int64(r.Time.Nanos))
		if err != nil {
			return nil, err
		}
		obj.Insert(kTime, ast.StringTerm(s))
	}
	if h := r.Http; h != nil {
		ho := ast.NewObject()
		str := func(k *ast.Term, v string) {
			if v != "" {
				ho.Insert(k, ast.StringTerm(v))
			}
		}
		str(kID, h.Id)
		str(kMethod, h.Method)
		if len(h.Headers) > 0 {
			ho.Insert(kHeaders, ast.NewTerm(stringMap(h.Headers)))
		}
		if h.HeaderMap != nil {
			v, err := messageToValue(h.HeaderMap.ProtoReflect(), 3)
			if err != nil {
				return nil, err
			}
			ho.Insert(kHeaderMap, ast.NewTerm(v))
		}
		str(kPath, h.Path)
		str(kHost, h.Host)
		str(kScheme, h.Scheme)
		str(kQuery, h.Query)
		str(kFragment, h.Fragment)
		if h.Size != 0 {
			ho.Insert(kSize, ast.StringTerm(strconv.FormatInt(h.Size, 10)))
		}
		str(kProtocol, h.Protocol)
		str(kBody, h.Body)
		if len(h.RawBody) > 0 {
			ho.Insert(kRawBody, ast.StringTerm(base64.StdEncoding.EncodeToString(h.RawBody)))
		}
		obj.Insert(kHTTP, ast.NewTerm(ho))
	}
	return obj, nil
}

func stringMap(m map[string]string) ast.Object {
	obj := ast.NewObject()
	for k, v := range m {
		kt, ok := commonKeys[k]
		if !ok {
			kt = ast.StringTerm(k)
		}
		obj.Insert(kt, ast.StringTerm(v))
	}
	return obj
}

// commonKeys are header names (and the like) almost every request carries;
// their terms are shared instead of allocated per request. Read-only.
var commonKeys = func() map[string]*ast.Term {
	m := map[string]*ast.Term{}
	for _, k := range []string{
		":authority", ":method", ":path", ":scheme", "accept", "accept-encoding", "authorization",
		"content-length", "content-type", "user-agent", "x-request-id", "x-forwarded-for",
		"x-forwarded-proto", "x-forwarded-client-cert", "x-envoy-expected-rq-timeout-ms",
		"x-envoy-internal", "traceparent", "tracestate", "idempotency-key",
	} {
		m[k] = ast.StringTerm(k)
	}
	return m
}()
