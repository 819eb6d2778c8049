package policy

import (
	"crypto/sha256"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/agentauthz/agentauthz/internal/boundcache"
	"github.com/agentauthz/agentauthz/internal/identity"
)

// Decision cache defaults.
const (
	DefaultTimeGranularity = time.Second
	// maxCacheKeyBytes bounds the part of a key taken from input values
	// (e.g. a policy that reads all headers): a request whose values are
	// larger is evaluated and not cached.
	maxCacheKeyBytes = 1024
)

// cachePlan is what a compiled policy's decision depends on, found by
// reading every rule: the input paths it reads. A policy is cacheable only
// when each read of input starts with a constant path (input.agent.trust,
// object.get(input, ["agent", "trust"], 0)), nothing replaces input with
// `with`, and no builtin other than the clock is nondeterministic. The clock
// is pinned per time bucket (see Engine.Eval), so time-dependent rules are
// deterministic within a bucket; a decision whose evaluation did not read
// the clock holds in every bucket.
type cachePlan struct {
	paths  []ast.Ref  // input paths read, without the leading input
	agent  agentField // what it reads under input.agent: those attributes are in the key
	op     bool       // reads input.operation: the operation is in the key
	byKey  []ast.Ref  // the other paths, whose values are in the key
	reason string     // why the policy is not cacheable; "" when it is
}

func (p cachePlan) cacheable() bool { return p.reason == "" }

// describe says in one line what the cache keys on, or why there is none.
func (p cachePlan) describe() string {
	if !p.cacheable() {
		return "off: " + p.reason
	}
	s := make([]string, len(p.paths))
	for i, r := range p.paths {
		s[i] = ast.Ref(append(ast.Ref{ast.InputRootDocument}, r...)).String()
	}
	return "keyed on " + strings.Join(s, ", ")
}

// planCache reads the rules of the compiled modules (imports are already
// rewritten into the rules; reading them too would only widen the key).
func planCache(modules map[string]*ast.Module) cachePlan {
	names := make([]string, 0, len(modules))
	for name := range modules {
		names = append(names, name)
	}
	sort.Strings(names) // the first reason found is stable
	a := &cacheAnalysis{}
	a.vis = ast.NewGenericVisitor(a.visit)
	for _, name := range names {
		for _, r := range modules[name].Rules {
			// The compiler passes input to a call through a local
			// (`__local1__ = input; object.get(__local1__, …)`): such
			// locals are input too. Local names are unique in a rule.
			a.aliases = map[ast.Var]bool{}
			ast.WalkExprs(r, func(e *ast.Expr) bool {
				if v, ok := inputAlias(e); ok {
					a.aliases[v] = true
				}
				return false
			})
			a.vis.Walk(r)
		}
	}
	p := cachePlan{reason: a.reason}
	if !p.cacheable() {
		return p
	}
	p.paths = minimalPaths(a.paths)
	for _, r := range p.paths {
		switch {
		case r[0].Equal(keyAgent):
			p.agent |= agentFieldsRead(r[1:])
		case r[0].Equal(keyOperation):
			p.op = true
		default:
			p.byKey = append(p.byKey, r)
		}
	}
	return p
}

type cacheAnalysis struct {
	vis     *ast.GenericVisitor
	aliases map[ast.Var]bool
	paths   []ast.Ref
	reason  string
}

func (a *cacheAnalysis) fail(loc *ast.Location, format string, args ...any) {
	if a.reason == "" {
		a.reason = fmt.Sprintf(format, args...)
		if loc != nil {
			a.reason += " at " + loc.String()
		}
	}
}

// isInput: the input document itself, or a local holding it.
func (a *cacheAnalysis) isInput(t *ast.Term) bool {
	v, ok := t.Value.(ast.Var)
	return ok && a.aliases[v] || isInputRoot(t)
}

// isInputRoot: input, as a variable or as the one-element ref the compiler
// makes of it.
func isInputRoot(t *ast.Term) bool {
	switch v := t.Value.(type) {
	case ast.Var:
		return v.Equal(ast.InputRootDocument.Value)
	case ast.Ref:
		return len(v) == 1 && v[0].Equal(ast.InputRootDocument)
	}
	return false
}

func (a *cacheAnalysis) visit(x any) bool {
	if a.reason != "" {
		return true
	}
	switch x := x.(type) {
	case *ast.Expr:
		if _, ok := inputAlias(x); ok {
			return true // checked where the local is used
		}
		for _, w := range x.With {
			if w.Target.Value.(ast.Ref).HasPrefix(ast.InputRootRef) {
				a.fail(x.Location, "replaces input with `with`")
				return true
			}
		}
		if x.IsCall() {
			return a.call(x.Operator(), x.Operands(), x.Location)
		}
	case *ast.Term:
		switch v := x.Value.(type) {
		case ast.Call:
			return a.call(v[0].Value.(ast.Ref), v[1:], x.Location)
		case ast.Ref:
			if !a.isInput(v[0]) {
				return false // data refs: their dynamic parts are walked
			}
			n := 1
			for n < len(v) && v[n].IsGround() {
				n++
			}
			if n == 1 {
				a.fail(x.Location, "reads the whole input")
				return true
			}
			a.paths = append(a.paths, v[1:n].Copy())
			for _, t := range v[n:] {
				a.vis.Walk(t)
			}
			return true
		case ast.Var:
			if a.isInput(x) {
				a.fail(x.Location, "reads the whole input")
				return true
			}
		}
	}
	return false
}

// call checks a builtin or function call; it reports whether it has walked
// the operands itself.
func (a *cacheAnalysis) call(op ast.Ref, operands []*ast.Term, loc *ast.Location) bool {
	name := op.String()
	if b, ok := ast.BuiltinMap[name]; ok && b.Nondeterministic && name != ast.NowNanos.Name {
		a.fail(loc, "calls the nondeterministic builtin %s", name)
		return true
	}
	if name != ast.ObjectGet.Name || len(operands) < 3 || !a.isInput(operands[0]) {
		return false
	}
	path, ok := constPath(operands[1])
	if !ok {
		return false // walked: a read of the whole input
	}
	a.paths = append(a.paths, path)
	for _, t := range operands[2:] {
		a.vis.Walk(t)
	}
	return true
}

// inputAlias recognises `v = input`.
func inputAlias(e *ast.Expr) (ast.Var, bool) {
	if !e.IsEquality() || len(e.With) > 0 || e.Negated {
		return "", false
	}
	l, r := e.Operand(0), e.Operand(1)
	if isInputRoot(r) {
		l, r = r, l
	}
	v, ok := r.Value.(ast.Var)
	if !ok || !isInputRoot(l) || isInputRoot(r) {
		return "", false
	}
	return v, true
}

// constPath turns object.get's path operand into a ref: a string or an
// array of ground terms.
func constPath(t *ast.Term) (ast.Ref, bool) {
	switch v := t.Value.(type) {
	case ast.String:
		return ast.Ref{t}, true
	case *ast.Array:
		if v.Len() == 0 || !v.IsGround() {
			return nil, false
		}
		r := make(ast.Ref, 0, v.Len())
		v.Foreach(func(e *ast.Term) { r = append(r, e) })
		return r, true
	}
	return nil, false
}

// minimalPaths sorts and removes duplicates and paths under another path.
func minimalPaths(paths []ast.Ref) []ast.Ref {
	sort.Slice(paths, func(i, j int) bool { return paths[i].Compare(paths[j]) < 0 })
	out := paths[:0]
	for _, r := range paths {
		if len(out) > 0 && r.HasPrefix(out[len(out)-1]) {
			continue
		}
		out = append(out, r)
	}
	return out
}

// decisionCache memoises results of one compiled policy (a reload starts a
// new one), keyed on a digest of the operation, the agent's attributes and
// the other input values the policy reads. Results are shared: callers
// never modify a *Result.
type decisionCache struct {
	plan        cachePlan
	granularity time.Duration
	m           *boundcache.Cache[digest, cachedDecision]
}

// cachedDecision is a result and, when its evaluation read the clock, the
// time bucket it holds for.
type cachedDecision struct {
	r      *Result
	timed  bool
	bucket int64
}

func newDecisionCache(plan cachePlan, maxEntries int, granularity time.Duration) *decisionCache {
	return &decisionCache{plan: plan, granularity: granularity, m: boundcache.New[digest, cachedDecision](maxEntries)}
}

// bucketOf returns the time bucket of now and the time the policy sees in it.
func (c *decisionCache) bucketOf(now time.Time) (int64, time.Time) {
	b := now.UnixNano() / int64(c.granularity)
	return b, time.Unix(0, b*int64(c.granularity))
}

// key digests op, the agent's attributes the policy reads, and the values
// at the other paths it reads in input (nil when there are none). Values
// are printed as Rego terms, which tells every two different values apart.
// ok is false when those values are longer than maxCacheKeyBytes.
func (c *decisionCache) key(agent *identity.Agent, op string, input ast.Value) (d digest, ok bool) {
	var scratch [512]byte
	b := scratch[:0]
	if c.plan.op {
		b = appendStr(b, op)
	}
	if c.plan.agent != 0 {
		b = appendAgent(b, agent, c.plan.agent)
	}
	n := len(b)
	for _, r := range c.plan.byKey {
		if v, err := input.Find(r); err != nil {
			b = append(b, 0) // undefined
		} else {
			b = appendStr(append(b, 1), v.String())
		}
		if len(b)-n > maxCacheKeyBytes {
			return d, false
		}
	}
	return sha256.Sum256(b), true
}

// get returns the decision for d, unless it read the clock in an earlier
// bucket than bucket.
func (c *decisionCache) get(d digest, bucket int64) (*Result, bool) {
	e, ok := c.m.Get(d)
	if !ok || e.timed && e.bucket != bucket {
		return nil, false
	}
	return e.r, true
}

// put keeps r for d. timed says its evaluation read the clock: then it
// holds for bucket only; otherwise it holds until evicted or the policy
// changes.
func (c *decisionCache) put(d digest, r *Result, timed bool, bucket int64) {
	c.m.Set(d, cachedDecision{r: r, timed: timed, bucket: bucket})
}

// InputReads lists the input paths the serving policy reads (such as
// "input.agent.trust"), or says why they cannot be known statically (a
// policy that reads input through a computed key, say). Policy simulation
// uses it to tell which recorded decisions can be replayed exactly.
func (e *Engine) InputReads() (paths []string, unknown string) {
	s := e.cur.Load()
	if s == nil {
		return nil, "no policy loaded"
	}
	if !s.plan.cacheable() {
		return nil, s.plan.reason
	}
	for _, r := range s.plan.paths {
		paths = append(paths, ast.Ref(append(ast.Ref{ast.InputRootDocument}, r...)).String())
	}
	return paths, ""
}
