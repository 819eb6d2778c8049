package loadtest

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"

	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/identity"
	"github.com/agentauthz/agentauthz/internal/policy"
)

// naive is the reference path a user would otherwise build: decode and
// verify the client certificate on every request (no cache), convert the
// whole CheckRequest into a map (opa-envoy-plugin's conversion), evaluate the same prepared
// policy with rego.EvalInput, and answer. No revocation, no record.
type naive struct {
	authv3.UnimplementedAuthorizationServer
	engine *policy.Engine
	pools  map[string]*x509.CertPool
}

func newNaive(cfg config.Config) (*naive, error) {
	engine, err := policy.New(policy.Config{Dir: cfg.Policy.Dir, Path: cfg.Policy.Path, Logger: hclog.NewNullLogger()})
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	n := &naive{engine: engine, pools: map[string]*x509.CertPool{}}
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
	r, err := n.engine.NaiveEval(ctx, req, agent)
	if err != nil || !r.Allowed {
		return naiveDeny(codes.PermissionDenied, typev3.StatusCode_Forbidden), nil
	}
	return &authv3.CheckResponse{
		Status:       &status.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}},
	}, nil
}

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
