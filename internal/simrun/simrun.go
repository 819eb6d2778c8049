// Package simrun is a policy simulation run as the control plane's change
// log records it (event policy_simulation): what was evaluated, over which
// recorded decisions, what it found and the digest of the full report. The
// row is signed like every change-log row, so the evidence pack (SOC 2
// CC8.1) can show that a policy change was reviewed with its impact.
// docs/control-plane.md, "Policy simulation runs", specifies the detail.
package simrun

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Event is the change-log event of a simulation run.
const Event = "policy_simulation"

// Gates: what the CI gate of the run came to.
const (
	GatePass     = "pass"     // nothing that was denied would be allowed
	GateAccepted = "accepted" // something would, and the run accepted it (--accept-newly-allowed)
	GateFail     = "fail"     // something would, not accepted
)

// maxRevision bounds the policy revision (a bundle manifest's revision is
// free text).
const maxRevision = 128

// Run is one simulation run. Times are UTC; a zero From or To is an open
// bound, a zero First and Last mean no record was read.
type Run struct {
	Revision     string    `json:"policy_revision"`
	From         time.Time `json:"from,omitzero"`
	To           time.Time `json:"to,omitzero"`
	First        time.Time `json:"first_record,omitzero"`
	Last         time.Time `json:"last_record,omitzero"`
	Read         int64     `json:"records_read"`
	Replayed     int64     `json:"replayed"`
	Unchanged    int64     `json:"unchanged"`
	NewlyAllowed int64     `json:"newly_allowed"`
	NewlyDenied  int64     `json:"newly_denied"`
	Changed      int64     `json:"changed"`
	NotReplayed  int64     `json:"not_replayed"`
	Malformed    int64     `json:"malformed_lines"`
	Uncertain    bool      `json:"uncertain"`
	Gate         string    `json:"gate"`
	ReportSHA256 string    `json:"report_sha256"`
}

// Validate checks a run before it is recorded: a revision, counts that add
// up as a report's do, a gate that agrees with them, a SHA-256 digest.
func (r *Run) Validate() error {
	switch {
	case r.Revision == "" || len(r.Revision) > maxRevision:
		return fmt.Errorf("simulation run: policy_revision must be 1 to %d bytes", maxRevision)
	case strings.ContainsFunc(r.Revision, func(c rune) bool { return c < 0x20 || c == 0x7f || c == '\uFFFD' }):
		return errors.New("simulation run: policy_revision holds a control character")
	case !r.From.IsZero() && !r.To.IsZero() && r.To.Before(r.From):
		return errors.New("simulation run: to is before from")
	case r.First.IsZero() != r.Last.IsZero() || r.Last.Before(r.First):
		return errors.New("simulation run: first_record and last_record do not form a span")
	}
	for _, n := range []int64{r.Read, r.Replayed, r.Unchanged, r.NewlyAllowed, r.NewlyDenied, r.Changed, r.NotReplayed, r.Malformed} {
		if n < 0 || n > 1e15 {
			return errors.New("simulation run: a count is negative or beyond 10^15")
		}
	}
	if r.Unchanged+r.NewlyAllowed+r.NewlyDenied+r.Changed != r.Replayed || r.Replayed+r.NotReplayed+r.Malformed != r.Read {
		return errors.New("simulation run: the counts do not add up (replayed = unchanged + newly allowed + newly denied + changed; read = replayed + not replayed + malformed)")
	}
	switch {
	case r.Gate != GatePass && r.Gate != GateAccepted && r.Gate != GateFail:
		return fmt.Errorf("simulation run: gate %q: want %s, %s or %s", r.Gate, GatePass, GateAccepted, GateFail)
	case (r.Gate == GatePass) != (r.NewlyAllowed == 0):
		return errors.New("simulation run: the gate passes exactly when nothing is newly allowed")
	}
	if len(r.ReportSHA256) != 64 || strings.Trim(r.ReportSHA256, "0123456789abcdef") != "" {
		return errors.New("simulation run: report_sha256 must be 64 lowercase hex digits")
	}
	return nil
}

// Detail is the change-log detail of the run: space-separated key=value
// pairs in this fixed order, the revision Go-quoted, times RFC 3339 in UTC
// ("-" for an open bound or no record), e.g.
//
//	revision="sha256:4f2a…" from=2026-12-01T00:00:00Z to=- first=… last=… read=1200 replayed=1180
//	unchanged=1170 newly_allowed=0 newly_denied=10 changed=0 not_replayed=20 malformed=0
//	uncertain=false gate=pass report_sha256=9c1e…
func (r *Run) Detail() string {
	var b strings.Builder
	b.WriteString("revision=")
	b.WriteString(strconv.Quote(r.Revision))
	for _, kv := range r.pairs() {
		b.WriteByte(' ')
		b.WriteString(kv[0])
		b.WriteByte('=')
		b.WriteString(kv[1])
	}
	return b.String()
}

func (r *Run) pairs() [][2]string {
	n := func(v int64) string { return strconv.FormatInt(v, 10) }
	return [][2]string{
		{"from", fmtTime(r.From)}, {"to", fmtTime(r.To)}, {"first", fmtTime(r.First)}, {"last", fmtTime(r.Last)},
		{"read", n(r.Read)}, {"replayed", n(r.Replayed)}, {"unchanged", n(r.Unchanged)}, {"newly_allowed", n(r.NewlyAllowed)},
		{"newly_denied", n(r.NewlyDenied)}, {"changed", n(r.Changed)}, {"not_replayed", n(r.NotReplayed)},
		{"malformed", n(r.Malformed)}, {"uncertain", strconv.FormatBool(r.Uncertain)}, {"gate", r.Gate},
		{"report_sha256", r.ReportSHA256},
	}
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// Parse reads a detail Detail wrote, strictly, and validates the run.
func Parse(detail string) (*Run, error) {
	rest, ok := strings.CutPrefix(detail, "revision=")
	if !ok {
		return nil, errors.New("simulation run detail: does not start with revision=")
	}
	q, err := strconv.QuotedPrefix(rest)
	if err != nil {
		return nil, fmt.Errorf("simulation run detail: revision: %w", err)
	}
	r := &Run{}
	if r.Revision, err = strconv.Unquote(q); err != nil {
		return nil, fmt.Errorf("simulation run detail: revision: %w", err)
	}
	fields := strings.Split(strings.TrimPrefix(rest[len(q):], " "), " ")
	want := r.pairs()
	if len(fields) != len(want) || !strings.HasPrefix(rest[len(q):], " ") {
		return nil, fmt.Errorf("simulation run detail: want %d fields after the revision", len(want))
	}
	times := []*time.Time{&r.From, &r.To, &r.First, &r.Last}
	counts := []*int64{&r.Read, &r.Replayed, &r.Unchanged, &r.NewlyAllowed, &r.NewlyDenied, &r.Changed, &r.NotReplayed, &r.Malformed}
	for i, f := range fields {
		k, v, ok := strings.Cut(f, "=")
		if !ok || k != want[i][0] {
			return nil, fmt.Errorf("simulation run detail: field %d is not %s=", i+2, want[i][0])
		}
		switch {
		case i < len(times):
			if v == "-" {
				continue
			}
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				return nil, fmt.Errorf("simulation run detail: %s: %w", k, err)
			}
			*times[i] = t.UTC()
		case i < len(times)+len(counts):
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("simulation run detail: %s: %w", k, err)
			}
			*counts[i-len(times)] = n
		case k == "uncertain":
			if r.Uncertain, err = strconv.ParseBool(v); err != nil {
				return nil, fmt.Errorf("simulation run detail: %s: %w", k, err)
			}
		case k == "gate":
			r.Gate = v
		default:
			r.ReportSHA256 = v
		}
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	if r.Detail() != detail {
		return nil, errors.New("simulation run detail: not in the canonical form Detail writes")
	}
	return r, nil
}
