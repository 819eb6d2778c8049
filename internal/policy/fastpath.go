package policy

import (
	"encoding/base64"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"
)

// The hot messages of every CheckRequest (AttributeContext, Peer, Request,
// HttpRequest, SocketAddress) are converted by direct field access: protobuf
// reflection costs about half of the input build. Everything else goes
// through the reflective converter (protomap.go), whose rules these follow.
// Field counts are pinned by TestFastPathCoversAllFields, so a
// go-control-plane upgrade that adds a field fails a test instead of
// silently dropping it from the input; the equivalence test against
// loadtest.NaiveInput and FuzzBuildInput check the values.

// JSON names of the fields handled here, allocated once and never mutated.
var (
	keyDestination          = ast.StringTerm("destination")
	keyRequest              = ast.StringTerm("request")
	keyContextExtensions    = ast.StringTerm("contextExtensions")
	keyMetadataContext      = ast.StringTerm("metadataContext")
	keyRouteMetadataContext = ast.StringTerm("routeMetadataContext")
	keyTLSSession           = ast.StringTerm("tlsSession")

	keyAddress     = ast.StringTerm("address")
	keyService     = ast.StringTerm("service")
	keyLabels      = ast.StringTerm("labels")
	keyPrincipal   = ast.StringTerm("principal")
	keyCertificate = ast.StringTerm("certificate")

	keySocketAddress            = ast.StringTerm("socketAddress")
	keyProtocol                 = ast.StringTerm("protocol")
	keyPortValue                = ast.StringTerm("portValue")
	keyNamedPort                = ast.StringTerm("namedPort")
	keyResolverName             = ast.StringTerm("resolverName")
	keyIpv4Compat               = ast.StringTerm("ipv4Compat")
	keyNetworkNamespaceFilepath = ast.StringTerm("networkNamespaceFilepath")

	keyTime      = ast.StringTerm("time")
	keySeconds   = ast.StringTerm("seconds")
	keyNanos     = ast.StringTerm("nanos")
	keyHTTP      = ast.StringTerm("http")
	keyMethod    = ast.StringTerm("method")
	keyHeaders   = ast.StringTerm("headers")
	keyHeaderMap = ast.StringTerm("headerMap")
	keyPath      = ast.StringTerm("path")
	keyHost      = ast.StringTerm("host")
	keyScheme    = ast.StringTerm("scheme")
	keyQuery     = ast.StringTerm("query")
	keyFragment  = ast.StringTerm("fragment")
	keySize      = ast.StringTerm("size")
	keyBody      = ast.StringTerm("body")
	keyRawBody   = ast.StringTerm("rawBody")
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
	kv := make([][2]*ast.Term, 0, 7) // built at once, see buildInput
	if a.Source != nil {
		v, err := peerValue(a.Source)
		if err != nil {
			return nil, err
		}
		kv = append(kv, ast.Item(keySource, ast.NewTerm(v)))
	}
	if a.Destination != nil {
		v, err := peerValue(a.Destination)
		if err != nil {
			return nil, err
		}
		kv = append(kv, ast.Item(keyDestination, ast.NewTerm(v)))
	}
	if a.Request != nil {
		v, err := requestValue(a.Request)
		if err != nil {
			return nil, err
		}
		kv = append(kv, ast.Item(keyRequest, ast.NewTerm(v)))
	}
	if len(a.ContextExtensions) > 0 {
		kv = append(kv, ast.Item(keyContextExtensions, ast.NewTerm(stringMap(a.ContextExtensions))))
	}
	if a.MetadataContext != nil {
		v, err := messageToValue(a.MetadataContext.ProtoReflect(), 1)
		if err != nil {
			return nil, err
		}
		kv = append(kv, ast.Item(keyMetadataContext, ast.NewTerm(v)))
	}
	if a.RouteMetadataContext != nil {
		v, err := messageToValue(a.RouteMetadataContext.ProtoReflect(), 1)
		if err != nil {
			return nil, err
		}
		kv = append(kv, ast.Item(keyRouteMetadataContext, ast.NewTerm(v)))
	}
	if a.TlsSession != nil {
		v, err := messageToValue(a.TlsSession.ProtoReflect(), 1)
		if err != nil {
			return nil, err
		}
		kv = append(kv, ast.Item(keyTLSSession, ast.NewTerm(v)))
	}
	return ast.NewObject(kv...), nil
}

func peerValue(p *authv3.AttributeContext_Peer) (ast.Object, error) {
	kv := make([][2]*ast.Term, 0, 5)
	if p.Address != nil {
		v, err := addressValue(p.Address)
		if err != nil {
			return nil, err
		}
		kv = append(kv, ast.Item(keyAddress, ast.NewTerm(v)))
	}
	if p.Service != "" {
		kv = append(kv, ast.Item(keyService, ast.StringTerm(p.Service)))
	}
	if len(p.Labels) > 0 {
		kv = append(kv, ast.Item(keyLabels, ast.NewTerm(stringMap(p.Labels))))
	}
	if p.Principal != "" {
		kv = append(kv, ast.Item(keyPrincipal, ast.StringTerm(p.Principal)))
	}
	if p.Certificate != "" {
		kv = append(kv, ast.Item(keyCertificate, ast.StringTerm(p.Certificate)))
	}
	return ast.NewObject(kv...), nil
}

func addressValue(a *corev3.Address) (ast.Value, error) {
	sa, ok := a.Address.(*corev3.Address_SocketAddress)
	if !ok || sa.SocketAddress == nil {
		return messageToValue(a.ProtoReflect(), 2) // pipe, internal address, unset
	}
	s := sa.SocketAddress
	kv := make([][2]*ast.Term, 0, 7)
	if s.Protocol != 0 {
		kv = append(kv, ast.Item(keyProtocol, ast.IntNumberTerm(int(s.Protocol))))
	}
	if s.Address != "" {
		kv = append(kv, ast.Item(keyAddress, ast.StringTerm(s.Address)))
	}
	switch ps := s.PortSpecifier.(type) {
	case *corev3.SocketAddress_PortValue:
		kv = append(kv, ast.Item(keyPortValue, ast.UIntNumberTerm(uint64(ps.PortValue))))
	case *corev3.SocketAddress_NamedPort:
		kv = append(kv, ast.Item(keyNamedPort, ast.StringTerm(ps.NamedPort)))
	}
	if s.ResolverName != "" {
		kv = append(kv, ast.Item(keyResolverName, ast.StringTerm(s.ResolverName)))
	}
	if s.Ipv4Compat {
		kv = append(kv, ast.Item(keyIpv4Compat, trueTerm))
	}
	if s.NetworkNamespaceFilepath != "" {
		kv = append(kv, ast.Item(keyNetworkNamespaceFilepath, ast.StringTerm(s.NetworkNamespaceFilepath)))
	}
	return ast.NewObject(ast.Item(keySocketAddress, ast.NewTerm(ast.NewObject(kv...)))), nil
}

func requestValue(r *authv3.AttributeContext_Request) (ast.Object, error) {
	kv := make([][2]*ast.Term, 0, 2)
	if t := r.Time; t != nil {
		tkv := make([][2]*ast.Term, 0, 2)
		if t.Seconds != 0 {
			tkv = append(tkv, ast.Item(keySeconds, ast.IntNumberTerm(int(t.Seconds))))
		}
		if t.Nanos != 0 {
			tkv = append(tkv, ast.Item(keyNanos, ast.IntNumberTerm(int(t.Nanos))))
		}
		kv = append(kv, ast.Item(keyTime, ast.NewTerm(ast.NewObject(tkv...))))
	}
	if h := r.Http; h != nil {
		hkv := make([][2]*ast.Term, 0, 13)
		str := func(k *ast.Term, v string) {
			if v != "" {
				hkv = append(hkv, ast.Item(k, ast.StringTerm(v)))
			}
		}
		str(keyID, h.Id)
		str(keyMethod, h.Method)
		if len(h.Headers) > 0 {
			hkv = append(hkv, ast.Item(keyHeaders, ast.NewTerm(stringMap(h.Headers))))
		}
		if h.HeaderMap != nil {
			v, err := messageToValue(h.HeaderMap.ProtoReflect(), 3)
			if err != nil {
				return nil, err
			}
			hkv = append(hkv, ast.Item(keyHeaderMap, ast.NewTerm(v)))
		}
		str(keyPath, h.Path)
		str(keyHost, h.Host)
		str(keyScheme, h.Scheme)
		str(keyQuery, h.Query)
		str(keyFragment, h.Fragment)
		if h.Size != 0 {
			hkv = append(hkv, ast.Item(keySize, ast.IntNumberTerm(int(h.Size))))
		}
		str(keyProtocol, h.Protocol)
		str(keyBody, h.Body)
		if len(h.RawBody) > 0 {
			hkv = append(hkv, ast.Item(keyRawBody, ast.StringTerm(base64.StdEncoding.EncodeToString(h.RawBody))))
		}
		kv = append(kv, ast.Item(keyHTTP, ast.NewTerm(ast.NewObject(hkv...))))
	}
	return ast.NewObject(kv...), nil
}

func stringMap(m map[string]string) ast.Object {
	kv := make([][2]*ast.Term, 0, len(m))
	for k, v := range m {
		kt, ok := commonKeys[k]
		if !ok {
			kt = ast.StringTerm(k)
		}
		kv = append(kv, ast.Item(kt, ast.StringTerm(v)))
	}
	return ast.NewObject(kv...)
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
