package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/control"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/extauthz"
	"github.com/agentauthz/agentauthz/internal/extproc"
	"github.com/agentauthz/agentauthz/internal/identity"
	"github.com/agentauthz/agentauthz/internal/policy"
	"github.com/agentauthz/agentauthz/internal/revocation"
)

// Assemble builds the decision path from a validated configuration. The
// returned Components own open resources (the decision log); they are
// released by the server's closers, or by Close on the error path.
func Assemble(cfg config.Config, logger hclog.Logger) (c Components, err error) {
	reg := NewRegistry()
	c.Registry = reg
	c.Handlers = map[string]http.Handler{}
	defer func() {
		if err != nil {
			_ = c.Close()
		}
	}()

	engine, err := policy.New(policy.Config{
		Dir:                   cfg.Policy.Dir,
		Path:                  cfg.Policy.Path,
		Bundle:                cfg.Policy.Bundle,
		BundleVerificationKey: cfg.Policy.BundleVerificationKey,
		BundlePollInterval:    cfg.Policy.BundlePollInterval.D(),
		EvalTimeout:           cfg.Policy.EvalTimeout.D(),
		DecisionCache:         decisionCacheSize(cfg.Policy.DecisionCache),
		TimeGranularity:       cfg.Policy.DecisionCache.TimeGranularity.D(),
		Logger:                logger,
		Registerer:            reg,
	})
	if err != nil {
		return c, fmt.Errorf("policy: %w", err)
	}
	c.Loops = append(c.Loops, engine.Run)
	c.Ready = append(c.Ready, ReadyCheck{Name: "policy", Check: func() error {
		if !engine.Ready() {
			return errors.New("no policy compiled yet")
		}
		return nil
	}})

	sources := make([]identity.Source, 0, len(cfg.Identity.Sources))
	for _, s := range cfg.Identity.Sources {
		src, err := identity.ParseSource(s)
		if err != nil {
			return c, err
		}
		sources = append(sources, src)
	}
	bundles, tenants, err := loadTrust(cfg)
	if err != nil {
		return c, err
	}
	verifier, err := identity.NewVerifier(identity.Config{
		Sources:    sources,
		Bundles:    bundles,
		Registry:   engine,
		CacheSize:  cfg.Identity.CacheSize,
		Registerer: reg,
	})
	if err != nil {
		return c, fmt.Errorf("identity: %w", err)
	}

	var httpClient *http.Client
	if cfg.ControlPlane.Enabled() {
		tc, err := controlPlaneTLS(cfg.ControlPlane)
		if err != nil {
			return c, err
		}
		httpClient = revocation.NewHTTPClient(tc)
	}
	revoked, err := revocation.New(revocation.Config{Tenants: tenants, Logger: logger.Named("revocation"), Registerer: reg,
		StateDir:   filepath.Join(cfg.DataDir, "revocation"),
		HTTPClient: httpClient,
		// Restrictions from the control plane's signed watch events;
		// a refused overlay is logged and counted by the engine, and the
		// previous restrictions stay in force.
		OnRestrictions: func(tenant string, r json.RawMessage) { _ = engine.SetRestrictions(tenant, r) },
	})
	if err != nil {
		return c, err
	}
	c.Loops = append(c.Loops, revoked.Run)
	c.Ready = append(c.Ready, ReadyCheck{Name: "revocation", Check: func() error {
		if !revoked.Ready() {
			return errors.New("a revocation source has not loaded yet")
		}
		return nil
	}})
	c.Notes = append(c.Notes, func() []string { return revocationNotes(revoked.Status()) },
		func() []string { return pushNotes(revoked.PushStatuses(), time.Now()) })

	mode, err := decisionlog.ParseMode(cfg.DecisionLog.Mode)
	if err != nil {
		return c, err
	}
	dlog, err := decisionlog.Open(decisionlog.Options{
		Dir:             cfg.DecisionLog.Dir,
		KeyDir:          filepath.Join(cfg.DataDir, "keys"),
		Name:            cfg.DecisionLog.Name,
		Mode:            mode,
		AsyncBuffer:     cfg.DecisionLog.AsyncBuffer,
		SegmentMaxBytes: cfg.DecisionLog.SegmentMaxBytes,
		SegmentMaxAge:   cfg.DecisionLog.SegmentMaxAge.D(),
		Logger:          logger.Named("decisionlog"),
		Registerer:      reg,
	})
	if err != nil {
		return c, fmt.Errorf("decision log: %w", err)
	}
	c.Closers = append(c.Closers, dlog.Close)
	if cp := cfg.ControlPlane; cp.URL != "" {
		tc, err := controlPlaneTLS(cp)
		if err != nil {
			return c, err
		}
		shipper, err := control.NewShipper(control.ShipperConfig{
			LogDir: cfg.DecisionLog.Dir, Name: cfg.DecisionLog.Name, Keys: dlog.PublicKeys,
			URL: cp.URL, Client: &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: tc}},
			Logger: logger.Named("shipper"), Registerer: reg, DrainTimeout: cp.ShipDrainTimeout.D(),
		})
		if err != nil {
			return c, err
		}
		// A loop: it stops after the gRPC drain, so what it ships last
		// includes every answered decision.
		c.Loops = append(c.Loops, shipper.Run)
	}
	c.Ready = append(c.Ready, ReadyCheck{Name: "decision_log", Check: dlog.Err})
	jwks := dlog.JWKSHandler()
	c.Handlers["GET /v1/keys"] = jwks
	c.Handlers["GET /.well-known/jwks.json"] = jwks
	// The latest signed checkpoint, for witnesses and monitors: it names
	// the tree size and root, never a record.
	c.Handlers["GET /checkpoint"] = dlog.CheckpointHandler()

	var recorder extauthz.Recorder = dlog
	if rs := cfg.ResponseSigning; rs.Disabled {
		logger.Warn("response signing is off (response_signing.disabled): ext_proc is not served, responses are not signed")
	} else {
		table := extproc.NewTable(extproc.TableOptions{Size: rs.MaxPending, TTL: rs.DecisionTTL.D(),
			Logger: logger.Named("extproc"), Registerer: reg})
		recorder = extproc.NoteAllowed(dlog, table)
		proc, err := extproc.New(extproc.Options{
			Decisions:      table,
			Signer:         dlog.ResponseSigner,
			Log:            extproc.DecisionLog{Log: dlog},
			MaxBodyBytes:   rs.MaxBodyBytes,
			MaxHeaderBytes: rs.MaxHeaderBytes,
			Logger:         logger.Named("extproc"),
			Metrics:        extproc.NewMetrics(reg),
		})
		if err != nil {
			return c, err
		}
		c.ExternalProcessor = proc
	}

	svc, err := extauthz.New(extauthz.Options{
		Identifier: verifier,
		Revocation: revoked,
		Policy:     policyAdapter{engine},
		Recorder:   recorder,
		Logger:     logger.Named("extauthz"),
		Metrics:    extauthz.NewMetrics(reg),
		Timeout:    cfg.GRPC.CheckTimeout.D(),
	})
	if err != nil {
		return c, err
	}
	c.Authorization = svc

	trust := newTrustReloader(cfg, verifier, revoked, logger.Named("trust"), reg)
	c.Loops = append(c.Loops, trust.Run)
	c.Reload = func() error { return errors.Join(engine.Reload(), trust.Reload()) }
	return c, nil
}

// loadTrust reads every trust bundle and the revocation sources of each tenant.
func loadTrust(cfg config.Config) ([]identity.Bundle, map[string]revocation.TenantConfig, error) {
	var bundles []identity.Bundle
	tenants := map[string]revocation.TenantConfig{}
	var errs []error
	for _, tb := range cfg.TrustBundles {
		profile, err := identity.ParseProfile(tb.Profile)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		b, err := identity.LoadBundle(tb.TrustDomain, tb.File, profile)
		if err != nil {
			errs = append(errs, fmt.Errorf("trust bundle %s: %w", tb.TrustDomain, err))
			continue
		}
		bundles = append(bundles, b)
		r := tb.Revocation
		tenants[tb.TrustDomain] = revocation.TenantConfig{
			CAs:          b.Roots,
			CRLFiles:     r.CRLFiles,
			CRLURLs:      r.CRLURLs,
			WatchURL:     r.WatchURL,
			PollInterval: r.PollInterval.D(),
			Grace:        r.Grace.D(),
			Disabled:     r.Disabled,
		}
	}
	return bundles, tenants, errors.Join(errs...)
}

// revocationNotes lists, for /readyz, every tenant that is not checked
// (opt-out) or has no revocation data (its agents are denied
// revocation_status_unknown), so one tenant's problem is visible without
// taking the others down.
func revocationNotes(st map[string]revocation.TenantStatus) []string {
	var out []string
	for _, td := range slices.Sorted(maps.Keys(st)) {
		if s := st[td]; s.Disabled || !s.Ready {
			out = append(out, "revocation: tenant "+td+": "+s.Detail)
		}
	}
	return out
}

func decisionCacheSize(c config.DecisionCache) int {
	if c.Disabled {
		return 0
	}
	return c.MaxEntries
}

// policyAdapter turns the engine's result into the Envoy shapes extauthz
// answers with.
type policyAdapter struct{ e *policy.Engine }

func (p policyAdapter) Decide(ctx context.Context, req *authv3.CheckRequest, agent *identity.Agent) (extauthz.Verdict, error) {
	r, err := p.e.Eval(ctx, req, agent)
	if r == nil {
		r = &policy.Result{}
	}
	v := extauthz.Verdict{Operation: r.Operation, Revision: r.Revision}
	if m := r.MCP; m != nil {
		v.MCP = &extauthz.MCPVerdict{Call: m.Call, Operations: m.Operations, Decisive: m.Decisive, Tools: m.Tools}
	}
	if errors.Is(err, policy.ErrMCPInvalid) {
		return v, fmt.Errorf("%w: %w", extauthz.ErrInvalidJSONRPC, err)
	}
	if errors.Is(err, policy.ErrInput) {
		return v, fmt.Errorf("%w: %w", extauthz.ErrRequestParse, err)
	}
	if err != nil {
		return v, err
	}
	v.Allowed, v.Reason, v.HTTPStatus = r.Allowed, r.Reason, r.HTTPStatus
	v.Body, v.HasBody = r.Body, r.HasBody
	action := corev3.HeaderValueOption_HeaderAppendAction(corev3.HeaderValueOption_HeaderAppendAction_value[r.HeaderAppendAction])
	v.Headers = headerOptions(r.Headers, action)
	v.ResponseHeadersToAdd = headerOptions(r.ResponseHeadersToAdd, action)
	v.RequestHeadersToRemove = r.RequestHeadersToRemove
	v.QueryParametersToRemove = r.QueryParametersToRemove
	for _, q := range r.QueryParametersToSet {
		v.QueryParametersToSet = append(v.QueryParametersToSet, &corev3.QueryParameter{Key: q.Key, Value: q.Value})
	}
	if r.DynamicMetadata != nil {
		md, err := structpb.NewStruct(r.DynamicMetadata)
		if err != nil {
			return v, fmt.Errorf("dynamic_metadata: %w", err)
		}
		v.DynamicMetadata = md
	}
	return v, nil
}

// headerOptions sends the policy's headers as opa-envoy-plugin does: one
// option per value, append and append_action left unset (Envoy's default,
// APPEND_IF_EXISTS_OR_ADD) unless the decision's header_append_action
// chose another action.
func headerOptions(hs []policy.Header, action corev3.HeaderValueOption_HeaderAppendAction) []*corev3.HeaderValueOption {
	if len(hs) == 0 {
		return nil
	}
	opts := make([]corev3.HeaderValueOption, len(hs))
	vals := make([]corev3.HeaderValue, len(hs))
	out := make([]*corev3.HeaderValueOption, len(hs))
	for i, h := range hs {
		vals[i] = corev3.HeaderValue{Key: h.Key, Value: h.Value}
		opts[i].Header, opts[i].AppendAction = &vals[i], action
		out[i] = &opts[i]
	}
	return out
}

// pushNotes says, for /readyz, which tenants' push channels are down or
// stale: the replica keeps deciding with the last revocations and
// restrictions it verified (fail closed: it never forgets a quarantine).
func pushNotes(st []revocation.PushStatus, now time.Time) []string {
	var out []string
	for _, p := range st {
		switch {
		case p.Applied.IsZero():
			out = append(out, fmt.Sprintf("control_plane %s: no signed state received yet", p.Tenant))
		case !p.Connected && p.Restored:
			out = append(out, fmt.Sprintf("control_plane %s: disconnected; keeping the restrictions and agent revocations verified %s ago, saved before the restart",
				p.Tenant, now.Sub(p.Applied).Round(time.Second)))
		case !p.Connected:
			out = append(out, fmt.Sprintf("control_plane %s: disconnected; keeping the restrictions and agent revocations verified %s ago",
				p.Tenant, now.Sub(p.Applied).Round(time.Second)))
		case now.After(p.Expires):
			out = append(out, fmt.Sprintf("control_plane %s: signed state expired %s ago; keeping the last restrictions and agent revocations",
				p.Tenant, now.Sub(p.Expires).Round(time.Second)))
		}
	}
	return out
}

// PolicyAdapter is the policy step of the decision path over e, for callers
// that drive extauthz outside a server (policy simulation).
func PolicyAdapter(e *policy.Engine) extauthz.Policy { return policyAdapter{e} }

// controlPlaneTLS is the replica's client side of the control plane's mTLS.
// The certificate is read again at every handshake, so a renewed replica
// certificate is used without a restart.
func controlPlaneTLS(cp config.ControlPlane) (*tls.Config, error) {
	caPEM, err := os.ReadFile(cp.CAFile)
	if err != nil {
		return nil, fmt.Errorf("control_plane.ca_file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("control_plane.ca_file: %s holds no PEM certificate", cp.CAFile)
	}
	if _, err := tls.LoadX509KeyPair(cp.CertFile, cp.KeyFile); err != nil {
		return nil, fmt.Errorf("control_plane: %w", err)
	}
	return &tls.Config{
		RootCAs:    pool,
		MinVersion: tls.VersionTLS13,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c, err := tls.LoadX509KeyPair(cp.CertFile, cp.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("control_plane: %w", err)
			}
			return &c, nil
		},
	}, nil
}
