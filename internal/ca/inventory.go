package ca

import (
	"cmp"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Agent is an agent's inventory row: its current attributes and status.
type Agent struct {
	TrustDomain      string        `json:"trust_domain"`
	ID               string        `json:"agent_id"`
	SPIFFEID         string        `json:"spiffe_id"`
	Trust            int           `json:"-"`
	TrustLabel       string        `json:"trust"`
	Scopes           []string      `json:"scopes"`
	Owner            string        `json:"owner,omitempty"`
	TTL              time.Duration `json:"-"`
	KeyType          string        `json:"key_type"`
	Status           string        `json:"status"` // active or revoked
	RevokedAt        *time.Time    `json:"revoked_at,omitempty"`
	RevocationReason string        `json:"revocation_reason,omitempty"`
	CreatedAt        time.Time     `json:"created_at"`
	UpdatedAt        time.Time     `json:"updated_at"`
}

// Event is one entry of the append-only lifecycle log.
type Event struct {
	Seq         int64     `json:"seq"`
	At          time.Time `json:"at"`
	TrustDomain string    `json:"trust_domain"`
	AgentID     string    `json:"agent_id,omitempty"`
	Serial      string    `json:"serial,omitempty"`
	Event       string    `json:"event"`
	Operator    string    `json:"operator"`
	Detail      string    `json:"detail,omitempty"`
}

// AgentDetail is everything the inventory knows about one agent.
type AgentDetail struct {
	Agent        Agent         `json:"agent"`
	Certificates []Certificate `json:"certificates"`
	Events       []Event       `json:"events"`
	// Restriction is the agent's restriction in force, if any.
	Restriction *Restriction `json:"restriction,omitempty"`
}

type queryer interface {
	QueryRow(string, ...any) *sql.Row
	Query(string, ...any) (*sql.Rows, error)
}

func (a *Authority) agent(q queryer, td, id string) (*Agent, error) {
	var ag Agent
	var scopes, created, updated string
	var revokedAt, reason sql.NullString
	var ttl int64
	err := q.QueryRow(`SELECT trust, scopes, owner, ttl_seconds, key_type, status, revoked_at, revocation_reason, created_at, updated_at
		FROM agents WHERE tenant = ? AND agent_id = ?`, td, id).
		Scan(&ag.Trust, &scopes, &ag.Owner, &ttl, &ag.KeyType, &ag.Status, &revokedAt, &reason, &created, &updated)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: no agent %q in trust domain %q", ErrNotFound, id, td)
	}
	if err != nil {
		return nil, &StoreError{Path: a.dbPath, Err: err}
	}
	if err := json.Unmarshal([]byte(scopes), &ag.Scopes); err != nil {
		return nil, a.corrupt(fmt.Errorf("agent %q scopes: %w", id, err))
	}
	ag.TrustDomain, ag.ID, ag.SPIFFEID, ag.TrustLabel = td, id, SPIFFEID(td, id), TrustLabel(ag.Trust)
	ag.TTL = time.Duration(ttl) * time.Second
	if revokedAt.Valid {
		t := parseTime(revokedAt.String)
		ag.RevokedAt = &t
	}
	ag.RevocationReason = reason.String
	ag.CreatedAt, ag.UpdatedAt = parseTime(created), parseTime(updated)
	return &ag, nil
}

// ListFilter selects inventory rows; empty fields match everything.
type ListFilter struct {
	TrustDomain string
	AgentID     string
	Serial      string // normalised hex, see ParseSerial
}

// List returns certificates from the inventory, oldest first. A stored
// "active" certificate past its NotAfter is reported as "expired".
func (a *Authority) List(f ListFilter) ([]Certificate, error) {
	var where []string
	var args []any
	for col, v := range map[string]string{"tenant": f.TrustDomain, "agent_id": f.AgentID, "serial": f.Serial} {
		if v != "" {
			where = append(where, col+" = ?")
			args = append(args, v)
		}
	}
	q := `SELECT tenant, serial, agent_id, trust, scopes, owner, key_type, not_before, not_after, status, revoked_at,
		revocation_reason, operator, issued_at, pem FROM certificates`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY issued_at, tenant, agent_id, serial"
	rows, err := a.db.Query(q, args...)
	if err != nil {
		return nil, &StoreError{Path: a.dbPath, Err: err}
	}
	defer rows.Close()
	now := a.now()
	var out []Certificate
	for rows.Next() {
		var c Certificate
		var trust int
		var scopes, nb, na, issued string
		var revokedAt, reason sql.NullString
		if err := rows.Scan(&c.TrustDomain, &c.Serial, &c.AgentID, &trust, &scopes, &c.Owner, &c.KeyType, &nb, &na,
			&c.Status, &revokedAt, &reason, &c.Operator, &issued, &c.PEM); err != nil {
			return nil, &StoreError{Path: a.dbPath, Err: err}
		}
		if err := json.Unmarshal([]byte(scopes), &c.Scopes); err != nil {
			return nil, a.corrupt(fmt.Errorf("certificate %s scopes: %w", c.Serial, err))
		}
		c.SPIFFEID, c.Trust = SPIFFEID(c.TrustDomain, c.AgentID), TrustLabel(trust)
		c.NotBefore, c.NotAfter, c.IssuedAt = parseTime(nb), parseTime(na), parseTime(issued)
		if revokedAt.Valid {
			t := parseTime(revokedAt.String)
			c.RevokedAt = &t
		}
		c.RevocationReason = reason.String
		if c.Status == "active" && now.After(c.NotAfter) {
			c.Status = "expired"
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, &StoreError{Path: a.dbPath, Err: err}
	}
	return out, nil
}

// AgentSummary is an agent as a fleet overview shows it: from its newest
// certificate.
type AgentSummary struct {
	TrustDomain, AgentID, SPIFFEID string
	Trust, Owner                   string
	Status                         string // of the newest certificate: active, revoked or expired
	NotAfter                       time.Time
}

// Fleet returns every agent's summary, by trust domain then agent id. It
// reads eight columns of each certificate, not the whole of it: the
// console's fleet page reads the inventory this way (at 10,000 agents,
// List took most of a cold page's time).
func (a *Authority) Fleet() ([]AgentSummary, error) {
	rows, err := a.db.Query(`SELECT tenant, agent_id, trust, owner, not_after, status FROM certificates
		ORDER BY tenant, agent_id, issued_at, serial`)
	if err != nil {
		return nil, &StoreError{Path: a.dbPath, Err: err}
	}
	defer rows.Close()
	now := a.now()
	var out []AgentSummary
	for rows.Next() {
		var s AgentSummary
		var trust int
		var na string
		if err := rows.Scan(&s.TrustDomain, &s.AgentID, &trust, &s.Owner, &na, &s.Status); err != nil {
			return nil, &StoreError{Path: a.dbPath, Err: err}
		}
		s.SPIFFEID, s.Trust, s.NotAfter = SPIFFEID(s.TrustDomain, s.AgentID), TrustLabel(trust), parseTime(na)
		if s.Status == "active" && now.After(s.NotAfter) {
			s.Status = "expired"
		}
		if n := len(out); n > 0 && out[n-1].TrustDomain == s.TrustDomain && out[n-1].AgentID == s.AgentID {
			out[n-1] = s // a newer certificate of the same agent
			continue
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		return nil, &StoreError{Path: a.dbPath, Err: err}
	}
	// In byte order on either database (PostgreSQL's collation may
	// differ); already so on SQLite.
	slices.SortFunc(out, func(x, y AgentSummary) int {
		return cmp.Or(strings.Compare(x.TrustDomain, y.TrustDomain), strings.Compare(x.AgentID, y.AgentID))
	})
	return out, nil
}

// Show returns an agent with all its certificates and events.
func (a *Authority) Show(td, id string) (*AgentDetail, error) {
	if err := ValidateAgentID(id); err != nil {
		return nil, err
	}
	ag, err := a.agent(a.db, td, id)
	if err != nil {
		return nil, err
	}
	certs, err := a.List(ListFilter{TrustDomain: td, AgentID: id})
	if err != nil {
		return nil, err
	}
	events, err := a.Events(td, id)
	if err != nil {
		return nil, err
	}
	restr, err := a.AgentRestriction(td, id)
	if err != nil {
		return nil, err
	}
	return &AgentDetail{Agent: *ag, Certificates: certs, Events: events, Restriction: restr}, nil
}

// Events returns lifecycle events in order; an empty agentID means every
// event of the trust domain (including CA events), an empty td every event.
func (a *Authority) Events(td, agentID string) ([]Event, error) {
	return a.events(`SELECT seq, at, tenant, agent_id, serial, event, operator, detail FROM events WHERE (? = '' OR tenant = ?) AND (? = '' OR agent_id = ?) ORDER BY seq`,
		td, td, agentID, agentID)
}

// LastEvents returns the newest n events of the given kinds ("revoke",
// "agent_revoke", …), newest first: the database filters them, so a long
// change log is not read into memory.
func (a *Authority) LastEvents(n int, kinds ...string) ([]Event, error) {
	if n <= 0 || len(kinds) == 0 || len(kinds) > 16 {
		return nil, fmt.Errorf("last events: %d of %d kinds", n, len(kinds))
	}
	args := make([]any, 0, len(kinds)+1)
	for _, k := range kinds {
		args = append(args, k)
	}
	//nolint:gosec // built from fixed fragments and ? placeholders; the values are arguments
	return a.events(`SELECT seq, at, tenant, agent_id, serial, event, operator, detail FROM events WHERE event IN (?`+
		strings.Repeat(", ?", len(kinds)-1)+`) ORDER BY seq DESC LIMIT ?`, append(args, n)...)
}

func (a *Authority) events(q string, args ...any) ([]Event, error) {
	rows, err := a.db.Query(q, args...)
	if err != nil {
		return nil, &StoreError{Path: a.dbPath, Err: err}
	}
	defer rows.Close()
	var out []Event
	for rows.Next() {
		var e Event
		var at string
		if err := rows.Scan(&e.Seq, &at, &e.TrustDomain, &e.AgentID, &e.Serial, &e.Event, &e.Operator, &e.Detail); err != nil {
			return nil, &StoreError{Path: a.dbPath, Err: err}
		}
		e.At = parseTime(at)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, &StoreError{Path: a.dbPath, Err: err}
	}
	return out, nil
}

// FindAgent returns the trust domains that hold an agent with this id, so a
// caller can resolve an id given without a trust domain.
func (a *Authority) FindAgent(id string) ([]string, error) {
	return a.tenants(`SELECT tenant FROM agents WHERE agent_id = ? ORDER BY tenant`, id)
}

// tenants runs a query whose single column is a trust domain.
func (a *Authority) tenants(query string, arg any) ([]string, error) {
	rows, err := a.db.Query(query, arg)
	if err != nil {
		return nil, &StoreError{Path: a.dbPath, Err: err}
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var td string
		if err := rows.Scan(&td); err != nil {
			return nil, &StoreError{Path: a.dbPath, Err: err}
		}
		out = append(out, td)
	}
	return out, rows.Err()
}
