package policy

import (
	"context"
	"time"
)

// ClockProbe tells whether an evaluation read the policy's clock
// (time.now_ns, the one nondeterministic builtin a memoisable policy may
// call: planCache refuses the others). An evaluation that never read it
// decides the same at every time, so policy simulation reuses its result
// for every recorded request with the same input.
//
// Under a context carrying a probe (WithClockProbe) the engine evaluates
// every decision, bypassing its decision cache, and sees a call of the
// clock as the decision cache does: by the answer OPA leaves in the
// nondeterministic-builtin cache. Any nondeterministic call counts as a
// read, which errs on the safe side.
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

// PolicyTime is the time the policy sees (time.now_ns) when the engine's
// clock reads t: the start of t's interval when decisions are memoised
// (Config.TimeGranularity), t itself otherwise.
func (e *Engine) PolicyTime(t time.Time) time.Time {
	if s := e.cur.Load(); s != nil && s.cache != nil {
		_, t = s.cache.bucketOf(t)
	}
	return t
}
