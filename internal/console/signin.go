package console

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/control"
)

// Sign-in limits.
const (
	// DefaultLinkTTL is how long a sign-in link stays valid.
	DefaultLinkTTL = 10 * time.Minute
	// MaxLinkTTL bounds it.
	MaxLinkTTL = time.Hour
	// SessionTTL is the lifetime of a browser session; it is not extended.
	SessionTTL = 8 * time.Hour
	// maxSessions bounds the sessions kept in the store.
	maxSessions = 1024
	cookieName  = "__Host-agentauthz-console"
)

// ErrLink is returned for a sign-in link that is unknown, used or expired.
var ErrLink = errors.New("this sign-in link is unknown, already used or expired: ask for a new one (agentauthz operator login-link)")

// CreateLink stores a single-use sign-in token for operator name with role,
// valid for ttl, in the inventory's database (SQLite in the data directory,
// or the PostgreSQL --store every control-plane instance shares), and
// returns the token. Only its SHA-256 is stored.
func CreateLink(a *ca.Authority, name string, role control.Role, ttl time.Duration, now time.Time) (string, error) {
	if err := control.ValidateName(name); err != nil {
		return "", err
	}
	switch role {
	case control.RoleAuditor, control.RoleResponder, control.RoleAdmin:
	default:
		return "", fmt.Errorf("role %q cannot sign in to the console: want auditor, responder or admin", role)
	}
	if ttl <= 0 || ttl > MaxLinkTTL {
		return "", fmt.Errorf("link validity %v: want more than 0 and at most %v", ttl, MaxLinkTTL)
	}
	tok := randomToken()
	if err := a.PutConsoleLink(secretHash(tok), name, string(role), now.Add(ttl), now); err != nil {
		return "", err
	}
	return tok, nil
}

// claimLink consumes a token: the store deletes it for exactly one caller,
// on whichever control-plane instance the browser reached.
func claimLink(a *ca.Authority, tok string, now time.Time) (control.Operator, error) {
	if !wellFormed(tok) {
		return control.Operator{}, ErrLink
	}
	name, role, err := a.ClaimConsoleLink(secretHash(tok), now)
	if errors.Is(err, ca.ErrNotFound) {
		return control.Operator{}, ErrLink
	}
	if err != nil {
		return control.Operator{}, err
	}
	op := control.Operator{Name: name, Role: control.Role(role)}
	if control.ValidateName(name) != nil || (!op.May(control.ReadAgents) && !op.May(control.ReadRecords)) {
		return control.Operator{}, ErrLink
	}
	return op, nil
}

// wellFormed says whether tok looks like a token of randomToken.
func wellFormed(tok string) bool {
	if len(tok) != 43 {
		return false
	}
	_, err := base64.RawURLEncoding.DecodeString(tok)
	return err == nil
}

// secretHash is what the store keeps of a link token or session id.
func secretHash(tok string) string {
	h := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(h[:])
}

func randomToken() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// session is a signed-in browser.
type session struct {
	op      control.Operator
	csrf    string
	expires time.Time
}

// sessions keeps browser sessions in the inventory's database, under the
// SHA-256 of the cookie value: every instance on one store knows them, and
// they survive a restart.
type sessions struct{ a *ca.Authority }

func (s sessions) create(op control.Operator, now time.Time) (string, *session, error) {
	id := randomToken()
	se := &session{op: op, csrf: sessionCSRF(id), expires: now.Add(SessionTTL)}
	err := s.a.PutConsoleSession(secretHash(id), ca.ConsoleSession{Operator: op.Name, Role: string(op.Role), Expires: se.expires}, now, maxSessions)
	if err != nil {
		return "", nil, err
	}
	return id, se, nil
}

// get returns the session of cookie value id, or nil when there is none (or
// the store cannot say: fail closed).
func (s sessions) get(id string, now time.Time) (*session, error) {
	if !wellFormed(id) {
		return nil, nil
	}
	st, err := s.a.ConsoleSession(secretHash(id), now)
	if errors.Is(err, ca.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	op := control.Operator{Name: st.Operator, Role: control.Role(st.Role)}
	if control.ValidateName(op.Name) != nil {
		return nil, nil
	}
	return &session{op: op, csrf: sessionCSRF(id), expires: st.Expires}, nil
}

func (s sessions) remove(id string) error {
	if !wellFormed(id) {
		return nil
	}
	return s.a.DeleteConsoleSession(secretHash(id))
}

// sessionCSRF is the CSRF token of the session whose cookie value is id:
// derived, not stored, so the store holds nothing a form can be forged
// with, and every instance derives the same one. The cookie value cannot be
// recovered from the token the pages carry.
func sessionCSRF(id string) string {
	m := hmac.New(sha256.New, []byte(id))
	m.Write([]byte("agentauthz console session csrf"))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// certCSRF is the CSRF token of an operator signed in by client
// certificate: browsers send client certificates cross-site too, so those
// forms need a token as much as cookie sessions do.
func certCSRF(key []byte, certRaw []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("agentauthz console csrf\x00"))
	m.Write(certRaw)
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}
