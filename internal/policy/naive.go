package policy

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/util"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/agentauthz/agentauthz/internal/identity"
)

// NaiveInput builds the input the way opa-envoy-plugin historically did:
// protojson.Marshal → JSON → map. It is the reference the fast BuildInput is
// tested against, and the baseline for benchmarks and the load harness.
func NaiveInput(req *authv3.CheckRequest, agent *identity.Agent, operation string) (map[string]any, error) {
	input := map[string]any{}
	attrs := map[string]any{}
	if a := req.GetAttributes(); a != nil {
		bs, err := protojson.Marshal(a)
		if err != nil {
			return nil, fmt.Errorf("%w: attributes: %w", ErrInput, err)
		}
		if err := util.UnmarshalJSON(bs, &attrs); err != nil {
			return nil, fmt.Errorf("%w: attributes: %w", ErrInput, err)
		}
	}
	input["attributes"] = attrs
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

func toAnySlice(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}
