package policy

import (
	"context"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/topdown"
)

// ClockProbe tells whether an evaluation read the policy's clock: whether
// any expression evaluated calls time.now_ns, the one builtin allowed in a
// memoisable policy that reads the evaluation's time (planCache refuses
// the other nondeterministic ones). An evaluation that never read it
// decides the same at every time, so policy simulation reuses its result
// for every recorded request with the same input.
//
// Under a context carrying a probe (WithClockProbe) the engine evaluates
// every decision, bypassing its decision cache, and traces the evaluation
// into the probe (unless no rule mentions time.now_ns at all). The probe errs on the safe side: an expression that
// merely mentions time.now_ns (mocked by `with`, say) counts as a read.
type ClockProbe struct{ read bool }

// Read reports whether an evaluation under the probe read the clock.
func (p *ClockProbe) Read() bool { return p.read }

// Reset clears the probe for the next evaluation.
func (p *ClockProbe) Reset() { p.read = false }

type clockProbeKey struct{}

// WithClockProbe returns ctx carrying p.
func WithClockProbe(ctx context.Context, p *ClockProbe) context.Context {
	return context.WithValue(ctx, clockProbeKey{}, p)
}

func clockProbeFrom(ctx context.Context) *ClockProbe {
	p, _ := ctx.Value(clockProbeKey{}).(*ClockProbe)
	return p
}

var nowNanosRef = ast.NowNanos.Ref()

// Enabled is always true: with Config and TraceEvent it makes the probe a
// topdown.QueryTracer.
func (p *ClockProbe) Enabled() bool { return true }

// Config asks for no local variable bindings: only expressions are read.
func (p *ClockProbe) Config() topdown.TraceConfig { return topdown.TraceConfig{} }

// TraceEvent looks at every expression the evaluator is about to evaluate.
func (p *ClockProbe) TraceEvent(ev topdown.Event) {
	if p.read || ev.Op != topdown.EvalOp {
		return
	}
	x, ok := ev.Node.(*ast.Expr)
	if !ok {
		return
	}
	ast.WalkRefs(x, func(r ast.Ref) bool {
		if r.Equal(nowNanosRef) {
			p.read = true
		}
		return p.read
	})
}

// mentionsClock reports whether any rule refers to time.now_ns. When none
// does, no evaluation can read the clock and a probe needs no trace.
func mentionsClock(modules map[string]*ast.Module) bool {
	found := false
	for _, m := range modules {
		ast.WalkRefs(m, func(r ast.Ref) bool {
			found = found || r.Equal(nowNanosRef)
			return found
		})
		if found {
			return true
		}
	}
	return false
}

// PolicyTime is the time the policy sees (time.now_ns) when the engine's
// clock reads t: the start of t's interval when decisions are memoised
// (Config.TimeGranularity), t itself otherwise.
func (e *Engine) PolicyTime(t time.Time) time.Time {
	if s := e.cur.Load(); s != nil && s.cache != nil {
		_, t = s.cache.bucketOf(t)
	}
	return t
}
