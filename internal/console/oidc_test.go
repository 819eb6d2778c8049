package console

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/agentauthz/agentauthz/internal/control"
)

// idp is a real OpenID Connect provider on a real TLS socket: discovery,
// JWKS, an authorization endpoint that approves at once, and a token
// endpoint that checks the client, the code, the redirect URI and the PKCE
// verifier before it signs an ID token with go-jose.
type idp struct {
	t        *testing.T
	srv      *httptest.Server
	key      *ecdsa.PrivateKey
	clientID string
	secret   string
	mu       sync.Mutex
	codes    map[string]grant
	// claims go into the next ID token; tamper, if set, changes them last.
	claims map[string]any
	tamper func(map[string]any)
	// signWith, if set, signs instead of key (a key the JWKS does not hold).
	signWith *ecdsa.PrivateKey
	pkceOK   int
}

type grant struct {
	redirect, challenge, nonce string
}

func newIDP(t *testing.T) *idp {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p := &idp{t: t, key: key, clientID: "agentauthz-console", secret: "s3cret-" + randomToken()[:8], codes: map[string]grant{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		u := p.srv.URL
		_ = json.NewEncoder(w).Encode(map[string]any{"issuer": u, "authorization_endpoint": u + "/authorize", "token_endpoint": u + "/token",
			"jwks_uri": u + "/jwks", "response_types_supported": []string{"code"}, "subject_types_supported": []string{"public"},
			"id_token_signing_alg_values_supported": []string{"ES256"}, "code_challenge_methods_supported": []string{"S256"}})
	})
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &p.key.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	})
	mux.HandleFunc("GET /authorize", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("response_type") != "code" || q.Get("client_id") != p.clientID || q.Get("code_challenge_method") != "S256" ||
			q.Get("code_challenge") == "" || q.Get("state") == "" || q.Get("nonce") == "" || !strings.Contains(q.Get("scope"), "openid") {
			http.Error(w, "bad authorization request: "+r.URL.RawQuery, http.StatusBadRequest)
			return
		}
		code := randomToken()
		p.mu.Lock()
		p.codes[code] = grant{redirect: q.Get("redirect_uri"), challenge: q.Get("code_challenge"), nonce: q.Get("nonce")}
		p.mu.Unlock()
		http.Redirect(w, r, q.Get("redirect_uri")+"?code="+url.QueryEscape(code)+"&state="+url.QueryEscape(q.Get("state")), http.StatusFound)
	})
	mux.HandleFunc("POST /token", func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil {
			http.Error(w, "form", http.StatusBadRequest)
			return
		}
		id, sec, ok := r.BasicAuth()
		if !ok {
			id, sec = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
		}
		id, _ = url.QueryUnescape(id)
		sec, _ = url.QueryUnescape(sec)
		if id != p.clientID || sec != p.secret {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"error":"invalid_client"}`)
			return
		}
		p.mu.Lock()
		g, ok := p.codes[r.PostForm.Get("code")]
		delete(p.codes, r.PostForm.Get("code"))
		p.mu.Unlock()
		sum := sha256.Sum256([]byte(r.PostForm.Get("code_verifier")))
		if !ok || r.PostForm.Get("grant_type") != "authorization_code" || r.PostForm.Get("redirect_uri") != g.redirect ||
			base64.RawURLEncoding.EncodeToString(sum[:]) != g.challenge {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, `{"error":"invalid_grant"}`)
			return
		}
		p.mu.Lock()
		p.pkceOK++
		claims := map[string]any{"iss": p.srv.URL, "aud": p.clientID, "iat": time.Now().Unix(), "exp": time.Now().Add(5 * time.Minute).Unix(), "nonce": g.nonce}
		for k, v := range p.claims {
			claims[k] = v
		}
		if p.tamper != nil {
			p.tamper(claims)
		}
		key := p.key
		if p.signWith != nil {
			key = p.signWith
		}
		p.mu.Unlock()
		sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "k1"))
		if err != nil {
			p.t.Error(err)
			return
		}
		raw, err := jwt.Signed(sig).Claims(claims).Serialize()
		if err != nil {
			p.t.Error(err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": randomToken(), "token_type": "Bearer", "expires_in": 300, "id_token": raw})
	})
	p.srv = httptest.NewTLSServer(mux)
	t.Cleanup(p.srv.Close)
	return p
}

func (p *idp) set(claims map[string]any, tamper func(map[string]any), signWith *ecdsa.PrivateKey) {
	p.mu.Lock()
	p.claims, p.tamper, p.signWith = claims, tamper, signWith
	p.mu.Unlock()
}

// oidcEnv is the console of newEnv with OIDC sign-in configured from a
// YAML file, as control serve --oidc-config reads it.
func oidcEnv(t *testing.T) (*env, *idp) {
	t.Helper()
	p := newIDP(t)
	dir := t.TempDir()
	caFile, secFile := filepath.Join(dir, "idp-ca.pem"), filepath.Join(dir, "secret")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(secFile, []byte(p.secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t)
	cfgFile := filepath.Join(dir, "oidc.yaml")
	yml := fmt.Sprintf(`issuer: %s
client_id: %s
client_secret_file: %s
redirect_url: %s/ui/oidc/callback
ca_file: %s
role_claim: groups
roles:
  - {value: sec-admins, role: admin}
  - {value: soc, role: responder}
  - {value: audit, role: auditor}
`, p.srv.URL, p.clientID, secFile, e.srv.URL, caFile)
	if err := os.WriteFile(cfgFile, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadOIDCConfig(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	con, err := New(Config{Authority: e.auth, Records: e.rs, Auth: control.NewAuthenticator(e.op, nil, nil), OIDC: cfg})
	if err != nil {
		t.Fatal(err)
	}
	e.srv.Config.Handler = con.Handler()
	e.con = con
	return e, p
}

// browser trusts the console and the provider, keeps cookies, and follows
// no redirect by itself.
func (e *env) browser(p *idp) *http.Client {
	jar, _ := cookiejar.New(nil)
	pool := e.pool.Clone()
	pool.AddCert(p.srv.Certificate())
	return &http.Client{Jar: jar, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// oidcSignIn walks the flow like a browser and returns the callback URL
// and the console's answer to it.
func oidcSignIn(t *testing.T, e *env, b *http.Client) (string, int, string) {
	t.Helper()
	return oidcSignInVia(t, e, b, nil)
}

// oidcSignInVia is oidcSignIn calling between (if set) when the provider
// has answered and before the browser returns to the console.
func oidcSignInVia(t *testing.T, e *env, b *http.Client, between func()) (string, int, string) {
	t.Helper()
	_, body := e.get(b, "/ui/login")
	if !strings.Contains(body, `href="/ui/oidc/start"`) {
		t.Fatalf("login page has no OIDC sign-in:\n%s", body)
	}
	resp, err := b.Get(e.srv.URL + "/ui/oidc/start")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("start: %d", resp.StatusCode)
	}
	resp, err = b.Get(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("authorize: %d %s", resp.StatusCode, msg)
	}
	cb := resp.Header.Get("Location")
	if between != nil {
		between()
	}
	resp, err = b.Get(cb)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return cb, resp.StatusCode, string(out)
}

func TestOIDCSignIn(t *testing.T) {
	e, p := oidcEnv(t)
	p.set(map[string]any{"sub": "u-1", "email": "Alice@Example.com", "groups": []string{"staff", "sec-admins"}}, nil, nil)
	b := e.browser(p)
	cb, code, body := oidcSignIn(t, e, b)
	if code != 200 || !strings.Contains(body, `content="0;url=/ui/fleet"`) || !strings.Contains(body, "alice@example.com (admin)") {
		t.Fatalf("callback: %d\n%s", code, body)
	}
	if p.pkceOK != 1 {
		t.Errorf("the token endpoint checked %d PKCE verifiers", p.pkceOK)
	}
	if code, body := e.get(b, "/ui/issue"); code != 200 || !strings.Contains(body, "Signed in as <strong>alice@example.com</strong> (admin)") {
		t.Errorf("session after OIDC sign-in: %d", code)
	}
	evs, _ := e.auth.Events("", "")
	last := evs[len(evs)-1]
	if last.Event != "console_signin" || last.Operator != "alice@example.com (admin)" || !strings.Contains(last.Detail, p.srv.URL) || !strings.Contains(last.Detail, `"u-1"`) {
		t.Errorf("change log: %+v", last)
	}
	// The callback works once.
	resp, err := b.Get(cb)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("replayed callback: %d", resp.StatusCode)
	}
}

// TestOIDCCallbackOnAnotherInstance: the sign-in under way is in the store,
// not in the memory of the console that started it, so the provider may
// send the browser back to another instance (or a restarted one).
func TestOIDCCallbackOnAnotherInstance(t *testing.T) {
	e, p := oidcEnv(t)
	p.set(map[string]any{"sub": "u-2", "email": "gil@example.com", "groups": []string{"audit"}}, nil, nil)
	b := e.browser(p)
	_, code, body := oidcSignInVia(t, e, b, func() {
		cfg := e.con.cfg
		cfg.Authority = openAuthority(t, e.dir, "")
		con, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		e.srv.Config.Handler = con.Handler()
		e.con = con
	})
	if code != 200 || !strings.Contains(body, "gil@example.com (auditor)") {
		t.Fatalf("callback on the other console: %d\n%s", code, body)
	}
	if code, _ := e.get(b, "/ui/decisions"); code != 200 {
		t.Errorf("session after the callback: %d", code)
	}
}

func TestOIDCRefusals(t *testing.T) {
	e, p := oidcEnv(t)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	before, _ := e.auth.Events("", "")
	for name, tc := range map[string]struct {
		claims   map[string]any
		tamper   func(map[string]any)
		signWith *ecdsa.PrivateKey
		status   int
	}{
		"no mapped role": {map[string]any{"sub": "u-2", "email": "bob@example.com", "groups": []string{"staff"}}, nil, nil, http.StatusForbidden},
		"role as string": {map[string]any{"sub": "u-3", "email": "carol@example.com", "groups": "audit"}, nil, nil, http.StatusOK},
		"bad name":       {map[string]any{"sub": "u-4", "email": "<script>x</script>", "groups": []string{"soc"}}, nil, nil, http.StatusForbidden},
		"wrong nonce":    {map[string]any{"sub": "u-5", "email": "dan@example.com", "groups": []string{"soc"}}, func(c map[string]any) { c["nonce"] = "n" }, nil, http.StatusUnauthorized},
		"wrong audience": {map[string]any{"sub": "u-6", "email": "eve@example.com", "groups": []string{"soc"}}, func(c map[string]any) { c["aud"] = "someone-else" }, nil, http.StatusUnauthorized},
		"expired token":  {map[string]any{"sub": "u-7", "email": "fay@example.com", "groups": []string{"soc"}}, func(c map[string]any) { c["exp"] = time.Now().Add(-time.Hour).Unix() }, nil, http.StatusUnauthorized},
		"another issuer": {map[string]any{"sub": "u-8", "email": "gus@example.com", "groups": []string{"soc"}}, func(c map[string]any) { c["iss"] = "https://evil.test" }, nil, http.StatusUnauthorized},
		"unknown key":    {map[string]any{"sub": "u-9", "email": "hal@example.com", "groups": []string{"soc"}}, nil, other, http.StatusUnauthorized},
	} {
		p.set(tc.claims, tc.tamper, tc.signWith)
		b := e.browser(p)
		_, code, body := oidcSignIn(t, e, b)
		if code != tc.status || strings.Contains(body, "<script>x") {
			t.Errorf("%s: %d, want %d\n%s", name, code, tc.status, body)
			continue
		}
		if code != http.StatusOK {
			if c, _ := e.get(b, "/ui/fleet"); c != http.StatusUnauthorized {
				t.Errorf("%s: refused, yet signed in (%d)", name, c)
			}
		}
	}
	after, _ := e.auth.Events("", "")
	kinds := map[string]int{}
	for _, ev := range after[len(before):] {
		kinds[ev.Event]++
	}
	if kinds["console_signin"] != 1 || kinds["console_signin_refused"] != 2 {
		t.Errorf("change log of the attempts: %v", kinds)
	}

	// A callback in another browser than the one that started is refused.
	p.set(map[string]any{"sub": "u-1", "email": "alice@example.com", "groups": []string{"sec-admins"}}, nil, nil)
	b := e.browser(p)
	resp, _ := b.Get(e.srv.URL + "/ui/oidc/start")
	resp.Body.Close()
	resp, _ = b.Get(resp.Header.Get("Location"))
	resp.Body.Close()
	cb := resp.Header.Get("Location")
	resp, err := e.browser(p).Get(cb)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("callback in another browser: %d", resp.StatusCode)
	}
	// The provider's own refusal.
	if code, body := e.get(e.browser(p), "/ui/oidc/callback?error=access_denied&state=x"); code != http.StatusUnauthorized || !strings.Contains(body, "access_denied") {
		t.Errorf("provider error: %d", code)
	}
}

func TestOIDCConfig(t *testing.T) {
	dir := t.TempDir()
	sec := filepath.Join(dir, "secret")
	if err := os.WriteFile(sec, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	good := "issuer: https://idp.example.com\nclient_id: c\nclient_secret_file: " + sec + "\nredirect_url: https://cp.example.com:9193/ui/oidc/callback\nroles: [{value: a, role: admin}]\n"
	for name, yml := range map[string]string{
		"http issuer":      strings.Replace(good, "https://idp", "http://idp", 1),
		"no client id":     strings.Replace(good, "client_id: c\n", "", 1),
		"other callback":   strings.Replace(good, "/ui/oidc/callback", "/cb", 1),
		"no secret file":   strings.Replace(good, sec, filepath.Join(dir, "nope"), 1),
		"replica role":     strings.Replace(good, "role: admin", "role: replica", 1),
		"no roles":         strings.Replace(good, "roles: [{value: a, role: admin}]\n", "", 1),
		"unknown field":    good + "client_secret: inline\n",
		"not yaml mapping": "- a\n",
	} {
		f := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(f, []byte(yml), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadOIDCConfig(f); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	f := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(f, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadOIDCConfig(f)
	if err != nil || cfg.NameClaim != "email" || cfg.RoleClaim != "groups" || cfg.clientSecret != "x" {
		t.Errorf("%+v %v", cfg, err)
	}
}
