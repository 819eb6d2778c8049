package ca

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/agentauthz/agentauthz/internal/revocation"
)

// maxReasonLen bounds a restriction's reason text.
const maxReasonLen = 512

// Restriction takes away from one agent without a new certificate: a
// quarantine, a lower trust level, removed scopes, until an optional time. It
// is fleet-wide state: the revocation publisher pushes it to every replica,
// where it reaches policy as data.agentauthz.restrictions.
type Restriction struct {
	TrustDomain   string     `json:"trust_domain"`
	AgentID       string     `json:"agent_id"`
	Quarantined   bool       `json:"quarantined"`
	MaxTrust      *int       `json:"max_trust,omitempty"`
	RemovedScopes []string   `json:"removed_scopes"`
	Until         *time.Time `json:"until,omitempty"`
	Reason        string     `json:"reason"`
	Operator      string     `json:"operator"`
	SetAt         time.Time  `json:"set_at"`
}

// PolicyEntry is the restriction as the shipped policy reads it (see
// docs/policies.md, "Restrictions").
func (r *Restriction) PolicyEntry() map[string]any {
	e := map[string]any{"quarantined": r.Quarantined, "removed_scopes": r.RemovedScopes, "note": r.Reason}
	if e["removed_scopes"] == nil {
		e["removed_scopes"] = []string{}
	}
	if r.MaxTrust != nil {
		e["max_trust"] = *r.MaxTrust
	}
	if r.Until != nil {
		e["until"] = r.Until.UTC().Format(time.RFC3339)
	}
	return e
}

// RestrictRequest sets an agent's restriction, replacing the one it had.
type RestrictRequest struct {
	TrustDomain  string
	AgentID      string
	Quarantine   bool
	MaxTrust     *int
	RemoveScopes []string
	// Until ends the restriction; nil keeps it until lifted.
	Until    *time.Time
	Reason   string
	Operator string
}

// Restrict validates req against the inventory and stores it, replacing the
// agent's previous restriction. A restriction can only take away: a max trust
// above the certificate's or a scope the agent does not hold is refused, so
// a typo cannot pass for a restriction that does nothing.
func (a *Authority) Restrict(req RestrictRequest) (*Restriction, error) {
	if err := ValidateAgentID(req.AgentID); err != nil {
		return nil, err
	}
	if err := validateOperator(req.Operator); err != nil {
		return nil, err
	}
	if strings.TrimSpace(req.Reason) == "" {
		return nil, fieldf("reason", "a restriction needs a reason")
	}
	if err := validateText("reason", req.Reason, maxReasonLen); err != nil {
		return nil, err
	}
	if !req.Quarantine && req.MaxTrust == nil && len(req.RemoveScopes) == 0 {
		return nil, fieldf("restriction", "nothing to restrict: give --quarantine, --max-trust or --remove-scope")
	}
	if req.MaxTrust != nil && (*req.MaxTrust < 0 || *req.MaxTrust > 4) {
		return nil, fieldf("trust", "max trust must be L0 to L4")
	}
	var scopes []string
	if len(req.RemoveScopes) > 0 {
		var err error
		if scopes, err = NormalizeScopes(req.RemoveScopes); err != nil {
			return nil, err
		}
	}
	now := a.now()
	if req.Until != nil {
		// Stored with second precision: round up, never end early.
		u := req.Until.UTC().Truncate(time.Second)
		if u.Before(*req.Until) {
			u = u.Add(time.Second)
		}
		req.Until = &u
	}
	if req.Until != nil && !req.Until.After(now) {
		return nil, fieldf("until", "until %s is not in the future", req.Until.UTC().Format(time.RFC3339))
	}
	r := &Restriction{TrustDomain: req.TrustDomain, AgentID: req.AgentID, Quarantined: req.Quarantine, MaxTrust: req.MaxTrust,
		RemovedScopes: scopes, Until: req.Until, Reason: req.Reason, Operator: req.Operator, SetAt: now}
	if r.RemovedScopes == nil {
		r.RemovedScopes = []string{}
	}
	err := a.tx(context.Background(), func(tx *sql.Tx) error {
		ag, err := a.agent(tx, req.TrustDomain, req.AgentID)
		if err != nil {
			return err
		}
		if req.MaxTrust != nil && *req.MaxTrust > ag.Trust {
			return fieldf("trust", "max trust L%d is above the certificate's %s: a restriction can only lower it", *req.MaxTrust, ag.TrustLabel)
		}
		for _, s := range scopes {
			if !slices.Contains(ag.Scopes, s) {
				return fieldf("scope", "agent %q does not hold scope %q", req.AgentID, s)
			}
		}
		sj, _ := json.Marshal(r.RemovedScopes)
		var maxTrust, until any
		if r.MaxTrust != nil {
			maxTrust = *r.MaxTrust
		}
		if r.Until != nil {
			until = fmtTime(*r.Until)
		}
		q := 0
		if r.Quarantined {
			q = 1
		}
		if _, err := tx.Exec(`INSERT INTO restrictions (tenant, agent_id, quarantined, max_trust, removed_scopes, until, reason, operator, set_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (tenant, agent_id) DO UPDATE SET quarantined = excluded.quarantined, max_trust = excluded.max_trust,
			removed_scopes = excluded.removed_scopes, until = excluded.until, reason = excluded.reason,
			operator = excluded.operator, set_at = excluded.set_at`,
			r.TrustDomain, r.AgentID, q, maxTrust, string(sj), until, r.Reason, r.Operator, fmtEvent(now)); err != nil {
			return fmt.Errorf("store restriction: %w", err)
		}
		if err := a.addEvent(tx, now, r.TrustDomain, r.AgentID, "", "restrict", r.Operator, r.describe()); err != nil {
			return err
		}
		return bumpRevocation(tx, r.TrustDomain)
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// describe is the event detail of a restriction.
func (r *Restriction) describe() string {
	var parts []string
	if r.Quarantined {
		parts = append(parts, "quarantine")
	}
	if r.MaxTrust != nil {
		parts = append(parts, fmt.Sprintf("max_trust=L%d", *r.MaxTrust))
	}
	if len(r.RemovedScopes) > 0 {
		parts = append(parts, "remove_scopes="+strings.Join(r.RemovedScopes, ","))
	}
	if r.Until != nil {
		parts = append(parts, "until="+fmtTime(*r.Until))
	}
	parts = append(parts, "reason="+r.Reason)
	return strings.Join(parts, " ")
}

// Lift removes an agent's restriction. An agent without one is ErrNotFound.
func (a *Authority) Lift(td, agentID, reason, operator string) error {
	if err := ValidateAgentID(agentID); err != nil {
		return err
	}
	if err := validateOperator(operator); err != nil {
		return err
	}
	if strings.TrimSpace(reason) == "" {
		return fieldf("reason", "lifting a restriction needs a reason")
	}
	if err := validateText("reason", reason, maxReasonLen); err != nil {
		return err
	}
	return a.tx(context.Background(), func(tx *sql.Tx) error {
		res, err := tx.Exec(`DELETE FROM restrictions WHERE tenant = ? AND agent_id = ?`, td, agentID)
		if err != nil {
			return fmt.Errorf("lift restriction: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			if _, err := a.agent(tx, td, agentID); err != nil {
				return err
			}
			return fmt.Errorf("%w: agent %q in trust domain %q has no restriction", ErrNotFound, agentID, td)
		}
		if err := a.addEvent(tx, a.now(), td, agentID, "", "lift", operator, "reason="+reason); err != nil {
			return err
		}
		return bumpRevocation(tx, td)
	})
}

// ListRestrictions returns the tenant's restrictions in force (not past their
// until), by agent id.
func (a *Authority) ListRestrictions(td string) ([]Restriction, error) {
	return a.restrictions(`WHERE tenant = ?`, td)
}

// AgentRestriction returns an agent's restriction, or nil when it has none
// in force.
func (a *Authority) AgentRestriction(td, agentID string) (*Restriction, error) {
	rs, err := a.restrictions(`WHERE tenant = ? AND agent_id = ?`, td, agentID)
	if err != nil || len(rs) == 0 {
		return nil, err
	}
	return &rs[0], nil
}

func (a *Authority) restrictions(where string, args ...any) ([]Restriction, error) {
	rows, err := a.db.Query(`SELECT tenant, agent_id, quarantined, max_trust, removed_scopes, until, reason, operator, set_at
		FROM restrictions `+where+` ORDER BY tenant, agent_id`, args...)
	if err != nil {
		return nil, a.storeErr(err)
	}
	defer rows.Close()
	now := a.now()
	var out []Restriction
	for rows.Next() {
		var r Restriction
		var q int
		var maxTrust sql.NullInt64
		var scopes, setAt string
		var until sql.NullString
		if err := rows.Scan(&r.TrustDomain, &r.AgentID, &q, &maxTrust, &scopes, &until, &r.Reason, &r.Operator, &setAt); err != nil {
			return nil, a.storeErr(err)
		}
		r.Quarantined = q == 1
		if maxTrust.Valid {
			v := int(maxTrust.Int64)
			r.MaxTrust = &v
		}
		if err := json.Unmarshal([]byte(scopes), &r.RemovedScopes); err != nil {
			return nil, a.corrupt(fmt.Errorf("restriction of %q: removed scopes: %w", r.AgentID, err))
		}
		if until.Valid {
			t, err := time.Parse(time.RFC3339, until.String)
			if err != nil {
				return nil, a.corrupt(fmt.Errorf("restriction of %q: until: %w", r.AgentID, err))
			}
			if !t.After(now) {
				continue // expired; the policy would ignore it too
			}
			r.Until = &t
		}
		r.SetAt = parseTime(setAt)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, a.storeErr(err)
	}
	return out, nil
}

// ParseUntil parses a restriction's --until: a duration from now ("2h",
// "30m") or an RFC 3339 time. It must lie in the future.
func ParseUntil(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return time.Time{}, fieldf("until", "until %q is not in the future", s)
		}
		return now.Add(d).Truncate(time.Second), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fieldf("until", "until %q is neither a duration (2h, 30m) nor an RFC 3339 time", s)
	}
	if !t.After(now) {
		return time.Time{}, fieldf("until", "until %s is not in the future", t.UTC().Format(time.RFC3339))
	}
	return t, nil
}

// PushRestrictions is the tenant's restrictions in force as the JSON object
// replicas receive over the watch channel: data.agentauthz.restrictions of
// that tenant, by agent id.
func (a *Authority) PushRestrictions(td string) ([]byte, error) {
	if _, err := a.tdConfig(a.db, td); err != nil {
		return nil, err
	}
	rs, err := a.ListRestrictions(td)
	if err != nil {
		return nil, err
	}
	m := make(map[string]any, len(rs))
	for i := range rs {
		m[rs[i].AgentID] = rs[i].PolicyEntry()
	}
	return json.Marshal(m)
}

// SignPush signs a watch event's PushMessage with the trust domain's CA key.
func (a *Authority) SignPush(td string, msg []byte) ([]byte, error) {
	s, err := a.loadCA(td)
	if err != nil {
		return nil, err
	}
	return revocation.SignPush(s.key, msg)
}
