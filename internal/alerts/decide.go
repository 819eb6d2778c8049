package alerts

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/agentauthz/agentauthz/internal/anomaly"
	"github.com/agentauthz/agentauthz/internal/ca"
)

// maxReason bounds a responder's note or reason.
const maxReason = 512

// List returns alerts, newest first.
func (s *Service) List(ctx context.Context, f Filter) ([]Alert, error) { return s.db.list(ctx, f) }

// Get returns one alert.
func (s *Service) Get(ctx context.Context, id string) (*Alert, error) { return s.db.get(ctx, id) }

func checkReason(what, r string) error {
	if strings.TrimSpace(r) == "" {
		return fmt.Errorf("%w: a %s is required", ErrInvalid, what)
	}
	if len(r) > maxReason {
		return fmt.Errorf("%w: the %s is longer than %d bytes", ErrInvalid, what, maxReason)
	}
	for _, c := range r {
		if c < 0x20 || c == 0x7f {
			return fmt.Errorf("%w: the %s contains a control character", ErrInvalid, what)
		}
	}
	return nil
}

// Ack records that operator looked at the alert, and why it needs nothing
// more (or what was done), in the change log.
func (s *Service) Ack(ctx context.Context, id, operator, note string) (*Alert, error) {
	if err := checkReason("note", note); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a, err := s.db.get(ctx, id)
	if err != nil {
		return nil, err
	}
	if a.Ack != nil {
		return nil, fmt.Errorf("%w: alert %s was acknowledged by %s at %s", ErrConflict, id, a.Ack.By, a.Ack.At.Format(time.RFC3339))
	}
	if err := s.event(a, EventAck, operator, map[string]string{"note": note}); err != nil {
		return nil, err
	}
	a.Ack = &anomaly.Ack{ID: id, By: operator, Note: note, At: s.cfg.Now().UTC()}
	return a, s.db.update(a)
}

// Approve is a responder's yes: a proposed (or failed) restriction is
// applied now, for its duration from now; an automatic one is kept (the
// review is closed). Both are recorded in the change log with operator.
func (s *Service) Approve(ctx context.Context, id, operator, reason string) (*Alert, error) {
	if err := checkReason("reason", reason); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a, r, err := s.openResponse(ctx, id)
	if err != nil {
		return nil, err
	}
	switch r.State {
	case StatePending, StateFailed:
		why := fmt.Sprintf("anomaly alert %s (%s): proposal approved by %s: %s", a.ID, a.Alert.Rule, operator, reason)
		if err := s.apply(a, operator, why); err != nil {
			return nil, err
		}
		r.State, r.Error = StateApproved, ""
		err = s.event(a, EventApprove, operator, map[string]string{"reason": reason, "action": r.Action.String(), "until": untilText(r.Until)})
	case StateApplied:
		r.State = StateReviewed
		err = s.event(a, EventApprove, operator, map[string]string{"reason": reason, "kept": "the automatic restriction stays until " + untilText(r.Until)})
	}
	if err != nil {
		return nil, err
	}
	now := s.cfg.Now().UTC()
	r.By, r.At, r.Reason = operator, &now, reason
	s.responses.WithLabelValues(r.Mode, r.State).Inc()
	return a, s.db.update(a)
}

// Dismiss is a responder's no: a proposal is dropped; an automatic
// restriction is undone (the agent's previous restriction restored, or
// none) if it is still the one the response set.
func (s *Service) Dismiss(ctx context.Context, id, operator, reason string) (*Alert, error) {
	if err := checkReason("reason", reason); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a, r, err := s.openResponse(ctx, id)
	if err != nil {
		return nil, err
	}
	what := "proposal refused"
	if r.State == StateApplied {
		if what, err = s.undo(a, operator, reason); err != nil {
			return nil, err
		}
	}
	if err := s.event(a, EventDismiss, operator, map[string]string{"reason": reason, "done": what}); err != nil {
		return nil, err
	}
	now := s.cfg.Now().UTC()
	r.State, r.By, r.At, r.Reason = StateDismissed, operator, &now, reason
	s.responses.WithLabelValues(r.Mode, r.State).Inc()
	return a, s.db.update(a)
}

func (s *Service) openResponse(ctx context.Context, id string) (*Alert, *Response, error) {
	a, err := s.db.get(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	r := a.Response
	if r == nil {
		return nil, nil, fmt.Errorf("%w: alert %s has no response to decide (its rule only notifies); acknowledge it instead", ErrConflict, id)
	}
	if !r.Open() {
		return nil, nil, fmt.Errorf("%w: the response to alert %s was already decided (%s by %s)", ErrConflict, id, r.State, r.By)
	}
	if !a.Logged {
		return nil, nil, fmt.Errorf("%w: alert %s is not in the change log yet; retry in a moment", ErrConflict, id)
	}
	return a, r, nil
}

func untilText(t *time.Time) string {
	if t == nil {
		return "lifted"
	}
	return t.UTC().Format(time.RFC3339)
}

// apply sets the response's restriction through the CA inventory (which
// records it in the change log and pushes it to every replica), merged with
// the agent's current restriction: the stricter wins field by field, the
// longer lasts.
func (s *Service) apply(a *Alert, operator, reason string) error {
	r := a.Response
	td, id := a.Alert.Tenant, a.Alert.AgentID
	cur, err := s.cfg.Authority.AgentRestriction(td, id)
	if err != nil {
		return err
	}
	until := s.cfg.Now().Add(r.Action.For())
	req := ca.RestrictRequest{TrustDomain: td, AgentID: id, Quarantine: r.Action.Quarantine, MaxTrust: r.Action.MaxTrust,
		RemoveScopes: slices.Clone(r.Action.RemoveScopes), Until: &until, Reason: fit(reason, maxReason), Operator: operator}
	r.Prev = nil
	if cur != nil {
		r.Prev = fromCA(cur)
		req.Quarantine = req.Quarantine || cur.Quarantined
		if cur.MaxTrust != nil && (req.MaxTrust == nil || *cur.MaxTrust < *req.MaxTrust) {
			req.MaxTrust = cur.MaxTrust
		}
		for _, sc := range cur.RemovedScopes {
			if !slices.Contains(req.RemoveScopes, sc) {
				req.RemoveScopes = append(req.RemoveScopes, sc)
			}
		}
		switch {
		case cur.Until == nil:
			req.Until = nil
		case cur.Until.After(until):
			req.Until = cur.Until
		}
	}
	res, err := s.cfg.Authority.Restrict(req)
	if err != nil {
		return err
	}
	r.Applied, r.Until = fromCA(res), res.Until
	return nil
}

// undo lifts an automatic restriction, or restores the restriction the
// agent had before it, if it is still the one the response set.
func (s *Service) undo(a *Alert, operator, reason string) (string, error) {
	r := a.Response
	td, id := a.Alert.Tenant, a.Alert.AgentID
	cur, err := s.cfg.Authority.AgentRestriction(td, id)
	if err != nil {
		return "", err
	}
	if cur == nil {
		return "the restriction had already ended", nil
	}
	if r.Applied == nil || cur.Reason != r.Applied.Reason {
		return "the agent's restriction was changed since; left as it is", nil
	}
	why := fit(fmt.Sprintf("anomaly alert %s dismissed by %s: %s", a.ID, operator, reason), maxReason)
	if p := r.Prev; p != nil && (p.Until == nil || p.Until.After(s.cfg.Now())) {
		_, err := s.cfg.Authority.Restrict(ca.RestrictRequest{TrustDomain: td, AgentID: id, Quarantine: p.Quarantined, MaxTrust: p.MaxTrust,
			RemoveScopes: p.RemovedScopes, Until: p.Until, Reason: fit("restored: "+p.Reason, maxReason), Operator: operator})
		if err != nil {
			return "", err
		}
		return "the automatic restriction undone; the previous restriction restored", nil
	}
	if err := s.cfg.Authority.Lift(td, id, why, operator); err != nil {
		return "", err
	}
	return "the automatic restriction lifted", nil
}

func fromCA(c *ca.Restriction) *Restriction {
	return &Restriction{Quarantined: c.Quarantined, MaxTrust: c.MaxTrust, RemovedScopes: c.RemovedScopes, Until: c.Until,
		Reason: c.Reason, SetAt: c.SetAt}
}
