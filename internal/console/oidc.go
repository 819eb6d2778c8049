package console

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"go.yaml.in/yaml/v3"
	"golang.org/x/oauth2"

	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/control"
)

// OIDC sign-in: the authorization-code flow with PKCE (S256), state and
// nonce, through github.com/coreos/go-oidc and golang.org/x/oauth2. The
// identity provider's ID token names the operator (NameClaim) and a claim
// (RoleClaim) maps to a console role; a token that maps to no role signs
// nobody in. Every sign-in, and every refusal after the provider
// answered, is in the change log.

// OIDCConfig is the identity provider of the console (control serve
// --oidc-config FILE, YAML).
type OIDCConfig struct {
	// Issuer is the provider's issuer URL (discovery at
	// Issuer/.well-known/openid-configuration).
	Issuer   string `yaml:"issuer"`
	ClientID string `yaml:"client_id"`
	// ClientSecretFile holds the client secret (read at start; the secret
	// is never in the config itself or a log).
	ClientSecretFile string `yaml:"client_secret_file"`
	// RedirectURL is this console's callback as registered with the
	// provider: https://HOST:PORT/ui/oidc/callback.
	RedirectURL string `yaml:"redirect_url"`
	// NameClaim names the operator (default "email").
	NameClaim string `yaml:"name_claim"`
	// RoleClaim holds a string or a list of strings (default "groups").
	RoleClaim string `yaml:"role_claim"`
	// Roles maps claim values to roles, in order: the first value the
	// token holds decides.
	Roles []OIDCRole `yaml:"roles"`
	// CAFile, optional, holds the CA certificates the provider's TLS
	// certificate is checked against (default: the system's).
	CAFile string `yaml:"ca_file"`
	// Scopes beyond "openid" to ask for (default email, profile, groups).
	Scopes []string `yaml:"scopes"`

	clientSecret string
	// client reaches the provider (tests use their own).
	client *http.Client
}

// OIDCRole maps one claim value to a role.
type OIDCRole struct {
	Value string       `yaml:"value"`
	Role  control.Role `yaml:"role"`
}

const (
	oidcCookie     = "__Host-agentauthz-oidc"
	oidcPendingTTL = 10 * time.Minute
	maxOIDCPending = 1024
	maxOIDCConfig  = 64 << 10
)

// LoadOIDCConfig reads and checks an OIDC configuration file and the client
// secret it names.
func LoadOIDCConfig(path string) (*OIDCConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) > maxOIDCConfig {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxOIDCConfig)
	}
	var cfg OIDCConfig
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &cfg, nil
}

// check validates the configuration, reads the secret and CA file, and
// sets the defaults.
func (o *OIDCConfig) check() error {
	iss, err := url.Parse(o.Issuer)
	if err != nil || iss.Scheme != "https" || iss.Host == "" {
		return fmt.Errorf("issuer %q: want an https:// URL", o.Issuer)
	}
	if o.ClientID == "" {
		return errors.New("client_id is required")
	}
	red, err := url.Parse(o.RedirectURL)
	if err != nil || red.Scheme != "https" || red.Host == "" || red.Path != Prefix+"oidc/callback" {
		return fmt.Errorf("redirect_url %q: want https://HOST:PORT%soidc/callback", o.RedirectURL, Prefix)
	}
	if o.ClientSecretFile == "" {
		return errors.New("client_secret_file is required")
	}
	sec, err := os.ReadFile(o.ClientSecretFile)
	if err != nil {
		return fmt.Errorf("client secret: %w", err)
	}
	if o.clientSecret = strings.TrimSpace(string(sec)); o.clientSecret == "" || len(o.clientSecret) > 4096 {
		return fmt.Errorf("client secret in %s: empty or too long", o.ClientSecretFile)
	}
	if len(o.Roles) == 0 {
		return errors.New("roles: map at least one claim value to a role (auditor, responder or admin)")
	}
	for _, r := range o.Roles {
		switch r.Role {
		case control.RoleAuditor, control.RoleResponder, control.RoleAdmin:
		default:
			return fmt.Errorf("roles: %q maps to %q; want auditor, responder or admin", r.Value, r.Role)
		}
		if r.Value == "" {
			return errors.New("roles: an empty claim value")
		}
	}
	if o.NameClaim == "" {
		o.NameClaim = "email"
	}
	if o.RoleClaim == "" {
		o.RoleClaim = "groups"
	}
	if o.Scopes == nil {
		o.Scopes = []string{"email", "profile", "groups"}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return fmt.Errorf("ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("ca_file %s: no PEM certificate", o.CAFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	o.client = &http.Client{Transport: tr, Timeout: 15 * time.Second}
	return nil
}

// oidcState holds the provider, discovered on first use so that the
// control plane starts while the provider is down. Sign-ins under way are
// in the inventory's store, under the SHA-256 of their state, so the
// provider may send the browser back to any instance.
type oidcState struct {
	cfg      *OIDCConfig
	mu       sync.Mutex
	provider *oidc.Provider
}

func (s *oidcState) ctx(ctx context.Context) context.Context {
	return oidc.ClientContext(ctx, s.cfg.client)
}

func (s *oidcState) oauth(ctx context.Context) (*oauth2.Config, *oidc.Provider, error) {
	s.mu.Lock()
	p := s.provider
	s.mu.Unlock()
	if p == nil {
		var err error
		if p, err = oidc.NewProvider(s.ctx(ctx), s.cfg.Issuer); err != nil {
			return nil, nil, err
		}
		s.mu.Lock()
		s.provider = p
		s.mu.Unlock()
	}
	return &oauth2.Config{ClientID: s.cfg.ClientID, ClientSecret: s.cfg.clientSecret, RedirectURL: s.cfg.RedirectURL,
		Endpoint: p.Endpoint(), Scopes: append([]string{oidc.ScopeOpenID}, s.cfg.Scopes...)}, p, nil
}

// oidcStart sends the browser to the provider.
func (c *Console) oidcStart(w http.ResponseWriter, r *http.Request) {
	oc, _, err := c.oidc.oauth(r.Context())
	if err != nil {
		c.cfg.Logger.Error("console: OIDC discovery", "issuer", c.oidc.cfg.Issuer, "error", err)
		c.message(w, r, http.StatusBadGateway, "Sign-in unavailable", "The identity provider cannot be reached; retry, or use a sign-in link.")
		return
	}
	state, nonce, verifier := randomToken(), randomToken(), oauth2.GenerateVerifier()
	now := c.cfg.Now()
	sealed, err := sealOIDC(state, nonce, verifier)
	if err == nil {
		err = c.cfg.Authority.PutConsoleOIDC(secretHash(state), ca.ConsoleOIDC{Sealed: sealed, Expires: now.Add(oidcPendingTTL)}, now, maxOIDCPending)
	}
	if err != nil {
		c.cfg.Logger.Error("console: sign-in store", "error", err)
		c.message(w, r, http.StatusServiceUnavailable, "Sign-in unavailable", "The sign-in store is unavailable; see the control plane's log, then retry.")
		return
	}
	// The state also goes into a cookie of this browser: a callback in
	// another browser (a link someone was sent) is refused. Lax, as the
	// provider's redirect back is a cross-site navigation.
	http.SetCookie(w, &http.Cookie{Name: oidcCookie, Value: state, Path: "/", MaxAge: int(oidcPendingTTL / time.Second),
		HttpOnly: true, Secure: true, SameSite: http.SameSiteLaxMode})
	http.Redirect(w, r, oc.AuthCodeURL(state, oidc.Nonce(nonce), oauth2.S256ChallengeOption(verifier)), http.StatusSeeOther)
}

// oidcCallback finishes the flow: state, code exchange with the PKCE
// verifier, the ID token's signature, issuer, audience, expiry and nonce,
// then the role mapping.
func (c *Console) oidcCallback(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	http.SetCookie(w, &http.Cookie{Name: oidcCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: true, SameSite: http.SameSiteLaxMode})
	refuse := func(status int, text string) {
		c.message(w, r, status, "Sign-in refused", text)
	}
	if e := q.Get("error"); e != "" {
		refuse(http.StatusUnauthorized, "The identity provider refused the sign-in: "+trunc(e, 100)+".")
		return
	}
	state := q.Get("state")
	ck, err := r.Cookie(oidcCookie)
	if err != nil || state == "" || subtle.ConstantTimeCompare([]byte(ck.Value), []byte(state)) != 1 {
		refuse(http.StatusBadRequest, "This sign-in did not start in this browser, or was already used: sign in again.")
		return
	}
	pend, err := c.cfg.Authority.ClaimConsoleOIDC(secretHash(state), c.cfg.Now())
	if errors.Is(err, ca.ErrNotFound) {
		refuse(http.StatusBadRequest, "This sign-in expired or was already used: sign in again.")
		return
	}
	if err != nil {
		c.cfg.Logger.Error("console: sign-in store", "error", err)
		refuse(http.StatusServiceUnavailable, "The sign-in store is unavailable; sign in again.")
		return
	}
	nonce, verifier, err := openOIDC(state, pend.Sealed)
	if err != nil {
		c.cfg.Logger.Error("console: a pending OIDC sign-in does not open with its state", "error", err)
		refuse(http.StatusBadRequest, "This sign-in cannot be finished: sign in again.")
		return
	}
	oc, p, err := c.oidc.oauth(r.Context())
	if err != nil {
		c.cfg.Logger.Error("console: OIDC discovery", "error", err)
		refuse(http.StatusBadGateway, "The identity provider cannot be reached; retry.")
		return
	}
	ctx := c.oidc.ctx(r.Context())
	tok, err := oc.Exchange(ctx, q.Get("code"), oauth2.VerifierOption(verifier))
	if err != nil {
		c.cfg.Logger.Warn("console: OIDC code exchange", "error", err)
		refuse(http.StatusUnauthorized, "The identity provider did not accept the sign-in code.")
		return
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		refuse(http.StatusUnauthorized, "The identity provider sent no ID token.")
		return
	}
	idt, err := p.VerifierContext(ctx, &oidc.Config{ClientID: c.oidc.cfg.ClientID, Now: c.cfg.Now}).Verify(ctx, raw)
	if err != nil {
		c.cfg.Logger.Warn("console: OIDC ID token", "error", err)
		refuse(http.StatusUnauthorized, "The ID token did not verify.")
		return
	}
	if subtle.ConstantTimeCompare([]byte(idt.Nonce), []byte(nonce)) != 1 {
		refuse(http.StatusUnauthorized, "The ID token is not the one this sign-in asked for (nonce).")
		return
	}
	op, why := c.oidc.operator(idt)
	who := fmt.Sprintf("OIDC %s subject %.80q", c.oidc.cfg.Issuer, idt.Subject)
	if why != "" {
		if err := c.cfg.Authority.RecordEvent("", "", "", "console_signin_refused", "oidc", trunc(who+": "+why, 1000)); err != nil {
			c.cfg.Logger.Error("console: record sign-in", "error", err)
		}
		refuse(http.StatusForbidden, why)
		return
	}
	if err := c.cfg.Authority.RecordEvent("", "", "", "console_signin", op.String(), trunc("signed in to the console with "+who, 1000)); err != nil {
		// Fail closed: a sign-in that cannot be recorded does not happen.
		c.cfg.Logger.Error("console: record sign-in", "error", err)
		refuse(http.StatusServiceUnavailable, "The sign-in could not be recorded in the change log; retry.")
		return
	}
	if c.startSession(w, op) != nil {
		refuse(http.StatusServiceUnavailable, "The session could not be stored; retry.")
		return
	}
	c.cfg.Logger.Info("console sign-in", "operator", op.String(), "via", "oidc")
	// A page, not a redirect: the session cookie is SameSite=Strict, and
	// a browser does not send it on a redirect that a cross-site
	// navigation (the provider's) started.
	c.render(w, r, http.StatusOK, "signedin", nil, map[string]string{"Next": landing(op), "Name": op.String()})
}

// operator maps an ID token to an operator, or says why it cannot.
func (s *oidcState) operator(idt *oidc.IDToken) (control.Operator, string) {
	var claims map[string]any
	if err := idt.Claims(&claims); err != nil {
		return control.Operator{}, "The ID token's claims could not be read."
	}
	name, _ := claims[s.cfg.NameClaim].(string)
	name = strings.ToLower(name)
	if control.ValidateName(name) != nil {
		return control.Operator{}, fmt.Sprintf("The ID token's %q claim is not a usable operator name (want [a-z0-9][a-z0-9._@-]{0,63}).", s.cfg.NameClaim)
	}
	held := map[string]bool{}
	switch v := claims[s.cfg.RoleClaim].(type) {
	case string:
		held[v] = true
	case []any:
		for _, x := range v {
			if s, ok := x.(string); ok {
				held[s] = true
			}
		}
	}
	for _, m := range s.cfg.Roles {
		if held[m.Value] {
			return control.Operator{Name: name, Role: m.Role}, ""
		}
	}
	return control.Operator{}, fmt.Sprintf("%s holds no %q value that maps to a console role.", name, s.cfg.RoleClaim)
}

// trunc bounds s to n bytes, whole characters only.
func trunc(s string, n int) string {
	if len(s) > n {
		return strings.ToValidUTF8(s[:n], "")
	}
	return s
}

// sealOIDC seals a pending sign-in's nonce and PKCE verifier with
// AES-256-GCM under a key derived from its state. The store keeps only the
// state's hash, so a reader of the store can neither redeem a code it
// intercepts (the verifier) nor replay an ID token (the nonce).
func sealOIDC(state, nonce, verifier string) (string, error) {
	aead, err := oidcAEAD(state)
	if err != nil {
		return "", err
	}
	iv := make([]byte, aead.NonceSize(), aead.NonceSize()+len(nonce)+1+len(verifier)+aead.Overhead())
	if _, err := rand.Read(iv); err != nil {
		return "", err
	}
	out := aead.Seal(iv, iv, []byte(nonce+"\n"+verifier), []byte(oidcSealLabel))
	return base64.RawURLEncoding.EncodeToString(out), nil
}

// openOIDC is sealOIDC's inverse.
func openOIDC(state, sealed string) (nonce, verifier string, err error) {
	aead, err := oidcAEAD(state)
	if err != nil {
		return "", "", err
	}
	b, err := base64.RawURLEncoding.DecodeString(sealed)
	if err != nil || len(b) < aead.NonceSize() {
		return "", "", errors.New("sealed sign-in is malformed")
	}
	pt, err := aead.Open(nil, b[:aead.NonceSize()], b[aead.NonceSize():], []byte(oidcSealLabel))
	if err != nil {
		return "", "", err
	}
	nonce, verifier, ok := strings.Cut(string(pt), "\n")
	if !ok || nonce == "" || verifier == "" {
		return "", "", errors.New("sealed sign-in is malformed")
	}
	return nonce, verifier, nil
}

const oidcSealLabel = "agentauthz console oidc pending"

func oidcAEAD(state string) (cipher.AEAD, error) {
	m := hmac.New(sha256.New, []byte(state))
	m.Write([]byte(oidcSealLabel))
	block, err := aes.NewCipher(m.Sum(nil))
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}
