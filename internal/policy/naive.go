package policy

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/url"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/agentauthz/agentauthz/internal/identity"
)

// NaiveInput builds the input the way opa-envoy-plugin does
// (envoyauth/request.go RequestToInput, v3): the CheckRequest through a
// reflective protobuf → map[string]any conversion (protoMap), Go values
// that OPA's ast.InterfaceToValue converts when the input is used. It is
// the reference the direct BuildInput is tested against, and the baseline
// for benchmarks and the load harness. It refuses what BuildInput
// deliberately refuses (a NaN or infinite float, nesting deeper than
// maxProtoDepth), so that the two are comparable everywhere else.
func NaiveInput(req *authv3.CheckRequest, agent *identity.Agent, operation string) (map[string]any, error) {
	// Depth -1: attributes is at depth 0, as in attributesValue.
	input, err := protoMap(req.ProtoReflect(), -1)
	if err != nil {
		return nil, fmt.Errorf("%w: attributes: %w", ErrInput, err)
	}
	if p := req.GetAttributes().GetSource().GetPrincipal(); p != "" {
		input["source_principal"] = p
	}
	h := req.GetAttributes().GetRequest().GetHttp()
	rawPath, rawQuery, _ := strings.Cut(h.GetPath(), "?")
	decoded, err := url.PathUnescape(rawPath)
	if err != nil {
		return nil, fmt.Errorf("%w: path: %w", ErrInput, err)
	}
	segs := strings.Split(strings.TrimLeft(decoded, "/"), "/")
	path := make([]any, len(segs))
	for i, s := range segs {
		path[i] = s
	}
	input["parsed_path"] = path
	vals, err := url.ParseQuery(rawQuery)
	if err != nil {
		return nil, fmt.Errorf("%w: query: %w", ErrInput, err)
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
	body, truncated, err := parseBody(h.GetHeaders(), h.GetBody(), h.GetRawBody())
	if err != nil {
		return nil, fmt.Errorf("%w: body: %w", ErrInput, err)
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

// NaiveEval is Eval with the input built by NaiveInput and passed as a Go
// map (rego.EvalInput), for comparison in benchmarks and the load harness.
func (e *Engine) NaiveEval(ctx context.Context, req *authv3.CheckRequest, agent *identity.Agent) (*Result, error) {
	s := e.cur.Load()
	if s == nil {
		return nil, ErrNotReady
	}
	h := req.GetAttributes().GetRequest().GetHttp()
	op := s.routes.Match(h.GetMethod(), h.GetPath())
	partial := &Result{Revision: s.revision, Operation: op}
	input, err := NaiveInput(req, agent, op)
	if err != nil {
		return partial, err
	}
	return e.evalState(ctx, s, rego.EvalInput(input), partial)
}

// protoMap is opa-envoy-plugin's protomap: populated fields under their
// JSON names, a Struct as AsMap, other messages recursively, scalars as
// their Go values (int64, uint32, EnumNumber, []byte, …).
func protoMap(m protoreflect.Message, depth int) (map[string]any, error) {
	if depth > maxProtoDepth {
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
// maxProtoDepth, in an AsMap value.
func checkFloats(x any, depth int) error {
	if depth > maxProtoDepth {
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
