package alerts

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/agentauthz/agentauthz/internal/anomaly"
)

// Response modes, per detector rule (EU AI Act Art. 14: a human decides,
// or reviews what was decided for them).
const (
	// ModeNotify raises the alert and changes nothing.
	ModeNotify = "notify"
	// ModePropose stores a proposed restriction that takes effect only when
	// a responder approves it.
	ModePropose = "propose"
	// ModeAuto applies the restriction at once, with an expiry, and leaves
	// a review open until a responder approves (keeps) or dismisses (undoes)
	// it.
	ModeAuto = "auto"
)

// Response states.
const (
	StatePending   = "pending"   // proposed, waiting for a responder
	StateApplied   = "applied"   // applied automatically, review open
	StateFailed    = "failed"    // could not be applied (see Error); a responder may approve to retry
	StateApproved  = "approved"  // a proposal a responder approved: applied
	StateReviewed  = "reviewed"  // an automatic restriction a responder kept
	StateDismissed = "dismissed" // a responder refused the proposal or undid the automatic restriction
)

// DefaultFor is how long a response's restriction lasts unless the rule
// says otherwise.
const DefaultFor = time.Hour

// maxFor bounds a response's duration: an automatic restriction is a
// stopgap, not a decision.
const maxFor = 7 * 24 * time.Hour

// Action is the restriction a response applies, for For from when it is
// applied.
type Action struct {
	Quarantine   bool     `json:"quarantine,omitempty"`
	MaxTrust     *int     `json:"max_trust,omitempty"`
	RemoveScopes []string `json:"remove_scopes,omitempty"`
	ForSeconds   int64    `json:"for_seconds"`
}

// For is how long the restriction lasts.
func (a Action) For() time.Duration { return time.Duration(a.ForSeconds) * time.Second }

// String is the action as a responder reads it: "quarantine for 1h0m0s".
func (a Action) String() string {
	var parts []string
	if a.Quarantine {
		parts = append(parts, "quarantine")
	}
	if a.MaxTrust != nil {
		parts = append(parts, fmt.Sprintf("max trust L%d", *a.MaxTrust))
	}
	if len(a.RemoveScopes) > 0 {
		parts = append(parts, "remove scopes "+strings.Join(a.RemoveScopes, ","))
	}
	return strings.Join(parts, ", ") + " for " + a.For().String()
}

// Rule is the response configured for one detector rule.
type Rule struct {
	Mode   string `json:"mode"`
	Action Action `json:"action"`
}

// Responses maps detector rules to their response; a rule not in it is
// ModeNotify.
type Responses map[string]Rule

// For returns the response of rule.
func (r Responses) For(rule string) Rule {
	if x, ok := r[rule]; ok {
		return x
	}
	return Rule{Mode: ModeNotify}
}

// ParseResponse parses RULE=MODE[:ACTION][:DURATION], e.g.
// "scope_probing=auto:quarantine:1h", "new_source_network=propose:max-trust=L1:4h",
// "rate_burst=propose:remove-scope=payments:initiate,refunds:issue:30m" or
// "off_hours=notify". ACTION is quarantine (the default), max-trust=Ln or
// remove-scope=S[,S…]; DURATION defaults to 1h and is at most 7 days.
func ParseResponse(s string) (string, Rule, error) {
	rule, spec, ok := strings.Cut(s, "=")
	if !ok {
		return "", Rule{}, fmt.Errorf("response %q: want RULE=MODE[:ACTION][:DURATION]", s)
	}
	if !slices.Contains(anomaly.Rules, rule) {
		return "", Rule{}, fmt.Errorf("response %q: unknown rule %q (one of %s)", s, rule, strings.Join(anomaly.Rules, ", "))
	}
	if rule == anomaly.RuleIdentityFailures && spec != ModeNotify {
		return "", Rule{}, fmt.Errorf("response %q: identity failures have no agent to restrict; only notify", s)
	}
	if rule == anomaly.RuleSuppressed && spec != ModeNotify {
		return "", Rule{}, fmt.Errorf("response %q: a count of alerts held back has no agent to restrict; only notify", s)
	}
	mode, rest, _ := strings.Cut(spec, ":")
	r := Rule{Mode: mode, Action: Action{ForSeconds: int64(DefaultFor / time.Second)}}
	switch mode {
	case ModeNotify:
		if rest != "" {
			return "", Rule{}, fmt.Errorf("response %q: notify takes no action", s)
		}
		return rule, r, nil
	case ModePropose, ModeAuto:
	default:
		return "", Rule{}, fmt.Errorf("response %q: mode %q is not notify, propose or auto", s, mode)
	}
	if i := strings.LastIndex(rest, ":"); i >= 0 || rest != "" {
		// A trailing duration, if it parses as one.
		last := rest[i+1:]
		if d, err := time.ParseDuration(last); err == nil {
			if d <= 0 || d > maxFor {
				return "", Rule{}, fmt.Errorf("response %q: duration %s outside (0, %s]", s, d, maxFor)
			}
			r.Action.ForSeconds = int64(d.Round(time.Second) / time.Second)
			if i >= 0 {
				rest = rest[:i]
			} else {
				rest = ""
			}
		}
	}
	switch {
	case rest == "" || rest == "quarantine":
		r.Action.Quarantine = true
	case strings.HasPrefix(rest, "max-trust="):
		v := strings.TrimPrefix(rest, "max-trust=")
		n, err := strconv.Atoi(strings.TrimPrefix(strings.ToUpper(v), "L"))
		if err != nil || n < 0 || n > 4 {
			return "", Rule{}, fmt.Errorf("response %q: max-trust %q is not L0..L4", s, v)
		}
		r.Action.MaxTrust = &n
	case strings.HasPrefix(rest, "remove-scope="):
		for sc := range strings.SplitSeq(strings.TrimPrefix(rest, "remove-scope="), ",") {
			if sc == "" {
				return "", Rule{}, fmt.Errorf("response %q: an empty scope", s)
			}
			r.Action.RemoveScopes = append(r.Action.RemoveScopes, sc)
		}
	default:
		return "", Rule{}, fmt.Errorf("response %q: action %q is not quarantine, max-trust=Ln or remove-scope=S[,S…]", s, rest)
	}
	return rule, r, nil
}

// ParseResponses parses every --respond value; a rule given twice is an
// error.
func ParseResponses(specs []string) (Responses, error) {
	out := Responses{}
	for _, s := range specs {
		rule, r, err := ParseResponse(s)
		if err != nil {
			return nil, err
		}
		if _, dup := out[rule]; dup {
			return nil, errors.New("response for rule " + rule + " given twice")
		}
		out[rule] = r
	}
	return out, nil
}
