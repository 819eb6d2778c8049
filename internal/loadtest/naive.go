package loadtest

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/hashicorp/go-hclog"
	opametrics "github.com/open-policy-agent/opa/v1/metrics"
	"github.com/open-policy-agent/opa/v1/rego"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"

	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/identity"
	"github.com/agentauthz/agentauthz/internal/policy"
)

// naive is the reference path a user would otherwise build: decode and
// verify the client certificate on every request (no cache), convert the
// whole CheckRequest into a map (opa-envoy-plugin's conversion, NaiveInput),
// evaluate the same policy, prepared once, with rego.EvalInput, and answer.
// No revocation, no record.
type naive struct {
	authv3.UnimplementedAuthorizationServer
	routes *policy.Engine // the route table only (input.operation)
	query  rego.PreparedEvalQuery
	pools  map[string]*x509.CertPool
}

func newNaive(cfg config.Config) (*naive, error) {
	routes, err := policy.New(policy.Config{Dir: cfg.Policy.Dir, Path: cfg.Policy.Path, Logger: hclog.NewNullLogger()})
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	path := cfg.Policy.Path
	if path == "" {
		path = policy.DefaultPath
	}
	// The policy directory as `opa run` loads it, without tests; no
	// metrics, as the engine evaluates.
	query, err := rego.New(
		rego.Query("data."+strings.ReplaceAll(strings.Trim(path, "/"), "/", ".")),
		rego.Load([]string{cfg.Policy.Dir}, func(_ string, info fs.FileInfo, depth int) bool {
			name := info.Name()
			if depth > 0 && (strings.HasPrefix(name, ".") || info.IsDir() && name == "testdata") {
				return true
			}
			return !info.IsDir() && strings.HasSuffix(name, "_test.rego")
		}),
	).PrepareForEval(context.Background())
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	n := &naive{routes: routes, query: query, pools: map[string]*x509.CertPool{}}
	for _, tb := range cfg.TrustBundles {
		b, err := identity.LoadBundle(tb.TrustDomain, tb.File, identity.ProfileNative)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		for _, r := range b.Roots {
			pool.AddCert(r)
		}
		n.pools[tb.TrustDomain] = pool
	}
	return n, nil
}

func (n *naive) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	agent, err := n.identify(req.GetAttributes())
	if err != nil {
		return naiveDeny(codes.Unauthenticated, typev3.StatusCode_Unauthorized), nil
	}
	if !n.allowed(ctx, req, agent) {
		return naiveDeny(codes.PermissionDenied, typev3.StatusCode_Forbidden), nil
	}
	return &authv3.CheckResponse{
		Status:       &status.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}},
	}, nil
}

// allowed evaluates the decision for req with its input built by
// NaiveInput; any error denies.
func (n *naive) allowed(ctx context.Context, req *authv3.CheckRequest, agent *identity.Agent) bool {
	h := req.GetAttributes().GetRequest().GetHttp()
	input, err := NaiveInput(req, agent, n.routes.Operation(h.GetMethod(), h.GetPath()))
	if err != nil {
		return false
	}
	rs, err := n.query.Eval(ctx, rego.EvalInput(input), rego.EvalMetrics(noMetrics))
	if err != nil || len(rs) != 1 || len(rs[0].Expressions) == 0 {
		return false
	}
	switch d := rs[0].Expressions[0].Value.(type) {
	case bool:
		return d
	case map[string]any:
		return d["allowed"] == true
	}
	return false
}

// noMetrics spares each evaluation OPA's metrics, as the engine does.
var noMetrics = opametrics.NoOp()

func naiveDeny(c codes.Code, s typev3.StatusCode) *authv3.CheckResponse {
	return &authv3.CheckResponse{
		Status: &status.Status{Code: int32(c)},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status: &typev3.HttpStatus{Code: s},
		}},
	}
}

// identify takes the peer certificate, else the rightmost XFCC element's
// certificate, and verifies it from scratch.
func (n *naive) identify(attrs *authv3.AttributeContext) (*identity.Agent, error) {
	certStr := attrs.GetSource().GetCertificate()
	src := identity.SourcePeerCertificate
	if certStr == "" {
		xfcc := attrs.GetRequest().GetHttp().GetHeaders()["x-forwarded-client-cert"]
		els, err := identity.ParseXFCC(xfcc)
		if err != nil {
			return nil, err
		}
		if len(els) == 0 || els[len(els)-1].Cert == "" {
			return nil, errors.New("no client certificate")
		}
		certStr, src = els[len(els)-1].Cert, identity.SourceXFCC
	}
	pemStr, err := url.QueryUnescape(certStr)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode([]byte(pemStr))
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, err
	}
	if len(cert.URIs) != 1 {
		return nil, errors.New("want one URI SAN")
	}
	td := cert.URIs[0].Host
	pool := n.pools[td]
	if pool == nil {
		return nil, errors.New("unknown trust domain")
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: time.Now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, err
	}
	agent, err := identity.ParseNative(cert, td)
	if err != nil {
		return nil, err
	}
	agent.Source = src
	return agent, nil
}
