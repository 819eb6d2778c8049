package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/control"
	"github.com/agentauthz/agentauthz/internal/revocation"
	"github.com/agentauthz/agentauthz/internal/server"
	"github.com/agentauthz/agentauthz/policies"
)

type serveFlags struct {
	configFile   string
	trustBundles []string
	sources      []string
	crls         []string
	watches      []string
	noRevocation []string
}

func newServeCmd() *cobra.Command { return newServeCmdWith(runServe) }

// newServeCmdWith is serve with run in place of runServe, so tests can see
// the configuration that the flags and file resolve to.
func newServeCmdWith(run func(context.Context, io.Writer, config.Config) error) *cobra.Command {
	var f serveFlags
	c := config.Config{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the ext_authz decision service",
		Long: `Run the ext_authz decision service: gRPC on --grpc-addr, health, readiness, metrics and
public keys over HTTP on --http-addr.

With --dev it creates a dev CA (trust domain dev.agentauthz.local) and sample agents under
--data-dir on first start, trusts that CA, publishes its revocations in-process (so
"agentauthz agent revoke" on the same --data-dir takes effect within about a second), and
prints check commands to try.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := serveConfig(cmd.Flags(), f, c)
			if err != nil {
				return err
			}
			return run(cmd.Context(), cmd.ErrOrStderr(), cfg)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.configFile, "config", "", "YAML configuration file (see docs/configuration.md)")
	fl.StringVar(&c.DataDir, "data-dir", "", "state directory: decision log, keys, dev CA")
	fl.StringVar(&c.GRPC.Addr, "grpc-addr", "", "ext_authz gRPC listen address (default "+config.DefaultGRPCAddr+", with --dev "+config.DefaultDevGRPCAddr+")")
	fl.StringVar(&c.HTTP.Addr, "http-addr", "", "health, metrics and keys HTTP listen address (default "+config.DefaultHTTPAddr+", with --dev "+config.DefaultDevHTTPAddr+")")
	fl.StringVar(&c.Policy.Dir, "policies", "", "directory of .rego and data.json/data.yaml files (default "+config.DefaultPoliciesDir+"; with --dev the built-in policies)")
	fl.StringVar(&c.Policy.Path, "policy-path", config.DefaultPolicyPath, "rule to query, as opa-envoy-plugin's path")
	fl.StringVar(&c.Policy.Bundle, "bundle", "", "OPA bundle file or URL (instead of --policies)")
	fl.StringVar(&c.Policy.BundleVerificationKey, "bundle-verification-key", "", "PEM public key that bundles must be signed with")
	fl.StringArrayVar(&f.trustBundles, "trust-bundle", nil, "TRUST_DOMAIN=PEM_FILE, one CA bundle per tenant (repeatable)")
	fl.StringArrayVar(&f.crls, "crl", nil, "TRUST_DOMAIN=FILE or TRUST_DOMAIN=URL, a CRL of that tenant's CA (repeatable)")
	fl.StringArrayVar(&f.watches, "revocation-watch", nil, "TRUST_DOMAIN=URL, the revocation push channel of agentauthz ca serve (URL ending in /v1/watch)")
	fl.StringArrayVar(&f.noRevocation, "no-revocation", nil, "TRUST_DOMAIN: run that tenant WITHOUT revocation checking (its revoked certificates are accepted); every tenant needs a --crl, a --revocation-watch or this (repeatable)")
	fl.StringArrayVar(&f.sources, "identity-source", nil, "identity sources in order: peer_certificate, xfcc, spiffe_id (repeatable)")
	fl.BoolVar(&c.Dev, "dev", false, "create and trust a dev CA with sample agents in --data-dir")
	fl.StringVar(&c.DecisionLog.Mode, "decision-log-mode", "sync", "sync (answer after the record is on disk) or async")
	fl.StringVar(&c.GRPC.TLS.CertFile, "grpc-tls-cert", "", "serve gRPC over TLS with this certificate")
	fl.StringVar(&c.GRPC.TLS.KeyFile, "grpc-tls-key", "", "key of --grpc-tls-cert")
	fl.StringVar(&c.GRPC.TLS.ClientCAFile, "grpc-tls-client-ca", "", "require client certificates from this CA (mTLS)")
	fl.StringVar(&c.ControlPlane.CAFile, "control-plane-ca", "", "operator CA that verifies an https control plane (its <data>/operator/ca.pem)")
	fl.StringVar(&c.ControlPlane.CertFile, "control-plane-cert", "", "this replica's certificate for the control plane (operator issue NAME --role replica)")
	fl.StringVar(&c.ControlPlane.KeyFile, "control-plane-key", "", "key of --control-plane-cert")
	fl.StringVar(&c.LogLevel, "log-level", "info", "trace, debug, info, warn or error")
	fl.StringVar(&c.LogFormat, "log-format", "auto", "auto, json or text")
	return cmd
}

// serveConfig merges defaults, the config file and the flags that were set.
func serveConfig(fl *pflag.FlagSet, f serveFlags, flags config.Config) (config.Config, error) {
	cfg := config.Config{}
	if f.configFile != "" {
		var err error
		if cfg, err = config.Load(f.configFile); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return cfg, fmt.Errorf("--config %s: no such file", f.configFile)
			}
			return cfg, withHint(err, "every key is documented in docs/configuration.md")
		}
	}
	set := func(name string, dst *string, v string) {
		if fl.Changed(name) || *dst == "" {
			*dst = v
		}
	}
	set("data-dir", &cfg.DataDir, flags.DataDir)
	set("grpc-addr", &cfg.GRPC.Addr, flags.GRPC.Addr)
	set("http-addr", &cfg.HTTP.Addr, flags.HTTP.Addr)
	if fl.Changed("bundle") {
		cfg.Policy.Bundle, cfg.Policy.Dir, cfg.Policy.Builtin = flags.Policy.Bundle, "", false
	}
	if fl.Changed("policies") {
		cfg.Policy.Dir, cfg.Policy.Bundle, cfg.Policy.Builtin = flags.Policy.Dir, "", false
	}
	set("policy-path", &cfg.Policy.Path, flags.Policy.Path)
	set("bundle-verification-key", &cfg.Policy.BundleVerificationKey, flags.Policy.BundleVerificationKey)
	set("decision-log-mode", &cfg.DecisionLog.Mode, flags.DecisionLog.Mode)
	set("grpc-tls-cert", &cfg.GRPC.TLS.CertFile, flags.GRPC.TLS.CertFile)
	set("grpc-tls-key", &cfg.GRPC.TLS.KeyFile, flags.GRPC.TLS.KeyFile)
	set("grpc-tls-client-ca", &cfg.GRPC.TLS.ClientCAFile, flags.GRPC.TLS.ClientCAFile)
	set("control-plane-ca", &cfg.ControlPlane.CAFile, flags.ControlPlane.CAFile)
	set("control-plane-cert", &cfg.ControlPlane.CertFile, flags.ControlPlane.CertFile)
	set("control-plane-key", &cfg.ControlPlane.KeyFile, flags.ControlPlane.KeyFile)
	set("log-level", &cfg.LogLevel, flags.LogLevel)
	set("log-format", &cfg.LogFormat, flags.LogFormat)
	if fl.Changed("dev") {
		cfg.Dev = flags.Dev
	}
	if len(f.sources) > 0 {
		cfg.Identity.Sources = f.sources
	}
	for _, tb := range f.trustBundles {
		td, file, ok := strings.Cut(tb, "=")
		if !ok || td == "" || file == "" {
			return cfg, withHint(fmt.Errorf("--trust-bundle %q is not TRUST_DOMAIN=PEM_FILE", tb), "e.g. --trust-bundle acme.example=/etc/agentauthz/acme-ca.pem")
		}
		cfg.TrustBundles = append(cfg.TrustBundles, config.TrustBundle{TrustDomain: td, File: file})
	}
	if err := addRevocationFlags(&cfg, f); err != nil {
		return cfg, err
	}
	if cfg.DataDir == "" && cfg.Dev {
		cfg.DataDir = ".agentauthz"
	}
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		return cfg, withHint(fmt.Errorf("invalid configuration:\n%w", err), "every key is documented in docs/configuration.md")
	}
	return cfg, nil
}

// addRevocationFlags gives the tenants named by --crl and --revocation-watch
// their sources, on top of what the config file lists. A flag for a trust
// domain that no --trust-bundle or config file names is an error, not a
// tenant of its own.
func addRevocationFlags(cfg *config.Config, f serveFlags) error {
	tenant := func(flag, v, want, example string) (*config.TrustBundle, string, error) {
		td, src, ok := strings.Cut(v, "=")
		if !ok || td == "" || src == "" {
			return nil, "", withHint(fmt.Errorf("--%s %q is not TRUST_DOMAIN=%s", flag, v, want), "e.g. --%s %s", flag, example)
		}
		for i := range cfg.TrustBundles {
			if cfg.TrustBundles[i].TrustDomain == td {
				return &cfg.TrustBundles[i], src, nil
			}
		}
		return nil, "", withHint(fmt.Errorf("--%s %s: no tenant %q", flag, v, td), "give its CA first: --trust-bundle %s=CA_PEM_FILE", td)
	}
	for _, v := range f.crls {
		tb, src, err := tenant("crl", v, "FILE or TRUST_DOMAIN=URL", "acme.example=acme.crl")
		if err != nil {
			return err
		}
		if strings.HasPrefix(src, "http://") || strings.HasPrefix(src, "https://") {
			tb.Revocation.CRLURLs = append(tb.Revocation.CRLURLs, src)
		} else {
			tb.Revocation.CRLFiles = append(tb.Revocation.CRLFiles, src)
		}
	}
	for _, v := range f.watches {
		tb, src, err := tenant("revocation-watch", v, "URL", "acme.example=http://127.0.0.1:9193/v1/watch")
		if err != nil {
			return err
		}
		if tb.Revocation.WatchURL != "" && tb.Revocation.WatchURL != src {
			return fmt.Errorf("--revocation-watch %s: tenant %s already watches %s (one push channel per tenant)", v, tb.TrustDomain, tb.Revocation.WatchURL)
		}
		tb.Revocation.WatchURL = src
	}
	for _, td := range f.noRevocation {
		i := slices.IndexFunc(cfg.TrustBundles, func(tb config.TrustBundle) bool { return tb.TrustDomain == td })
		if i < 0 {
			return withHint(fmt.Errorf("--no-revocation %s: no tenant %q", td, td), "give its CA first: --trust-bundle %s=CA_PEM_FILE", td)
		}
		cfg.TrustBundles[i].Revocation.Disabled = true
	}
	return nil
}

func newLogger(cfg config.Config, w io.Writer) hclog.Logger {
	jsonFormat := cfg.LogFormat == "json"
	if cfg.LogFormat == "auto" {
		f, ok := w.(*os.File)
		jsonFormat = !ok || !term.IsTerminal(int(f.Fd()))
	}
	return hclog.New(&hclog.LoggerOptions{
		Name:       "agentauthz",
		Level:      hclog.LevelFromString(cfg.LogLevel),
		Output:     w,
		JSONFormat: jsonFormat,
		TimeFormat: time.RFC3339Nano,
	})
}

// Defaults of the GOGC and GOMEMLIMIT settings for serve (docs/configuration.md,
// "Environment"; why and what they cost: docs/performance.md, "Settings that
// matter"). The live heap is small, so Go's GOGC=100 collects too often; the
// soft limit keeps a large live heap (a big CRL) from growing by GOGC. The
// environment variables, when set, win.
const (
	serveGCPercent  = 400
	serveMemoryGoal = 256 << 20
)

func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(serveGCPercent)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(serveMemoryGoal)
	}
}

func runServe(ctx context.Context, stderr io.Writer, cfg config.Config) error {
	tuneGC()
	logger := newLogger(cfg, stderr)
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	var dev *devMode
	if cfg.Dev {
		var err error
		if dev, err = startDev(&cfg, logger); err != nil {
			return err
		}
		defer dev.Close()
	}
	policySource := cfg.Policy.Dir
	switch {
	case cfg.Policy.Builtin:
		dir, err := os.MkdirTemp("", "agentauthz-policies-")
		if err != nil {
			return fmt.Errorf("built-in policies: %w", err)
		}
		defer os.RemoveAll(dir)
		if err := policies.WriteTo(dir); err != nil {
			return err
		}
		cfg.Policy.Dir, cfg.Policy.Builtin = dir, false
		policySource = policies.Embedded
	case cfg.Policy.Bundle != "":
		policySource = "bundle " + cfg.Policy.Bundle
	}
	logger.Info("policy", "source", policySource, "path", cfg.Policy.Path)
	components, err := server.Assemble(cfg, logger)
	var noSource *revocation.NoSourceError
	if errors.As(err, &noSource) {
		td := noSource.Tenant
		return withHint(err, "give it a source: --crl %s=CRL_FILE_OR_URL or --revocation-watch %s=URL; or, to accept its revoked certificates, --no-revocation %s", td, td, td)
	}
	if err != nil {
		return err
	}
	grpcLis, err := net.Listen("tcp", cfg.GRPC.Addr)
	if err != nil {
		components.Close()
		return withHint(fmt.Errorf("grpc listener: %w", err), "another process holds %s; pass --grpc-addr", cfg.GRPC.Addr)
	}
	httpLis, err := net.Listen("tcp", cfg.HTTP.Addr)
	if err != nil {
		grpcLis.Close()
		components.Close()
		return withHint(fmt.Errorf("http listener: %w", err), "another process holds %s; pass --http-addr", cfg.HTTP.Addr)
	}
	if dev != nil {
		if err := dev.attach(&components, stderr, grpcLis.Addr().String()); err != nil {
			grpcLis.Close()
			httpLis.Close()
			components.Close()
			return err
		}
	}
	srv, err := server.New(cfg, components, logger)
	if err != nil {
		grpcLis.Close()
		httpLis.Close()
		components.Close()
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	return srv.Serve(ctx, grpcLis, httpLis, hup)
}

// devMode is what `serve --dev` adds: the dev CA and sample agents, trusted
// as a tenant, with their revocations published in-process.
type devMode struct {
	env     *ca.DevEnv
	dataDir string
	// rev publishes the inventory's revocations to this process, as
	// `ca serve` does for replicas; nil when the configuration already has a
	// trust bundle for the dev trust domain (its revocation is the user's).
	rev *revocationServer
	// revMetrics holds rev's collectors until attach registers them on
	// serve's registry, which server.Assemble creates after startDev.
	revMetrics *lateRegisterer
}

// startDev prepares the dev environment in cfg.DataDir and, unless cfg
// already trusts the dev trust domain, adds it as a tenant whose revocation
// watch_url is a publisher over the data dir's inventory on an ephemeral
// loopback port. Close releases what it opened.
func startDev(cfg *config.Config, logger hclog.Logger) (*devMode, error) {
	env, err := ca.EnsureDev(cfg.DataDir, time.Now())
	if err != nil {
		return nil, fmt.Errorf("dev environment: %w", err)
	}
	d := &devMode{env: env, dataDir: cfg.DataDir}
	if hasTrustDomain(*cfg, env.TrustDomain) {
		return d, nil
	}
	d.revMetrics = &lateRegisterer{}
	d.rev, err = newRevocationServer(cfg.DataDir, "127.0.0.1:0", logger.Named("revocation-publisher"), d.revMetrics, nil,
		revocation.DefaultGenerationPoll, revocation.DefaultHeartbeat, controlOptions{})
	if err != nil {
		return nil, fmt.Errorf("dev revocation publisher: %w", err)
	}
	if !cfg.ControlPlane.Enabled() {
		// This process is a replica of its own control plane, over the
		// same mTLS as any other: a replica certificate, made afresh.
		name := "dev-replica"
		if control.ValidateName(cfg.DecisionLog.Name) == nil {
			name = cfg.DecisionLog.Name // the certificate names the log it may ship
		}
		if cfg.ControlPlane, err = devReplicaCert(cfg.DataDir, d.rev.op, name); err != nil {
			d.rev.Close()
			return nil, fmt.Errorf("dev replica certificate: %w", err)
		}
		if name == cfg.DecisionLog.Name {
			cfg.ControlPlane.URL = d.rev.URL()
			// The control plane stops with this process: do not wait
			// long for it at shutdown (the next start ships the rest).
			cfg.ControlPlane.ShipDrainTimeout = config.Duration(2 * time.Second)
		} else {
			logger.Warn("dev: records are not shipped to the in-process control plane: the log name is not a valid replica name",
				"log_name", cfg.DecisionLog.Name)
		}
	}
	cfg.TrustBundles = append(cfg.TrustBundles, config.TrustBundle{
		TrustDomain: env.TrustDomain, File: env.BundlePath,
		// As a replica of `ca serve`: the stream, and its /v1/crl/<td>
		// while the stream is down. Stale data denies, as for any tenant.
		Revocation: config.Revocation{WatchURL: d.rev.URL() + "/v1/watch"},
	})
	cfg.ApplyDefaults()
	return d, nil
}

// devHintWait bounds how long the dev hints wait for readiness.
const devHintWait = 10 * time.Second

// attach registers the publisher's metrics on the server's registry (so
// serve's /metrics has them, as `ca serve`'s has), runs the publisher with
// the server's background loops (they stop after the gRPC drain) and prints
// the dev hints once the server is ready, so the printed commands answer as
// printed.
func (d *devMode) attach(c *server.Components, w io.Writer, grpcAddr string) error {
	if d.rev != nil {
		if c.Registry != nil {
			if err := d.revMetrics.registerOn(c.Registry); err != nil {
				return fmt.Errorf("dev revocation publisher metrics: %w", err)
			}
		}
		c.Loops = append(c.Loops, d.rev.Run)
	}
	ready := c.Ready
	c.Loops = append(c.Loops, func(ctx context.Context) error {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		deadline := time.Now().Add(devHintWait)
		for !allReady(ready) && time.Now().Before(deadline) {
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
			}
		}
		printDevHints(w, d.env, d.dataDir, grpcAddr)
		if d.rev != nil && !d.rev.plain {
			fmt.Fprintf(w, "Console: open the link that \"%s operator login-link dev --role admin --data-dir %s --server %s\" prints.\n\n",
				devExe(), d.dataDir, d.rev.URL())
		}
		return nil
	})
	return nil
}

// lateRegisterer is a prometheus.Registerer that keeps what is registered
// until registerOn hands it to the real registry: the dev publisher is made
// before serve's registry exists. Its metric names
// (agentauthz_revocation_publisher_*) differ from the replica side's
// agentauthz_revocation_*, so both live in one registry without a label to
// tell them apart.
type lateRegisterer struct {
	mu sync.Mutex
	cs []prometheus.Collector
}

func (l *lateRegisterer) Register(c prometheus.Collector) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cs = append(l.cs, c)
	return nil
}

func (l *lateRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		_ = l.Register(c)
	}
}

func (l *lateRegisterer) Unregister(c prometheus.Collector) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, have := range l.cs {
		if have == c {
			l.cs = append(l.cs[:i], l.cs[i+1:]...)
			return true
		}
	}
	return false
}

// registerOn registers everything held on r, stopping at the first error
// (a name r already has).
func (l *lateRegisterer) registerOn(r prometheus.Registerer) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.cs {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// Close releases the publisher's inventory and listener.
func (d *devMode) Close() error {
	if d.rev == nil {
		return nil
	}
	return d.rev.Close()
}

func allReady(checks []server.ReadyCheck) bool {
	for _, rc := range checks {
		if rc.Check() != nil {
			return false
		}
	}
	return true
}

func hasTrustDomain(cfg config.Config, td string) bool {
	for _, tb := range cfg.TrustBundles {
		if tb.TrustDomain == td {
			return true
		}
	}
	return false
}

// devExe is how the dev hints name the binary.
func devExe() string {
	if exe := os.Args[0]; strings.Contains(exe, string(filepath.Separator)) {
		return exe
	}
	return "agentauthz"
}

// printDevHints prints one check line that is allowed, one that is denied,
// and the revoke command that turns the allowed one into a denial.
func printDevHints(w io.Writer, dev *ca.DevEnv, dataDir, addr string) {
	exe := devExe()
	certOf := func(id string) string {
		for _, a := range dev.Agents {
			if a.ID == id {
				return a.CertPath
			}
		}
		return ""
	}
	if strings.HasPrefix(addr, "[::]") || strings.HasPrefix(addr, "0.0.0.0") {
		addr = "127.0.0.1" + addr[strings.LastIndexByte(addr, ':'):]
	}
	fmt.Fprintf(w, `
agentauthz dev mode: CA for %s and sample agents in %s
Try, from another terminal:
  allowed: %s check --addr %s --cert %s --method POST --path /v1/payments
  denied:  %s check --addr %s --cert %s --method POST --path /v1/payments
  revoke:  %s agent revoke --data-dir %s --trust-domain %s payments-agent
Within about a second of the revoke, the allowed check is denied (certificate_revoked);
the other agents are untouched. Restarting serve --dev issues payments-agent again.

`, dev.TrustDomain, filepath.Dir(certOf("payments-agent")),
		exe, addr, certOf("payments-agent"),
		exe, addr, certOf("sanctions-screener"),
		exe, dataDir, dev.TrustDomain)
}

// devReplicaCert issues the dev replica's certificate, named after its log,
// into <data>/operator/dev-replica/, replacing an earlier one.
func devReplicaCert(dataDir string, op *control.OperatorCA, name string) (config.ControlPlane, error) {
	dir := filepath.Join(control.OperatorDir(dataDir), "dev-replica")
	for _, ext := range []string{".pem", ".key"} {
		if err := os.Remove(filepath.Join(dir, name+ext)); err != nil && !os.IsNotExist(err) {
			return config.ControlPlane{}, err
		}
	}
	is, err := op.Issue(name, control.RoleReplica, control.DefaultOperatorTTL)
	if err != nil {
		return config.ControlPlane{}, err
	}
	certPath, keyPath, err := control.WriteIssued(dir, name, is)
	if err != nil {
		return config.ControlPlane{}, err
	}
	return config.ControlPlane{CAFile: control.OperatorCAPath(dataDir), CertFile: certPath, KeyFile: keyPath}, nil
}
