package loadtest

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/agentauthz/agentauthz/internal/identity"
	"github.com/agentauthz/agentauthz/internal/policy"
)

// NaiveInput builds the input the way opa-envoy-plugin does
// (envoyauth/request.go RequestToInput, v3): the CheckRequest through a
// reflective protobuf → map[string]any conversion (protoMap), Go values
// that OPA's ast.InterfaceToValue converts when the input is used. It is
// the reference policy.BuildInput is tested against, and the baseline of
// the load harness (the naive server). It refuses what BuildInput
// deliberately refuses (a NaN or infinite float, nesting deeper than
// policy.MaxProtoDepth), so that the two are comparable everywhere else.
func NaiveInput(req *authv3.CheckRequest, agent *identity.Agent, operation string) (map[string]any, error) {
	// Depth -1: attributes is at depth 0, as in attributesValue.
	input, err := protoMap(req.ProtoReflect(), -1)
	if err != nil {
		return nil, fmt.Errorf("%w: attributes: %w", policy.ErrInput, err)
	}
	if p := req.GetAttributes().GetSource().GetPrincipal(); p != "" {
		input["source_principal"] = p
	}
	h := req.GetAttributes().GetRequest().GetHttp()
	rawPath, rawQuery, _ := strings.Cut(h.GetPath(), "?")
	decoded, err := url.PathUnescape(rawPath)
	if err != nil {
		return nil, fmt.Errorf("%w: path: %w", policy.ErrInput, err)
	}
	segs := strings.Split(strings.TrimLeft(decoded, "/"), "/")
	path := make([]any, len(segs))
	for i, s := range segs {
		path[i] = s
	}
	input["parsed_path"] = path
	vals, err := url.ParseQuery(rawQuery)
	if err != nil {
		return nil, fmt.Errorf("%w: query: %w", policy.ErrInput, err)
	}
	query := map[string]any{}
	for k, vs := range vals {
		arr := make([]any, len(vs))
		for i, v := range vs {
			arr[i] = v
		}
		query[k] = arr
	}
	input["parsed_query"] = query
	body, truncated, err := policy.ParseBody(h.GetHeaders(), h.GetBody(), h.GetRawBody())
	if err != nil {
		return nil, fmt.Errorf("%w: body: %w", policy.ErrInput, err)
	}
	// The body parser is shared: it is not what the comparison is about.
	bodyAny, err := ast.JSON(body.Value)
	if err != nil {
		return nil, err
	}
	input["parsed_body"] = bodyAny
	input["truncated_body"] = truncated
	input["version"] = map[string]any{"encoding": "protojson", "ext_authz": "v3"}
	if agent != nil {
		a := map[string]any{
			"id": agent.ID, "spiffe_id": agent.SPIFFEID, "tenant": agent.Tenant,
			"trust_level": agent.TrustLabel(), "trust": agent.TrustLevel, "scopes": toAnySlice(agent.Scopes),
			"owner": agent.Owner, "serial": agent.Serial, "cert_sha256": agent.CertSHA256, "issuer": agent.Issuer,
			"profile": string(agent.Profile), "source": string(agent.Source),
		}
		if !agent.NotBefore.IsZero() {
			a["not_before"] = agent.NotBefore.UTC().Format(time.RFC3339)
		}
		if !agent.NotAfter.IsZero() {
			a["not_after"] = agent.NotAfter.UTC().Format(time.RFC3339)
		}
		input["agent"] = a
	}
	if operation != "" {
		input["operation"] = operation
	}
	return input, nil
}

// protoMap is opa-envoy-plugin's protomap: populated fields under their
// JSON names, a Struct as AsMap, other messages recursively, scalars as
// their Go values (int64, uint32, EnumNumber, []byte, …).
func protoMap(m protoreflect.Message, depth int) (map[string]any, error) {
	if depth > policy.MaxProtoDepth {
		return nil, errors.New("message nesting too deep")
	}
	if s, ok := m.Interface().(interface{ AsMap() map[string]any }); ok {
		out := s.AsMap()
		return out, checkFloats(out, depth)
	}
	out := make(map[string]any, m.Descriptor().Fields().Len())
	var err error
	resolve := func(fd protoreflect.FieldDescriptor, v protoreflect.Value) any {
		if fd.Kind() == protoreflect.MessageKind {
			var sub map[string]any
			sub, err = protoMap(v.Message(), depth+1)
			return sub
		}
		x := v.Interface()
		if f, ok := x.(float32); ok && badFloat(float64(f)) || isBadFloat64(x) {
			err = fmt.Errorf("%s: %v is not a number", fd.FullName(), x)
		}
		return x
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			mm := map[string]any{}
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				mm[k.String()] = resolve(fd.MapValue(), mv)
				return err == nil
			})
			out[fd.JSONName()] = mm
		case fd.IsList():
			l := v.List()
			arr := make([]any, l.Len())
			for i := range arr {
				arr[i] = resolve(fd, l.Get(i))
			}
			out[fd.JSONName()] = arr
		default:
			out[fd.JSONName()] = resolve(fd, v)
		}
		return err == nil
	})
	return out, err
}

func badFloat(f float64) bool { return math.IsNaN(f) || math.IsInf(f, 0) }

func isBadFloat64(x any) bool {
	f, ok := x.(float64)
	return ok && badFloat(f)
}

// checkFloats refuses a NaN or infinite number, or nesting deeper than
// policy.MaxProtoDepth, in an AsMap value.
func checkFloats(x any, depth int) error {
	if depth > policy.MaxProtoDepth {
		return errors.New("message nesting too deep")
	}
	switch v := x.(type) {
	case float64:
		if badFloat(v) {
			return fmt.Errorf("%v is not a number", v)
		}
	case map[string]any:
		for _, e := range v {
			if err := checkFloats(e, depth+1); err != nil {
				return err
			}
		}
	case []any:
		for _, e := range v {
			if err := checkFloats(e, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

func toAnySlice(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}
