// Package config owns the serve configuration: the YAML file format, its
// defaults, validation that reports every problem at once, and conversion to
// typed runtime values.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is the serve configuration file. Every key is documented here and in
// docs/configuration.md; an unknown key is an error.
type Config struct {
	// DataDir holds all state: dev CA, decision log, signing keys.
	DataDir string `yaml:"data_dir"`
	// Dev creates a dev CA and sample agents under DataDir on first start and
	// trusts that CA.
	Dev bool `yaml:"dev"`
	// LogLevel is trace, debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
	// LogFormat is auto (JSON unless stderr is a terminal), json or text.
	LogFormat string `yaml:"log_format"`

	GRPC         GRPC          `yaml:"grpc"`
	HTTP         HTTP          `yaml:"http"`
	Policy       Policy        `yaml:"policy"`
	Identity     Identity      `yaml:"identity"`
	TrustBundles []TrustBundle `yaml:"trust_bundles"`
	DecisionLog  DecisionLog   `yaml:"decision_log"`
	// ResponseSigning is the ext_proc processor that signs upstream
	// responses (docs/responses.md).
	ResponseSigning ResponseSigning `yaml:"response_signing"`
	// ControlPlane is how this replica authenticates to `agentauthz control
	// serve` for https watch URLs (mTLS with a replica certificate).
	ControlPlane ControlPlane `yaml:"control_plane"`
}

// ResponseSigning configures the envoy.service.ext_proc.v3 processor served
// on the gRPC port beside ext_authz.
type ResponseSigning struct {
	// Disabled leaves the processor unregistered (Envoy's ext_proc filter
	// then fails closed) and says so at startup.
	Disabled bool `yaml:"disabled"`
	// MaxBodyBytes is the largest body signed with a Content-Digest; it must
	// not exceed the buffer limit Envoy is configured with.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// MaxHeaderBytes bounds a response's header block; a larger one is
	// replaced by a 502.
	MaxHeaderBytes int `yaml:"max_header_bytes"`
	// DecisionTTL is how long after an allowed decision its response can
	// still be bound to it.
	DecisionTTL Duration `yaml:"decision_ttl"`
	// MaxPending bounds allowed decisions waiting for their response: one
	// is dropped once this many later ones were made (72 bytes each).
	// Envoy's ext_proc filter asks for one milliseconds after ext_authz
	// made it; the default is 1.4 s of decisions at 35,000 Checks/s.
	MaxPending int `yaml:"max_pending"`
}

// ControlPlane is this replica's client side of the control plane's mTLS.
type ControlPlane struct {
	// URL is the control plane's base URL (https://host:9193): when set,
	// this replica ships its signed records there in the background.
	URL string `yaml:"url"`
	// ShipDrainTimeout bounds shipping what is left at shutdown.
	ShipDrainTimeout Duration `yaml:"ship_drain_timeout"`
	// CAFile verifies the control plane's server certificate: its operator
	// CA, <control data dir>/operator/ca.pem.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are this replica's client certificate, from
	// `agentauthz operator issue NAME --role replica`.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Enabled reports whether any control-plane TLS setting is given.
func (c ControlPlane) Enabled() bool {
	return c.CAFile != "" || c.CertFile != "" || c.KeyFile != "" || c.URL != ""
}

// GRPC is the ext_authz listener.
type GRPC struct {
	// Addr is the listen address of the ext_authz gRPC server.
	Addr string `yaml:"addr"`
	// TLS enables TLS on the listener when CertFile and KeyFile are set, and
	// mutual TLS when ClientCAFile is also set.
	TLS TLS `yaml:"tls"`
	// MaxRecvMsgBytes bounds one CheckRequest.
	MaxRecvMsgBytes int `yaml:"max_recv_msg_bytes"`
	// MaxConcurrentStreams bounds streams per client connection.
	MaxConcurrentStreams uint32 `yaml:"max_concurrent_streams"`
	// CheckTimeout bounds one Check when the caller sets no shorter deadline.
	CheckTimeout Duration `yaml:"check_timeout"`
}

// TLS is server-side TLS.
type TLS struct {
	CertFile     string `yaml:"cert_file"`
	KeyFile      string `yaml:"key_file"`
	ClientCAFile string `yaml:"client_ca_file"`
}

// Enabled reports whether TLS is configured.
func (t TLS) Enabled() bool { return t.CertFile != "" || t.KeyFile != "" }

// HTTP is the health, readiness, metrics and keys listener.
type HTTP struct {
	Addr string `yaml:"addr"`
}

// Policy says where the Rego policy comes from and which rule decides.
type Policy struct {
	// Dir holds .rego files and data.json / data.yaml.
	Dir string `yaml:"dir"`
	// Path is the rule queried, as in opa-envoy-plugin's `path`.
	Path string `yaml:"path"`
	// Bundle is an OPA bundle file or http(s) URL; it replaces Dir.
	Bundle string `yaml:"bundle"`
	// Builtin serves the shipped policy compiled into the binary instead of
	// Dir or Bundle; the default in dev mode when neither is set.
	Builtin bool `yaml:"builtin"`
	// BundleVerificationKey is the PEM public key bundles must be signed with.
	BundleVerificationKey string `yaml:"bundle_verification_key"`
	// BundlePollInterval is how often a bundle URL is polled.
	BundlePollInterval Duration `yaml:"bundle_poll_interval"`
	// EvalTimeout bounds one policy evaluation.
	EvalTimeout Duration `yaml:"eval_timeout"`
	// DecisionCache memoises decisions of policies that read only a few
	// input paths (docs/policies.md, "Decision cache").
	DecisionCache DecisionCache `yaml:"decision_cache"`
}

// DecisionCache configures the policy decision cache.
type DecisionCache struct {
	// Disabled evaluates every request.
	Disabled bool `yaml:"disabled"`
	// MaxEntries bounds the cache; past it, the entries least likely
	// to be asked for again are evicted.
	MaxEntries int `yaml:"max_entries"`
	// TimeGranularity is the resolution of time.now_ns() in policy while the
	// cache is on, and how long an entry lives.
	TimeGranularity Duration `yaml:"time_granularity"`
}

// Identity selects where identities are read from.
type Identity struct {
	// Sources in order of preference: peer_certificate, xfcc, spiffe_id.
	// spiffe_id (Istio sidecars: identity without certificate) is off unless listed.
	Sources []string `yaml:"sources"`
	// CacheSize bounds the verified-identity cache.
	CacheSize int `yaml:"cache_size"`
}

// TrustBundle is one tenant: a trust domain, its CA bundle and its profile.
type TrustBundle struct {
	TrustDomain string `yaml:"trust_domain"`
	// File is a PEM file of CA certificates; not needed for profile spiffe.
	File string `yaml:"file"`
	// Profile is native (default), agentpass or spiffe.
	Profile    string     `yaml:"profile"`
	Revocation Revocation `yaml:"revocation"`
}

// Revocation lists one tenant's revocation sources.
type Revocation struct {
	CRLFiles []string `yaml:"crl_files"`
	CRLURLs  []string `yaml:"crl_urls"`
	// WatchURL is the push channel of `agentauthz control serve`; https
	// URLs authenticate with control_plane.
	WatchURL string `yaml:"watch_url"`
	// PollInterval is how often CRL URLs are polled (and the fallback when
	// the push channel is down).
	PollInterval Duration `yaml:"poll_interval"`
	// Grace is how long past a CRL's nextUpdate its data is still used.
	Grace Duration `yaml:"grace"`
	// Disabled runs the tenant without revocation checking: its revoked
	// certificates are accepted. A tenant must list a source or say this;
	// it is logged at start, shown on /readyz and by
	// agentauthz_revocation_disabled.
	Disabled bool `yaml:"disabled"`
}

// DecisionLog configures the signed decision log.
type DecisionLog struct {
	// Dir defaults to <data_dir>/log.
	Dir string `yaml:"dir"`
	// Name identifies this instance's log; defaults to the host name.
	Name string `yaml:"name"`
	// Mode is sync (answer after the record is on disk) or async.
	Mode string `yaml:"mode"`
	// AsyncBuffer bounds records waiting in async mode.
	AsyncBuffer int `yaml:"async_buffer"`
	// SegmentMaxBytes and SegmentMaxAge rotate segment files.
	SegmentMaxBytes int64    `yaml:"segment_max_bytes"`
	SegmentMaxAge   Duration `yaml:"segment_max_age"`
}

// Named defaults.
const (
	DefaultGRPCAddr = ":9191"
	DefaultHTTPAddr = ":9192"
	// Dev mode serves a dev CA's agents: loopback only, like ca serve.
	DefaultDevGRPCAddr          = "127.0.0.1:9191"
	DefaultDevHTTPAddr          = "127.0.0.1:9192"
	DefaultPolicyPath           = "agentauthz/authz/decision"
	DefaultPoliciesDir          = "policies"
	DefaultMaxRecvMsgBytes      = 1 << 20
	DefaultMaxConcurrentStreams = 1024
	DefaultCheckTimeout         = time.Second
	DefaultEvalTimeout          = 500 * time.Millisecond
	DefaultBundlePollInterval   = 30 * time.Second
	DefaultDecisionCacheEntries = 10000
	DefaultTimeGranularity      = time.Second
	DefaultCacheSize            = 10000
	DefaultCRLPollInterval      = 30 * time.Second
	DefaultCRLGrace             = time.Hour
	DefaultAsyncBuffer          = 10000
	DefaultSegmentMaxBytes      = 64 << 20
	DefaultSegmentMaxAge        = 24 * time.Hour
	DefaultResponseMaxBody      = 4 << 20
	DefaultResponseMaxHeader    = 64 << 10
	DefaultResponseDecisionTTL  = 5 * time.Minute
	DefaultResponseMaxPending   = 50000
	DevTrustDomain              = "dev.agentauthz.local"
)

// Default returns the configuration used when no file is given.
func Default() Config {
	c := Config{}
	c.applyDefaults()
	return c
}

// Load reads a YAML file strictly: every unknown key and every value of the
// wrong form is an error, all reported at once with their line numbers.
func Load(path string) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return Config{}, err
	}
	defer f.Close()
	c, err := Decode(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// maxFileBytes bounds a configuration file.
const maxFileBytes = 1 << 20

// Decode parses YAML strictly, without applying defaults. The error lists
// every problem, one a line, in the file's own terms.
func Decode(r io.Reader) (Config, error) {
	var c Config
	data, err := io.ReadAll(r)
	if err != nil {
		return c, err
	}
	if len(data) > maxFileBytes {
		return c, fmt.Errorf("larger than %d bytes", maxFileBytes)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return c, fmt.Errorf("not YAML: %w", err)
	}
	var problems []string
	checkNode(&doc, reflect.TypeFor[Config](), "", &problems)
	if len(problems) > 0 {
		return c, fmt.Errorf("%d problem(s):\n  %s", len(problems), strings.Join(problems, "\n  "))
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return c, err
	}
	return c, nil
}

// ApplyDefaults fills every unset key with its named default.
func (c *Config) ApplyDefaults() { c.applyDefaults() }

func (c *Config) applyDefaults() {
	setStr := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	setDur := func(p *Duration, v time.Duration) {
		if *p == 0 {
			*p = Duration(v)
		}
	}
	setStr(&c.LogLevel, "info")
	setStr(&c.LogFormat, "auto")
	if c.Dev {
		setStr(&c.GRPC.Addr, DefaultDevGRPCAddr)
		setStr(&c.HTTP.Addr, DefaultDevHTTPAddr)
	}
	setStr(&c.GRPC.Addr, DefaultGRPCAddr)
	setStr(&c.HTTP.Addr, DefaultHTTPAddr)
	if c.GRPC.MaxRecvMsgBytes == 0 {
		c.GRPC.MaxRecvMsgBytes = DefaultMaxRecvMsgBytes
	}
	if c.GRPC.MaxConcurrentStreams == 0 {
		c.GRPC.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	setDur(&c.GRPC.CheckTimeout, DefaultCheckTimeout)
	if c.Policy.Bundle == "" && c.Policy.Dir == "" && c.Dev {
		c.Policy.Builtin = true
	}
	if c.Policy.Bundle == "" && !c.Policy.Builtin {
		setStr(&c.Policy.Dir, DefaultPoliciesDir)
	}
	setStr(&c.Policy.Path, DefaultPolicyPath)
	setDur(&c.Policy.BundlePollInterval, DefaultBundlePollInterval)
	setDur(&c.Policy.EvalTimeout, DefaultEvalTimeout)
	if c.Policy.DecisionCache.MaxEntries == 0 {
		c.Policy.DecisionCache.MaxEntries = DefaultDecisionCacheEntries
	}
	setDur(&c.Policy.DecisionCache.TimeGranularity, DefaultTimeGranularity)
	if len(c.Identity.Sources) == 0 {
		c.Identity.Sources = []string{"peer_certificate", "xfcc"}
	}
	if c.Identity.CacheSize == 0 {
		c.Identity.CacheSize = DefaultCacheSize
	}
	for i := range c.TrustBundles {
		tb := &c.TrustBundles[i]
		setStr(&tb.Profile, "native")
		setDur(&tb.Revocation.PollInterval, DefaultCRLPollInterval)
		setDur(&tb.Revocation.Grace, DefaultCRLGrace)
	}
	if c.DataDir != "" {
		setStr(&c.DecisionLog.Dir, filepath.Join(c.DataDir, "log"))
	}
	if c.DecisionLog.Name == "" {
		if h, err := os.Hostname(); err == nil {
			c.DecisionLog.Name = h
		}
	}
	setStr(&c.DecisionLog.Mode, "sync")
	if c.DecisionLog.AsyncBuffer == 0 {
		c.DecisionLog.AsyncBuffer = DefaultAsyncBuffer
	}
	if c.DecisionLog.SegmentMaxBytes == 0 {
		c.DecisionLog.SegmentMaxBytes = DefaultSegmentMaxBytes
	}
	setDur(&c.DecisionLog.SegmentMaxAge, DefaultSegmentMaxAge)
	if c.ResponseSigning.MaxBodyBytes == 0 {
		c.ResponseSigning.MaxBodyBytes = DefaultResponseMaxBody
	}
	if c.ResponseSigning.MaxHeaderBytes == 0 {
		c.ResponseSigning.MaxHeaderBytes = DefaultResponseMaxHeader
	}
	setDur(&c.ResponseSigning.DecisionTTL, DefaultResponseDecisionTTL)
	if c.ResponseSigning.MaxPending == 0 {
		c.ResponseSigning.MaxPending = DefaultResponseMaxPending
	}
}

var (
	trustDomainRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,253}[a-z0-9])?$`)
	// policyPathRE accepts what opa-envoy-plugin's path accepts
	// ("/envoy/authz/allow/", "test/com.foo.envoy.ingress/allow/main"):
	// segments between slashes, empty ones ignored; no white space or
	// control characters.
	policyPathRE = regexp.MustCompile(`^/*[^/\s\x00-\x1f\x7f]+(/+[^/\s\x00-\x1f\x7f]+)*/*$`)
)

// Validate reports every problem at once, joined.
func (c *Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if c.DataDir == "" {
		add("data_dir: required")
	}
	switch c.LogLevel {
	case "trace", "debug", "info", "warn", "error":
	default:
		add("log_level: %q is not one of trace, debug, info, warn, error", c.LogLevel)
	}
	switch c.LogFormat {
	case "auto", "json", "text":
	default:
		add("log_format: %q is not one of auto, json, text", c.LogFormat)
	}
	for name, addr := range map[string]string{"grpc.addr": c.GRPC.Addr, "http.addr": c.HTTP.Addr} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			add("%s: %q is not host:port: %v", name, addr, err)
		}
	}
	if t := c.GRPC.TLS; t.Enabled() && (t.CertFile == "" || t.KeyFile == "") {
		add("grpc.tls: cert_file and key_file are both required")
	}
	if c.GRPC.TLS.ClientCAFile != "" && !c.GRPC.TLS.Enabled() {
		add("grpc.tls.client_ca_file: needs cert_file and key_file")
	}
	if cp := c.ControlPlane; cp.Enabled() && (cp.CAFile == "" || cp.CertFile == "" || cp.KeyFile == "") {
		add("control_plane: ca_file, cert_file and key_file are all required")
	}
	if u := c.ControlPlane.URL; u != "" && !strings.HasPrefix(u, "https://") {
		add("control_plane.url: %q is not an https URL (records are shipped over mTLS only)", u)
	}
	if c.ControlPlane.ShipDrainTimeout < 0 {
		add("control_plane.ship_drain_timeout: must not be negative")
	}
	if c.GRPC.MaxRecvMsgBytes < 4096 || c.GRPC.MaxRecvMsgBytes > 64<<20 {
		add("grpc.max_recv_msg_bytes: %d is outside 4096..67108864", c.GRPC.MaxRecvMsgBytes)
	}
	if c.GRPC.CheckTimeout < 0 {
		add("grpc.check_timeout: must be positive")
	}
	switch n := btoi(c.Policy.Dir != "") + btoi(c.Policy.Bundle != "") + btoi(c.Policy.Builtin); {
	case n == 0:
		add("policy: dir, bundle or builtin is required")
	case n > 1:
		add("policy: dir, bundle and builtin are exclusive")
	}
	if !policyPathRE.MatchString(c.Policy.Path) {
		add("policy.path: %q is not a rule path like agentauthz/authz/decision", c.Policy.Path)
	}
	if c.Policy.EvalTimeout <= 0 {
		add("policy.eval_timeout: must be positive")
	}
	if n := c.Policy.DecisionCache.MaxEntries; n < 1 || n > 1000000 {
		add("policy.decision_cache.max_entries: %d is outside 1..1000000", n)
	}
	if g := c.Policy.DecisionCache.TimeGranularity.D(); g < time.Millisecond || g > time.Minute {
		add("policy.decision_cache.time_granularity: %v is outside 1ms..1m", g)
	}
	seen := map[string]bool{}
	for _, s := range c.Identity.Sources {
		switch s {
		case "peer_certificate", "xfcc", "spiffe_id":
		default:
			add("identity.sources: %q is not one of peer_certificate, xfcc, spiffe_id", s)
		}
		if seen[s] {
			add("identity.sources: %q listed twice", s)
		}
		seen[s] = true
	}
	if c.Identity.CacheSize < 0 {
		add("identity.cache_size: must not be negative")
	}
	if len(c.TrustBundles) == 0 && !c.Dev {
		add("trust_bundles: at least one is required (or run with --dev)")
	}
	domains := map[string]bool{}
	for i, tb := range c.TrustBundles {
		p := fmt.Sprintf("trust_bundles[%d]", i)
		if !trustDomainRE.MatchString(tb.TrustDomain) {
			add("%s.trust_domain: %q is not a trust domain (lowercase DNS name)", p, tb.TrustDomain)
		}
		if domains[tb.TrustDomain] {
			add("%s.trust_domain: %q listed twice", p, tb.TrustDomain)
		}
		domains[tb.TrustDomain] = true
		switch tb.Profile {
		case "native", "agentpass":
			if tb.File == "" {
				add("%s.file: required for profile %s", p, tb.Profile)
			}
		case "spiffe":
		default:
			add("%s.profile: %q is not one of native, agentpass, spiffe", p, tb.Profile)
		}
		if tb.Profile == "spiffe" && !seen["spiffe_id"] {
			add("%s.profile: spiffe needs identity.sources to include spiffe_id", p)
		}
		for _, u := range append(append([]string{}, tb.Revocation.CRLURLs...), tb.Revocation.WatchURL) {
			if u != "" && !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
				add("%s.revocation: %q is not an http(s) URL", p, u)
			}
		}
		if r := tb.Revocation; r.Disabled && (len(r.CRLFiles) > 0 || len(r.CRLURLs) > 0 || r.WatchURL != "") {
			add("%s.revocation.disabled: true, but sources are listed; remove one or the other", p)
		}
		if w := tb.Revocation.WatchURL; strings.HasPrefix(w, "https://") && !c.ControlPlane.Enabled() {
			add("%s.revocation.watch_url: %q needs control_plane.ca_file, cert_file and key_file (a replica certificate: agentauthz operator issue NAME --role replica)", p, w)
		}
		if tb.Revocation.PollInterval < Duration(100*time.Millisecond) {
			add("%s.revocation.poll_interval: at least 100ms", p)
		}
	}
	switch c.DecisionLog.Mode {
	case "sync", "async":
	default:
		add("decision_log.mode: %q is not sync or async", c.DecisionLog.Mode)
	}
	if c.DecisionLog.AsyncBuffer < 1 {
		add("decision_log.async_buffer: must be positive")
	}
	if c.DecisionLog.SegmentMaxBytes < 1<<16 {
		add("decision_log.segment_max_bytes: at least 65536")
	}
	rs := c.ResponseSigning
	if rs.MaxBodyBytes < 1 || rs.MaxBodyBytes > 1<<30 {
		add("response_signing.max_body_bytes: %d is outside 1..1073741824", rs.MaxBodyBytes)
	}
	if rs.MaxHeaderBytes < 1024 || rs.MaxHeaderBytes > 16<<20 {
		add("response_signing.max_header_bytes: %d is outside 1024..16777216", rs.MaxHeaderBytes)
	}
	if d := rs.DecisionTTL.D(); d < time.Second || d > time.Hour {
		add("response_signing.decision_ttl: %v is outside 1s..1h", d)
	}
	if rs.MaxPending < 1 || rs.MaxPending > 1000000 {
		add("response_signing.max_pending: %d is outside 1..1000000", rs.MaxPending)
	}
	return errors.Join(errs...)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Duration is a time.Duration written as "250ms", "30s", "1h".
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = Duration(v)
	return nil
}

// D is the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }
