package cli

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/mattn/go-isatty"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/server"
)

type serveFlags struct {
	configFile   string
	trustBundles []string
	sources      []string
}

func newServeCmd() *cobra.Command {
	var f serveFlags
	c := config.Config{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the ext_authz decision service",
		Long: `Run the ext_authz decision service: gRPC on --grpc-addr, health, readiness, metrics and
public keys over HTTP on --http-addr.

With --dev it creates a dev CA (trust domain dev.agentauthz.local) and sample agents under
--data-dir on first start, trusts that CA, and prints check commands to try.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := serveConfig(cmd.Flags(), f, c)
			if err != nil {
				return err
			}
			return runServe(cmd.Context(), cmd.ErrOrStderr(), cfg)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.configFile, "config", "", "YAML configuration file (see docs/configuration.md)")
	fl.StringVar(&c.DataDir, "data-dir", "", "state directory: decision log, keys, dev CA")
	fl.StringVar(&c.GRPC.Addr, "grpc-addr", config.DefaultGRPCAddr, "ext_authz gRPC listen address")
	fl.StringVar(&c.HTTP.Addr, "http-addr", config.DefaultHTTPAddr, "health, metrics and keys HTTP listen address")
	fl.StringVar(&c.Policy.Dir, "policies", config.DefaultPoliciesDir, "directory of .rego and data.json/data.yaml files")
	fl.StringVar(&c.Policy.Path, "policy-path", config.DefaultPolicyPath, "rule to query, as opa-envoy-plugin's path")
	fl.StringVar(&c.Policy.Bundle, "bundle", "", "OPA bundle file or URL (instead of --policies)")
	fl.StringVar(&c.Policy.BundleVerificationKey, "bundle-verification-key", "", "PEM public key that bundles must be signed with")
	fl.StringArrayVar(&f.trustBundles, "trust-bundle", nil, "TRUST_DOMAIN=PEM_FILE, one CA bundle per tenant (repeatable)")
	fl.StringArrayVar(&f.sources, "identity-source", nil, "identity sources in order: peer_certificate, xfcc, spiffe_id (repeatable)")
	fl.BoolVar(&c.Dev, "dev", false, "create and trust a dev CA with sample agents in --data-dir")
	fl.StringVar(&c.DecisionLog.Mode, "decision-log-mode", "sync", "sync (answer after the record is on disk) or async")
	fl.StringVar(&c.GRPC.TLS.CertFile, "grpc-tls-cert", "", "serve gRPC over TLS with this certificate")
	fl.StringVar(&c.GRPC.TLS.KeyFile, "grpc-tls-key", "", "key of --grpc-tls-cert")
	fl.StringVar(&c.GRPC.TLS.ClientCAFile, "grpc-tls-client-ca", "", "require client certificates from this CA (mTLS)")
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
		cfg.Policy.Bundle, cfg.Policy.Dir = flags.Policy.Bundle, ""
	}
	if cfg.Policy.Bundle == "" {
		set("policies", &cfg.Policy.Dir, flags.Policy.Dir)
	}
	set("policy-path", &cfg.Policy.Path, flags.Policy.Path)
	set("bundle-verification-key", &cfg.Policy.BundleVerificationKey, flags.Policy.BundleVerificationKey)
	set("decision-log-mode", &cfg.DecisionLog.Mode, flags.DecisionLog.Mode)
	set("grpc-tls-cert", &cfg.GRPC.TLS.CertFile, flags.GRPC.TLS.CertFile)
	set("grpc-tls-key", &cfg.GRPC.TLS.KeyFile, flags.GRPC.TLS.KeyFile)
	set("grpc-tls-client-ca", &cfg.GRPC.TLS.ClientCAFile, flags.GRPC.TLS.ClientCAFile)
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
	if cfg.DataDir == "" && cfg.Dev {
		cfg.DataDir = ".agentauthz"
	}
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		return cfg, withHint(fmt.Errorf("invalid configuration:\n%w", err), "every key is documented in docs/configuration.md")
	}
	return cfg, nil
}

func newLogger(cfg config.Config, w io.Writer) hclog.Logger {
	jsonFormat := cfg.LogFormat == "json"
	if cfg.LogFormat == "auto" {
		f, ok := w.(*os.File)
		jsonFormat = !ok || !isatty.IsTerminal(f.Fd())
	}
	return hclog.New(&hclog.LoggerOptions{
		Name:       "agentauthz",
		Level:      hclog.LevelFromString(cfg.LogLevel),
		Output:     w,
		JSONFormat: jsonFormat,
		TimeFormat: time.RFC3339Nano,
	})
}

// GC settings of serve. The live heap is a few MiB, so Go's default GOGC=100
// collects every ~80 Checks; 400 cut server CPU per Check by ~14 % in the load
// harness for ~10 MiB more heap (docs/performance.md). The soft memory limit
// keeps a large live heap (a million revoked serials: ~86 MiB) from growing 5×
// under that setting: 270 MiB RSS with it, 566 MiB without. GOGC and
// GOMEMLIMIT in the environment still win.
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
	var dev *ca.DevEnv
	if cfg.Dev {
		var err error
		if dev, err = ca.EnsureDev(cfg.DataDir, time.Now()); err != nil {
			return fmt.Errorf("dev environment: %w", err)
		}
		if !hasTrustDomain(cfg, dev.TrustDomain) {
			cfg.TrustBundles = append(cfg.TrustBundles, config.TrustBundle{TrustDomain: dev.TrustDomain, File: dev.BundlePath})
			cfg.ApplyDefaults()
		}
	}
	components, err := server.Assemble(cfg, logger)
	if err != nil {
		return err
	}
	srv, err := server.New(cfg, components, logger)
	if err != nil {
		return err
	}
	grpcLis, err := net.Listen("tcp", cfg.GRPC.Addr)
	if err != nil {
		return withHint(fmt.Errorf("grpc listener: %w", err), "another process holds %s; pass --grpc-addr", cfg.GRPC.Addr)
	}
	httpLis, err := net.Listen("tcp", cfg.HTTP.Addr)
	if err != nil {
		grpcLis.Close()
		return withHint(fmt.Errorf("http listener: %w", err), "another process holds %s; pass --http-addr", cfg.HTTP.Addr)
	}
	if dev != nil {
		printDevHints(stderr, dev, grpcLis.Addr().String())
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	return srv.Serve(ctx, grpcLis, httpLis, hup)
}

func hasTrustDomain(cfg config.Config, td string) bool {
	for _, tb := range cfg.TrustBundles {
		if tb.TrustDomain == td {
			return true
		}
	}
	return false
}

// printDevHints prints one check line that is allowed and one that is denied.
func printDevHints(w io.Writer, dev *ca.DevEnv, addr string) {
	exe := os.Args[0]
	if !strings.Contains(exe, string(filepath.Separator)) {
		exe = "agentauthz"
	}
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

`, dev.TrustDomain, filepath.Dir(certOf("payments-agent")),
		exe, addr, certOf("payments-agent"),
		exe, addr, certOf("sanctions-screener"))
}
