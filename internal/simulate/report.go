package simulate

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"slices"
	"time"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/simrun"
)

// maxExamples bounds the decision ids kept per group.
const maxExamples = 5

// Report is what a simulation found. Every record read is counted in exactly
// one of Unchanged, the change groups, NotReplayed or Malformed.
type Report struct {
	Revision string    `json:"policy_revision"` // of the proposed policy
	From     time.Time `json:"from,omitzero"`
	To       time.Time `json:"to,omitzero"`
	// First and Last are the times of the first and last record read
	// (malformed lines have none).
	First time.Time `json:"first_record,omitzero"`
	Last  time.Time `json:"last_record,omitzero"`
	// Gaps are the input paths the proposed policy reads that records do
	// not keep: a changed decision may then be due to them (Uncertain).
	Gaps []string `json:"gaps,omitempty"`

	Read         int     `json:"records_read"`
	Replayed     int     `json:"replayed"`
	Unchanged    int     `json:"unchanged"`
	NewlyAllowed []Group `json:"newly_allowed"`
	NewlyDenied  []Group `json:"newly_denied"`
	// Changed are denials that stay denials with another status or reason,
	// and allows under another operation.
	Changed     []Group `json:"changed"`
	NotReplayed []Group `json:"not_replayed"`
	Malformed   int     `json:"malformed_lines"`

	Gaining []AgentOperation `json:"agents_gaining"`
	Losing  []AgentOperation `json:"agents_losing"`
}

// Uncertain reports whether the policy reads what records do not keep.
func (r *Report) Uncertain() bool { return len(r.Gaps) > 0 }

// Count sums a list of groups.
func Count(gs []Group) int {
	n := 0
	for _, g := range gs {
		n += g.Count
	}
	return n
}

// Group is a set of decisions that changed (or were not replayed) the same
// way for one agent and operation.
type Group struct {
	Agent     string   `json:"agent"`
	Tenant    string   `json:"tenant,omitempty"`
	Operation string   `json:"operation,omitempty"`
	Before    string   `json:"before,omitempty"`
	After     string   `json:"after"` // for NotReplayed: why
	Count     int      `json:"count"`
	Examples  []string `json:"example_decision_ids"`
}

// AgentOperation is an operation an agent would gain (allowed at least once
// after, never before) or lose (allowed before, never after).
type AgentOperation struct {
	Agent     string `json:"agent"`
	Tenant    string `json:"tenant,omitempty"`
	Operation string `json:"operation"`
	Count     int    `json:"requests"`
}

// Accumulator builds a Report one record at a time.
type Accumulator struct {
	r      Report
	groups map[groupKey]*Group
	ops    map[opKey]*opCount
	strs   map[outcomeKey]string
}

type groupKey struct {
	kind                             int
	agent, tenant, op, before, after string
}
type opKey struct{ agent, tenant, op string }
type opCount struct{ before, after int }

const (
	kindNewlyAllowed = iota
	kindNewlyDenied
	kindChanged
	kindNotReplayed
)

// NewAccumulator starts a report on the proposed policy revision.
func NewAccumulator(revision string, from, to time.Time, gaps []string) *Accumulator {
	return &Accumulator{
		r:      Report{Revision: revision, From: from, To: to, Gaps: gaps},
		groups: map[groupKey]*Group{},
		ops:    map[opKey]*opCount{},
		strs:   map[outcomeKey]string{},
	}
}

// Malformed counts a log line that did not decode.
func (a *Accumulator) Malformed() { a.r.Read++; a.r.Malformed++ }

// Add counts one record and what the replay made of it (err from Replay).
func (a *Accumulator) Add(rec *decisionlog.Record, after Outcome, err error) {
	a.r.Read++
	if a.r.First.IsZero() || rec.Time.Before(a.r.First) {
		a.r.First = rec.Time
	}
	if rec.Time.After(a.r.Last) {
		a.r.Last = rec.Time
	}
	if err != nil {
		why := err.Error()
		if !errors.Is(err, ErrNotReplayable) {
			why = "replay failed: " + why
		}
		a.add(groupKey{kindNotReplayed, rec.Agent.ID, rec.Agent.Tenant, rec.Request.Operation, "", why}, rec.DecisionID)
		return
	}
	a.r.Replayed++
	before := Recorded(rec)
	k := opKey{rec.Agent.ID, rec.Agent.Tenant, ""}
	if before.Allowed {
		k.op = before.Operation
		a.opCount(k).before++
	}
	if after.Allowed {
		k.op = after.Operation
		a.opCount(k).after++
	}
	op := cmp.Or(after.Operation, before.Operation)
	gk := groupKey{agent: rec.Agent.ID, tenant: rec.Agent.Tenant, op: op, before: a.outcomeString(before), after: a.outcomeString(after)}
	switch {
	case before == after:
		a.r.Unchanged++
		return
	case after.Allowed && !before.Allowed:
		gk.kind = kindNewlyAllowed
	case !after.Allowed && before.Allowed:
		gk.kind = kindNewlyDenied
	default:
		gk.kind = kindChanged
		if before.Operation != after.Operation {
			gk.before += " as " + before.Operation
			gk.after += " as " + after.Operation
		}
	}
	a.add(gk, rec.DecisionID)
}

// outcomeString is o.String(), kept per status and reason: a report has
// few of them and every record needs two.
func (a *Accumulator) outcomeString(o Outcome) string {
	k := outcomeKey{o.Allowed, o.Status, o.Reason}
	s, ok := a.strs[k]
	if !ok {
		s = o.String()
		if len(a.strs) >= maxMemo {
			clear(a.strs)
		}
		a.strs[k] = s
	}
	return s
}

type outcomeKey struct {
	allowed bool
	status  int
	reason  string
}

func (a *Accumulator) opCount(k opKey) *opCount {
	c := a.ops[k]
	if c == nil {
		c = &opCount{}
		a.ops[k] = c
	}
	return c
}

func (a *Accumulator) add(k groupKey, decisionID string) {
	g := a.groups[k]
	if g == nil {
		g = &Group{Agent: k.agent, Tenant: k.tenant, Operation: k.op, Before: k.before, After: k.after}
		a.groups[k] = g
	}
	g.Count++
	if len(g.Examples) < maxExamples && decisionID != "" {
		g.Examples = append(g.Examples, decisionID)
	}
}

// Report returns the finished report, groups sorted by count then agent.
func (a *Accumulator) Report() *Report {
	r := a.r
	r.NewlyAllowed, r.NewlyDenied, r.Changed, r.NotReplayed = []Group{}, []Group{}, []Group{}, []Group{}
	for k, g := range a.groups {
		switch k.kind {
		case kindNewlyAllowed:
			r.NewlyAllowed = append(r.NewlyAllowed, *g)
		case kindNewlyDenied:
			r.NewlyDenied = append(r.NewlyDenied, *g)
		case kindChanged:
			r.Changed = append(r.Changed, *g)
		default:
			r.NotReplayed = append(r.NotReplayed, *g)
		}
	}
	for _, gs := range [][]Group{r.NewlyAllowed, r.NewlyDenied, r.Changed, r.NotReplayed} {
		slices.SortFunc(gs, func(x, y Group) int {
			return cmp.Or(cmp.Compare(y.Count, x.Count), cmp.Compare(x.Agent, y.Agent), cmp.Compare(x.Operation, y.Operation),
				cmp.Compare(x.Before, y.Before), cmp.Compare(x.After, y.After))
		})
	}
	r.Gaining, r.Losing = []AgentOperation{}, []AgentOperation{}
	for k, c := range a.ops {
		switch {
		case c.before == 0 && c.after > 0:
			r.Gaining = append(r.Gaining, AgentOperation{k.agent, k.tenant, k.op, c.after})
		case c.before > 0 && c.after == 0:
			r.Losing = append(r.Losing, AgentOperation{k.agent, k.tenant, k.op, c.before})
		}
	}
	for _, l := range [][]AgentOperation{r.Gaining, r.Losing} {
		slices.SortFunc(l, func(x, y AgentOperation) int {
			return cmp.Or(cmp.Compare(x.Agent, y.Agent), cmp.Compare(x.Tenant, y.Tenant), cmp.Compare(x.Operation, y.Operation))
		})
	}
	return &r
}

// Digest is the lowercase hex SHA-256 of the report as WriteJSON writes it:
// what a recorded simulation run (simrun) names, so that the report filed
// with a pull request can be matched to the change-log row.
func (r *Report) Digest() (string, error) {
	var b bytes.Buffer
	if err := r.WriteJSON(&b); err != nil {
		return "", err
	}
	s := sha256.Sum256(b.Bytes())
	return hex.EncodeToString(s[:]), nil
}

// Gate is the run's CI gate: pass when nothing would become allowed, else
// accepted or fail as the run accepted that or not.
func (r *Report) Gate(accept bool) string {
	switch {
	case Count(r.NewlyAllowed) == 0:
		return simrun.GatePass
	case accept:
		return simrun.GateAccepted
	}
	return simrun.GateFail
}

// Run is the report as the change log records a simulation run.
func (r *Report) Run(accept bool) (*simrun.Run, error) {
	d, err := r.Digest()
	if err != nil {
		return nil, err
	}
	run := &simrun.Run{Revision: r.Revision, From: r.From.UTC(), To: r.To.UTC(), First: r.First.UTC(), Last: r.Last.UTC(),
		Read: int64(r.Read), Replayed: int64(r.Replayed), Unchanged: int64(r.Unchanged),
		NewlyAllowed: int64(Count(r.NewlyAllowed)), NewlyDenied: int64(Count(r.NewlyDenied)), Changed: int64(Count(r.Changed)),
		NotReplayed: int64(Count(r.NotReplayed)), Malformed: int64(r.Malformed), Uncertain: r.Uncertain(),
		Gate: r.Gate(accept), ReportSHA256: d}
	return run, run.Validate()
}
