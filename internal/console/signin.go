package console

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

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
	// maxSessions bounds the sessions held in memory.
	maxSessions = 1024
	cookieName  = "__Host-agentauthz-console"
	linkDirName = "signin"
)

// ErrLink is returned for a sign-in link that is unknown, used or expired.
var ErrLink = errors.New("this sign-in link is unknown, already used or expired: ask for a new one (agentauthz operator login-link)")

// LinkDir is where pending sign-in links are kept: <data-dir>/console/signin.
func LinkDir(dataDir string) string { return filepath.Join(dataDir, "console", linkDirName) }

// link is a pending sign-in link as stored on disk, under the SHA-256 of its
// token (the token itself is never stored).
type link struct {
	Name    string       `json:"name"`
	Role    control.Role `json:"role"`
	Expires time.Time    `json:"expires"`
}

// CreateLink stores a single-use sign-in token for operator name with role,
// valid for ttl, and returns the token. The CLI calls it on the control
// plane's data directory; the running console claims the token from the
// same directory, so nothing else is shared between the two processes.
func CreateLink(dataDir, name string, role control.Role, ttl time.Duration, now time.Time) (string, error) {
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
	dir := LinkDir(dataDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	pruneLinks(dir, now)
	tok := randomToken()
	b, _ := json.Marshal(link{Name: name, Role: role, Expires: now.Add(ttl).UTC()})
	f, err := os.OpenFile(filepath.Join(dir, tokenFile(tok)), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return "", err
	}
	return tok, f.Close()
}

// claimLink consumes a token: the rename succeeds for exactly one caller,
// so a link signs in once even with several control plane instances on one
// data directory.
func claimLink(dataDir, tok string, now time.Time) (control.Operator, error) {
	if len(tok) != 43 {
		return control.Operator{}, ErrLink
	}
	if _, err := base64.RawURLEncoding.DecodeString(tok); err != nil {
		return control.Operator{}, ErrLink
	}
	dir := LinkDir(dataDir)
	p := filepath.Join(dir, tokenFile(tok))
	claimed := p + ".claimed-" + randomToken()[:8]
	if err := os.Rename(p, claimed); err != nil {
		return control.Operator{}, ErrLink
	}
	defer os.Remove(claimed)
	b, err := os.ReadFile(claimed)
	if err != nil || len(b) > 4096 {
		return control.Operator{}, ErrLink
	}
	var l link
	if err := json.Unmarshal(b, &l); err != nil || !now.Before(l.Expires) || control.ValidateName(l.Name) != nil {
		return control.Operator{}, ErrLink
	}
	op := control.Operator{Name: l.Name, Role: l.Role}
	if !op.May(control.ReadAgents) && !op.May(control.ReadRecords) {
		return control.Operator{}, ErrLink
	}
	return op, nil
}

// pruneLinks removes links that expired unused, so that the directory does
// not grow with links nobody opened.
func pruneLinks(dir string, now time.Time) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(p)
		var l link
		if err != nil || len(b) > 4096 || json.Unmarshal(b, &l) != nil || !now.Before(l.Expires) {
			os.Remove(p)
		}
	}
}

func tokenFile(tok string) string {
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
	// done is closed when the session ends (sign-out, expiry, eviction):
	// its live tails stop.
	done chan struct{}
}

// sessions holds browser sessions in memory: a restart signs everyone out.
type sessions struct {
	mu sync.Mutex
	m  map[string]*session
}

func (s *sessions) create(op control.Operator, now time.Time) (string, *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]*session{}
	}
	for id, se := range s.m {
		if !now.Before(se.expires) {
			s.drop(id)
		}
	}
	if len(s.m) >= maxSessions {
		// Drop the session closest to expiry rather than refuse a sign-in.
		var oldest string
		for id, se := range s.m {
			if oldest == "" || se.expires.Before(s.m[oldest].expires) {
				oldest = id
			}
		}
		s.drop(oldest)
	}
	id := randomToken()
	se := &session{op: op, csrf: randomToken(), expires: now.Add(SessionTTL), done: make(chan struct{})}
	s.m[id] = se
	return id, se
}

func (s *sessions) get(id string, now time.Time) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	se := s.m[id]
	if se == nil {
		return nil
	}
	if !now.Before(se.expires) {
		s.drop(id)
		return nil
	}
	return se
}

func (s *sessions) remove(id string) {
	s.mu.Lock()
	s.drop(id)
	s.mu.Unlock()
}

// drop ends session id; s.mu is held.
func (s *sessions) drop(id string) {
	if se := s.m[id]; se != nil {
		close(se.done)
		delete(s.m, id)
	}
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
