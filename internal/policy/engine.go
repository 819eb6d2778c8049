package policy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/hashicorp/go-hclog"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/loader"
	opametrics "github.com/open-policy-agent/opa/v1/metrics"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/topdown/builtins"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentauthz/agentauthz/internal/identity"
)

// Defaults for Config.
const (
	DefaultPath               = "agentauthz/authz/decision"
	DefaultEvalTimeout        = 500 * time.Millisecond
	DefaultBundlePollInterval = 30 * time.Second
	// reloadDebounce collapses the burst of events an editor or `git checkout`
	// produces into one reload.
	reloadDebounce = 200 * time.Millisecond
	// smokeTimeout is the least time a smoke evaluation gets: a busy machine
	// at reload time must not refuse a good policy.
	smokeTimeout = 10 * time.Second
)

// Config configures an Engine. Exactly one of Dir and Bundle is set.
type Config struct {
	// Dir is a policy directory: *.rego (except *_test.rego) plus data.json /
	// data.yaml files, loaded as `opa run` / `opa test` load a directory.
	Dir string
	// Path is the rule to query, as opa-envoy-plugin's `path`, e.g.
	// "envoy/authz/allow". Default DefaultPath.
	Path string
	// Bundle is an OPA bundle (.tar.gz) file path or http(s) URL.
	Bundle string
	// BundleVerificationKey is a file holding the PEM public key (or, for HS256,
	// the shared secret) that bundle signatures must verify with. When set,
	// unsigned and wrongly signed bundles are refused.
	BundleVerificationKey string
	// BundleVerificationKeyID is the key id in the bundle signature; default
	// "default" (what `opa build --signing-key` writes).
	BundleVerificationKeyID string
	// BundlePollInterval is how often a bundle URL or file is checked for a
	// new revision. Default DefaultBundlePollInterval.
	BundlePollInterval time.Duration
	// EvalTimeout bounds one evaluation. Default DefaultEvalTimeout.
	EvalTimeout time.Duration
	Logger      hclog.Logger
	// Registerer receives the policy metrics; nil means not registered.
	Registerer prometheus.Registerer
	// Now is the clock; it is also what time.now_ns() returns in policies.
	Now func() time.Time
	// HTTPClient fetches bundle URLs; default a client with a 30 s timeout.
	HTTPClient HTTPDoer
	// DecisionCache is how many decisions are memoised for a policy whose
	// decision provably depends only on a few input paths (see planCache);
	// 0 turns memoising off.
	DecisionCache int
	// TimeGranularity is, with the decision cache on, the resolution of the
	// policy's clock: time.now_ns() returns the start of the current
	// interval, and cached decisions live for one interval. Default
	// DefaultTimeGranularity.
	TimeGranularity time.Duration
}

// state is one compiled, prepared policy. It is never mutated after swap.
type state struct {
	query    rego.PreparedEvalQuery
	routes   *routeTable
	mcp      *mcpTable // nil: no MCP endpoint declared
	agents   map[string]identity.RegistryEntry
	revision string
	plan     cachePlan
	cache    *decisionCache // nil: every request is evaluated
	base     baseDoc        // before the restrictions overlay
}

// Engine evaluates the current policy. It is safe for concurrent use.
type Engine struct {
	cfg     Config
	log     hclog.Logger
	now     func() time.Time
	query   ast.Body
	metrics *metrics
	cur     atomic.Pointer[state]
	bundle  *bundleSource // nil when serving a directory
	agents  agentTermCache
	// opaMetrics is a no-op registry: without it every evaluation
	// allocates OPA metrics and timers that nobody reads.
	opaMetrics opametrics.Metrics

	reloadMu sync.Mutex // serialises Reload and guards overlay and remerge
	// overlay holds the control plane's restrictions by tenant, merged
	// into data.agentauthz.restrictions at every compile (overlay.go).
	overlay map[string]map[string]any
	remerge *time.Timer
}

// New loads the policy and prepares the query. A directory or bundle file that
// does not load is an error. A bundle URL that cannot be fetched yet is not:
// the engine starts not ready and Run keeps polling.
func New(cfg Config) (*Engine, error) {
	if (cfg.Dir == "") == (cfg.Bundle == "") {
		return nil, errors.New("policy: exactly one of a policy directory and a bundle must be set")
	}
	if cfg.Path == "" {
		cfg.Path = DefaultPath
	}
	if cfg.EvalTimeout <= 0 {
		cfg.EvalTimeout = DefaultEvalTimeout
	}
	if cfg.BundlePollInterval <= 0 {
		cfg.BundlePollInterval = DefaultBundlePollInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.TimeGranularity <= 0 {
		cfg.TimeGranularity = DefaultTimeGranularity
	}
	query, err := queryForPath(cfg.Path)
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	e := &Engine{cfg: cfg, log: cfg.Logger.Named("policy"), now: cfg.Now, query: query, metrics: m, opaMetrics: opametrics.NoOp(),
		agents: newAgentTermCache()}
	if cfg.Bundle != "" {
		e.bundle, err = newBundleSource(cfg)
		if err != nil {
			return nil, err
		}
	}
	if err := e.Reload(); err != nil {
		if e.bundle != nil && e.bundle.isURL() {
			e.log.Warn("bundle not loaded yet; not ready until it is", "bundle", cfg.Bundle, "error", err)
			return e, nil
		}
		return nil, err
	}
	return e, nil
}

// queryForPath turns "a/b/c" into the query data.a.b.c, as opa-envoy-plugin
// reads its path: split on "/", empty segments skipped (so leading, trailing
// and doubled slashes do not matter), a segment that is an integer indexes
// an array, any other is a string key ("com.foo.envoy.ingress" is one key).
func queryForPath(p string) (ast.Body, error) {
	ref := ast.Ref{ast.DefaultRootDocument}
	for _, s := range strings.Split(p, "/") {
		switch i, err := strconv.Atoi(s); {
		case s == "":
		case err == nil:
			ref = append(ref, ast.IntNumberTerm(i))
		default:
			ref = append(ref, ast.StringTerm(s))
		}
	}
	if len(ref) == 1 {
		return nil, fmt.Errorf("policy: empty decision path %q", p)
	}
	return ast.NewBody(ast.NewExpr(ast.NewTerm(ref))), nil
}

// Revision is the revision of the policy serving now: the bundle manifest
// revision, or "sha256:" and 12 hex digits of the directory content. Empty
// when no policy is loaded.
func (e *Engine) Revision() string {
	if s := e.cur.Load(); s != nil {
		return s.revision
	}
	return ""
}

// Ready reports whether a compiled policy is serving.
func (e *Engine) Ready() bool { return e.cur.Load() != nil }

// Operation returns the operation the route table maps method and path to,
// or "".
func (e *Engine) Operation(method, path string) string {
	return e.cur.Load().routesOrNil().Match(method, path)
}

func (s *state) routesOrNil() *routeTable {
	if s == nil {
		return nil
	}
	return s.routes
}

// Eval evaluates the decision for req by agent (nil when no identity was
// established). On error the caller must deny: request_parse_error when the
// error is ErrInput, policy_error otherwise; the returned Result is then nil
// or carries only Revision and Operation.
func (e *Engine) Eval(ctx context.Context, req *authv3.CheckRequest, agent *identity.Agent) (*Result, error) {
	s := e.cur.Load()
	if s == nil {
		return nil, ErrNotReady
	}
	h := req.GetAttributes().GetRequest().GetHttp()
	if h.GetMethod() == "POST" && s.mcp.endpoint(h.GetHost(), h.GetPath()) {
		return e.evalMCP(ctx, s, req, agent)
	}
	return e.evalOp(ctx, s, req, agent, s.routes.Match(h.GetMethod(), h.GetPath()), nil)
}

// evalOp decides req as operation op; mcpTerm, when not nil, is input.mcp.
// The Result may be shared through the decision cache: never modify it.
func (e *Engine) evalOp(ctx context.Context, s *state, req *authv3.CheckRequest, agent *identity.Agent, op string, mcpTerm *ast.Term) (*Result, error) {
	now := e.now()
	c := s.cache
	var (
		key    digest
		bucket int64
	)
	if c != nil {
		bucket, now = c.bucketOf(now)
	}
	if c != nil && clockProbeFrom(ctx) != nil {
		c = nil // the caller asks what this evaluation reads: evaluate it
	}
	if c != nil && len(c.plan.byKey) == 0 {
		// The key is agent and operation only: the cache can answer
		// before the input is built. It is still validated first: a
		// request whose input cannot be built (unparsable path, malformed
		// or oversized body, …) is denied with request_parse_error, exactly
		// as without the cache.
		if err := validateInput(req); err != nil {
			return &Result{Revision: s.revision, Operation: op}, err
		}
		key, _ = c.key(agent, op, nil)
		if r, ok := c.get(key, bucket); ok {
			e.metrics.cacheHits.Inc()
			return r, nil
		}
	}
	partial := &Result{Revision: s.revision, Operation: op}
	input, err := buildInput(req, e.agents.term(agent), op)
	if err != nil {
		return partial, err
	}
	if mcpTerm != nil {
		input.(ast.Object).Insert(keyMCP, mcpTerm)
	}
	if c != nil && len(c.plan.byKey) > 0 {
		var ok bool
		if key, ok = c.key(agent, op, input); !ok {
			c = nil
		} else if r, ok := c.get(key, bucket); ok {
			e.metrics.cacheHits.Inc()
			return r, nil
		}
	}
	if c == nil {
		return e.evalStateTimeout(ctx, s, rego.EvalParsedInput(input), partial, e.cfg.EvalTimeout, now)
	}
	// The clock is the one nondeterministic builtin a cacheable policy may
	// call; recorded calls tell whether this decision depends on it.
	clock := builtins.NDBCache{}
	r, err := e.evalStateClock(ctx, s, rego.EvalParsedInput(input), partial, e.cfg.EvalTimeout, now, clock)
	e.metrics.cacheMisses.Inc()
	if err == nil {
		c.put(key, r, len(clock) > 0, bucket)
	}
	return r, err
}

// evalStateTimeout evaluates with the policy's clock (time.now_ns) at now.
func (e *Engine) evalStateTimeout(ctx context.Context, s *state, input rego.EvalOption, partial *Result, timeout time.Duration, now time.Time) (*Result, error) {
	return e.evalStateClock(ctx, s, input, partial, timeout, now, nil)
}

// evalStateClock is evalStateTimeout that records calls of the clock in
// clock (when not nil).
func (e *Engine) evalStateClock(ctx context.Context, s *state, input rego.EvalOption, partial *Result, timeout time.Duration, now time.Time, clock builtins.NDBCache) (*Result, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	var (
		rs  rego.ResultSet
		err error
	)
	switch p := clockProbeFrom(ctx); {
	case p != nil:
		// As for the decision cache below: a call of the clock leaves
		// its answer in the builtin cache.
		nd := builtins.NDBCache{}
		rs, err = s.query.Eval(ctx, input, rego.EvalTime(now), rego.EvalMetrics(e.opaMetrics), rego.EvalNDBuiltinCache(nd))
		p.read = p.read || len(nd) > 0
	case clock != nil:
		rs, err = s.query.Eval(ctx, input, rego.EvalTime(now), rego.EvalMetrics(e.opaMetrics), rego.EvalNDBuiltinCache(clock))
	default:
		rs, err = s.query.Eval(ctx, input, rego.EvalTime(now), rego.EvalMetrics(e.opaMetrics))
	}
	e.metrics.evalDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		if ctx.Err() != nil {
			return partial, fmt.Errorf("%w after %v: %w", ErrEvalTimeout, timeout, err)
		}
		return partial, fmt.Errorf("policy evaluation: %w", err)
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return partial, fmt.Errorf("%w: %s", ErrUndefined, e.cfg.Path)
	}
	if len(rs) > 1 {
		return partial, fmt.Errorf("%w: %d results", ErrInvalidResult, len(rs))
	}
	r, err := parseDecision(rs[0].Expressions[0].Value)
	if err != nil {
		return partial, err
	}
	r.Revision, r.Operation = partial.Revision, partial.Operation
	return r, nil
}

// Reload loads the policy again (directory or bundle), compiles it, runs the
// smoke evaluation and swaps it in. On any failure the previous policy keeps
// serving and the error is returned, logged and counted. Call it on SIGHUP.
func (e *Engine) Reload() error {
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	s, changed, err := e.load(context.Background())
	if err != nil {
		e.metrics.reloads.WithLabelValues("failure").Inc()
		if errors.Is(err, ErrInvalidData) {
			e.metrics.dataRefused.Inc()
		}
		e.log.Error("policy refused; previous policy keeps serving", "previous_revision", e.Revision(), "error", err)
		return err
	}
	if !changed {
		return nil
	}
	if cur := e.cur.Load(); cur != nil && cur.revision == s.revision {
		return nil // same content (e.g. a file touched without change)
	}
	old := e.cur.Swap(s)
	e.metrics.reloads.WithLabelValues("success").Inc()
	e.metrics.setRevision(s.revision)
	oldRev := ""
	if old != nil {
		oldRev = old.revision
	}
	e.log.Info("policy loaded", "revision", s.revision, "previous_revision", oldRev, "decision_cache", e.cacheState(s))
	return nil
}

// load returns a new state; changed is false when a bundle source reports no
// new content (ETag or file hash unchanged).
func (e *Engine) load(ctx context.Context) (*state, bool, error) {
	if e.bundle != nil {
		b, changed, err := e.bundle.fetch(ctx)
		if err != nil || !changed {
			return nil, false, err
		}
		modules := make(map[string]*ast.Module, len(b.Modules))
		for _, mf := range b.Modules {
			if strings.HasSuffix(mf.Path, "_test.rego") {
				continue
			}
			modules[mf.Path] = mf.Parsed
		}
		rev := b.Manifest.Revision
		if rev == "" {
			rev = "bundle:" + e.bundle.lastHash
		}
		s, err := e.compile(ctx, modules, b.Data, rev)
		if err != nil {
			e.bundle.forget() // refetch next time even if the ETag is unchanged
			return nil, false, err
		}
		return s, true, nil
	}
	modules, data, rev, err := loadDir(e.cfg.Dir)
	if err != nil {
		return nil, false, err
	}
	s, err := e.compile(ctx, modules, data, rev)
	return s, err == nil, err
}

// loadDir loads a policy directory the way `opa test DIR` does, minus tests.
func loadDir(dir string) (map[string]*ast.Module, map[string]any, string, error) {
	res, err := loader.NewFileLoader().Filtered([]string{dir}, skipNonPolicy)
	if err != nil {
		return nil, nil, "", fmt.Errorf("%w: load %s: %w", ErrPolicyRejected, dir, err)
	}
	h := sha256.New()
	names := make([]string, 0, len(res.Modules))
	for name := range res.Modules {
		names = append(names, name)
	}
	sort.Strings(names)
	modules := make(map[string]*ast.Module, len(names))
	for _, name := range names {
		rf := res.Modules[name]
		rel, err := filepath.Rel(dir, name)
		if err != nil {
			rel = name
		}
		fmt.Fprintf(h, "%s\x00%d\x00", filepath.ToSlash(rel), len(rf.Raw))
		h.Write(rf.Raw)
		modules[rel] = rf.Parsed
	}
	// Map keys sorted, and every string decoded from JSON or YAML, so valid
	// UTF-8: no Go toolchain writes these bytes differently.
	dataJSON, err := json.Marshal(res.Documents)
	if err != nil {
		return nil, nil, "", fmt.Errorf("%w: data: %w", ErrPolicyRejected, err)
	}
	h.Write(dataJSON)
	return modules, res.Documents, "sha256:" + hex.EncodeToString(h.Sum(nil))[:12], nil
}

// skipNonPolicy excludes tests, hidden files and testdata from serving.
func skipNonPolicy(_ string, info fs.FileInfo, depth int) bool {
	name := info.Name()
	if depth > 0 && (strings.HasPrefix(name, ".") || (info.IsDir() && name == "testdata")) {
		return true
	}
	return !info.IsDir() && strings.HasSuffix(name, "_test.rego")
}

// compile compiles modules, prepares the query against data and smoke-tests
// it. Nothing is swapped here.
func (e *Engine) compile(ctx context.Context, modules map[string]*ast.Module, data map[string]any, revision string) (*state, error) {
	if len(modules) == 0 {
		return nil, fmt.Errorf("%w: no policy modules", ErrPolicyRejected)
	}
	if data == nil {
		data = map[string]any{}
	}
	base := baseDoc{modules: modules, data: data, revision: revision}
	data, revision, remergeAt := e.withOverlay(data, revision)
	routes, agents, mcpt, err := parseAgentauthzData(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPolicyRejected, err)
	}
	c := ast.NewCompiler()
	c.Compile(modules)
	if c.Failed() {
		return nil, fmt.Errorf("%w: compile: %w", ErrPolicyRejected, c.Errors)
	}
	pq, err := rego.New(
		rego.ParsedQuery(e.query),
		rego.Compiler(c),
		rego.Store(inmem.NewFromObject(data)),
	).PrepareForEval(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: prepare: %w", ErrPolicyRejected, err)
	}
	s := &state{query: pq, routes: routes, mcp: mcpt, agents: agents, revision: revision, plan: planCache(c.Modules), base: base}
	if err := e.smoke(ctx, s); err != nil {
		return nil, fmt.Errorf("%w: smoke evaluation: %w", ErrPolicyRejected, err)
	}
	e.scheduleRemergeLocked(remergeAt)
	if e.cfg.DecisionCache > 0 && s.plan.cacheable() {
		s.cache = newDecisionCache(s.plan, e.cfg.DecisionCache, e.cfg.TimeGranularity)
	}
	return s, nil
}

// DecisionCache says whether the serving policy's decisions are memoised
// and on which input paths, or why not.
func (e *Engine) DecisionCache() string { return e.cacheState(e.cur.Load()) }

func (e *Engine) cacheState(s *state) string {
	switch {
	case s == nil:
		return "no policy loaded"
	case e.cfg.DecisionCache <= 0:
		return "off: disabled in the configuration"
	}
	return s.plan.describe()
}

// smoke evaluates the sample inputs: an evaluation error (a rule conflict, a
// builtin error with strict errors, a timeout) refuses the policy. An
// undefined decision is tolerated here; at request time it denies.
func (e *Engine) smoke(ctx context.Context, s *state) error {
	for _, sample := range sampleRequests() {
		h := sample.req.GetAttributes().GetRequest().GetHttp()
		op := s.routes.Match(h.GetMethod(), h.GetPath())
		input, err := BuildInput(sample.req, sample.agent, op)
		if err != nil {
			return err
		}
		_, err = e.evalStateTimeout(ctx, s, rego.EvalParsedInput(input), &Result{}, max(e.cfg.EvalTimeout, smokeTimeout), e.now())
		if err != nil && !errors.Is(err, ErrUndefined) {
			return fmt.Errorf("%s: %w", sample.name, err)
		}
	}
	return nil
}
