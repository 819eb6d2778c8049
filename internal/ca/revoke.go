package ca

import (
	"context"
	"crypto/x509"
	"database/sql"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// Revoke revokes every active certificate of an agent and marks the agent
// revoked, so that the agent ID itself is refused until Renew or Reissue. It
// returns the revoked serials. Other agents are untouched.
func (a *Authority) Revoke(td, agentID string, reason Reason, operator string) ([]string, error) {
	if err := ValidateAgentID(agentID); err != nil {
		return nil, err
	}
	if _, ok := reasonNames[reason]; !ok {
		return nil, fieldf("reason", "unsupported revocation reason %d", int(reason))
	}
	if err := validateOperator(operator); err != nil {
		return nil, err
	}
	var serials []string
	err := a.tx(context.Background(), func(tx *sql.Tx) error {
		ag, err := a.agent(tx, td, agentID)
		if err != nil {
			return err
		}
		if ag.Status == "revoked" {
			return fieldf("agent", "agent %q is already revoked (%s)", agentID, ag.RevocationReason)
		}
		rows, err := tx.Query(`SELECT serial FROM certificates WHERE tenant = ? AND agent_id = ? AND status = 'active' ORDER BY serial`, td, agentID)
		if err != nil {
			return err
		}
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				rows.Close()
				return err
			}
			serials = append(serials, s)
		}
		rows.Close()
		now := a.now()
		if _, err := a.revokeActive(tx, now, td, agentID, reason, operator); err != nil {
			return err
		}
		if _, err := tx.Exec(`UPDATE agents SET status = 'revoked', revoked_at = ?, revocation_reason = ?, updated_at = ? WHERE tenant = ? AND agent_id = ?`,
			fmtTime(now), reason.String(), fmtTime(now), td, agentID); err != nil {
			return fmt.Errorf("revoke agent: %w", err)
		}
		if err := a.addEvent(tx, now, td, agentID, "", "agent_revoke", operator, "reason="+reason.String()); err != nil {
			return err
		}
		return bumpRevocation(tx, td)
	})
	if err != nil {
		return nil, err
	}
	return serials, nil
}

// RevokeSerial revokes one certificate. The agent's other certificates and
// its agent-level status are untouched.
func (a *Authority) RevokeSerial(td, serial string, reason Reason, operator string) error {
	s, err := ParseSerial(serial)
	if err != nil {
		return err
	}
	if _, ok := reasonNames[reason]; !ok {
		return fieldf("reason", "unsupported revocation reason %d", int(reason))
	}
	if err := validateOperator(operator); err != nil {
		return err
	}
	return a.tx(context.Background(), func(tx *sql.Tx) error {
		var agentID, status string
		err := tx.QueryRow(`SELECT agent_id, status FROM certificates WHERE tenant = ? AND serial = ?`, td, s).Scan(&agentID, &status)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: no certificate with serial %s in trust domain %q", ErrNotFound, s, td)
		}
		if err != nil {
			return err
		}
		if status != "active" {
			return fieldf("serial", "certificate %s is already revoked", s)
		}
		now := a.now()
		if _, err := tx.Exec(`UPDATE certificates SET status = 'revoked', revoked_at = ?, revocation_reason = ? WHERE tenant = ? AND serial = ?`,
			fmtTime(now), reason.String(), td, s); err != nil {
			return fmt.Errorf("revoke certificate: %w", err)
		}
		if err := a.addEvent(tx, now, td, agentID, s, "revoke", operator, "reason="+reason.String()); err != nil {
			return err
		}
		return bumpRevocation(tx, td)
	})
}

// FindSerial returns the trust domains holding a certificate with this serial.
func (a *Authority) FindSerial(serial string) ([]string, error) {
	s, err := ParseSerial(serial)
	if err != nil {
		return nil, err
	}
	return a.tenants(`SELECT tenant FROM certificates WHERE serial = ? ORDER BY tenant`, s)
}

// revokeActive revokes all active certificates of an agent inside tx and
// records one event per certificate.
func (a *Authority) revokeActive(tx *sql.Tx, now time.Time, td, agentID string, reason Reason, operator string) (int, error) {
	rows, err := tx.Query(`SELECT serial FROM certificates WHERE tenant = ? AND agent_id = ? AND status = 'active'`, td, agentID)
	if err != nil {
		return 0, err
	}
	var serials []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			rows.Close()
			return 0, err
		}
		serials = append(serials, s)
	}
	rows.Close()
	for _, s := range serials {
		if _, err := tx.Exec(`UPDATE certificates SET status = 'revoked', revoked_at = ?, revocation_reason = ? WHERE tenant = ? AND serial = ?`,
			fmtTime(now), reason.String(), td, s); err != nil {
			return 0, fmt.Errorf("revoke certificate: %w", err)
		}
		if err := a.addEvent(tx, now, td, agentID, s, "revoke", operator, "reason="+reason.String()); err != nil {
			return 0, err
		}
	}
	return len(serials), nil
}

// RevokedAgents lists the agent ids of a trust domain under an agent-level
// revocation (Revoke), sorted.
func (a *Authority) RevokedAgents(td string) ([]string, error) {
	rows, err := a.db.Query(`SELECT agent_id FROM agents WHERE tenant = ? AND status = 'revoked' ORDER BY agent_id`, td)
	if err != nil {
		return nil, &StoreError{Path: a.dbPath, Err: err}
	}
	defer rows.Close()
	out := []string{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, &StoreError{Path: a.dbPath, Err: err}
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

// CRL signs a new CRL for td valid for nextUpdate (0 means
// DefaultCRLValidity), with the next CRL number, and returns its DER. It lists
// every revoked certificate that has not yet expired, with its reason code.
func (a *Authority) CRL(td string, nextUpdate time.Duration) ([]byte, error) {
	return a.crl(td, nextUpdate, false)
}

// CurrentCRL returns the last CRL of td when the revocation state has not
// changed since it was signed and it is less than half-way to its
// nextUpdate; otherwise it signs a fresh one (DefaultCRLValidity).
func (a *Authority) CurrentCRL(td string) ([]byte, error) {
	return a.crl(td, DefaultCRLValidity, true)
}

func (a *Authority) crl(td string, validity time.Duration, reuse bool) ([]byte, error) {
	if validity == 0 {
		validity = DefaultCRLValidity
	}
	if validity < time.Minute || validity > 366*24*time.Hour {
		return nil, fieldf("crl_validity", "crl validity %s must be between 1m and 8784h", validity)
	}
	if reuse {
		// Fast path without the write lock.
		var gen, crlGen int64
		var der []byte
		var this, next sql.NullString
		err := a.db.QueryRow(`SELECT revocation_generation, crl_generation, crl_der, crl_this_update, crl_next_update FROM trust_domains WHERE name = ?`, td).
			Scan(&gen, &crlGen, &der, &this, &next)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("%w: no CA for trust domain %q", ErrNotFound, td)
		}
		if err != nil {
			return nil, &StoreError{Path: a.dbPath, Err: err}
		}
		if fresh(gen, crlGen, der, this, next, a.now()) {
			return der, nil
		}
	}
	s, err := a.loadCA(td)
	if err != nil {
		return nil, err
	}
	var out []byte
	err = a.tx(context.Background(), func(tx *sql.Tx) error {
		var gen, crlGen, number int64
		var der []byte
		var this, next sql.NullString
		err := tx.QueryRow(`SELECT revocation_generation, crl_generation, crl_number, crl_der, crl_this_update, crl_next_update FROM trust_domains WHERE name = ?`, td).
			Scan(&gen, &crlGen, &number, &der, &this, &next)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: no CA for trust domain %q", ErrNotFound, td)
		}
		if err != nil {
			return err
		}
		now := a.now()
		if reuse && fresh(gen, crlGen, der, this, next, now) { // another process signed it meanwhile
			out = der
			return nil
		}
		rows, err := tx.Query(`SELECT serial, revoked_at, revocation_reason FROM certificates
			WHERE tenant = ? AND status = 'revoked' AND not_after >= ? ORDER BY revoked_at, serial`, td, fmtTime(now))
		if err != nil {
			return err
		}
		var entries []x509.RevocationListEntry
		for rows.Next() {
			var serial, at, reason string
			if err := rows.Scan(&serial, &at, &reason); err != nil {
				rows.Close()
				return err
			}
			n, ok := new(big.Int).SetString(serial, 16)
			if !ok {
				rows.Close()
				return a.corrupt(fmt.Errorf("bad serial %q", serial))
			}
			r, err := ParseReason(reason)
			if err != nil {
				rows.Close()
				return a.corrupt(err)
			}
			entries = append(entries, x509.RevocationListEntry{SerialNumber: n, RevocationTime: parseTime(at), ReasonCode: int(r)})
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		number++
		thisUpdate := now.UTC().Truncate(time.Second)
		tmpl := &x509.RevocationList{
			Number:                    big.NewInt(number),
			ThisUpdate:                thisUpdate,
			NextUpdate:                thisUpdate.Add(validity),
			RevokedCertificateEntries: entries,
		}
		crl, err := x509.CreateRevocationList(a.rand, tmpl, s.cert, s.key)
		if err != nil {
			return fmt.Errorf("sign CRL: %w", err)
		}
		if _, err := tx.Exec(`UPDATE trust_domains SET crl_number = ?, crl_generation = ?, crl_der = ?, crl_this_update = ?, crl_next_update = ? WHERE name = ?`,
			number, gen, crl, fmtTime(tmpl.ThisUpdate), fmtTime(tmpl.NextUpdate), td); err != nil {
			return fmt.Errorf("record CRL: %w", err)
		}
		if err := a.addEvent(tx, now, td, "", "", "crl", "system", fmt.Sprintf("number=%d entries=%d next_update=%s", number, len(entries), fmtTime(tmpl.NextUpdate))); err != nil {
			return err
		}
		out = crl
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func fresh(gen, crlGen int64, der []byte, this, next sql.NullString, now time.Time) bool {
	if len(der) == 0 || gen != crlGen || !this.Valid || !next.Valid {
		return false
	}
	t, n := parseTime(this.String), parseTime(next.String)
	return now.Before(t.Add(n.Sub(t) / 2))
}

// ParseCRL parses a DER CRL and checks its signature against the CA of td;
// handy for tests and for `ca crl` to double-check what it wrote.
func (a *Authority) ParseCRL(td string, der []byte) (*x509.RevocationList, error) {
	s, err := a.loadCA(td)
	if err != nil {
		return nil, err
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("parse CRL: %w", err)
	}
	if err := crl.CheckSignatureFrom(s.cert); err != nil {
		return nil, fmt.Errorf("CRL signature: %w", err)
	}
	return crl, nil
}
