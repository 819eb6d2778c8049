// Package console serves the control plane's web console at /ui/: the fleet,
// one agent with its history and the restrict/lift/revoke actions, and the
// decision records. Pages are rendered on the server with html/template and
// need no JavaScript, so the Content-Security-Policy allows no script at
// all. Operators sign in with their control plane client certificate or a
// one-time link from `agentauthz operator login-link`; their role decides
// what they see and may change, through the same role lists as the API
// (control.ReadAgents, control.ChangeAgents, control.ReadRecords).
package console

import (
	"crypto/ed25519"
	"crypto/subtle"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/agentauthz/agentauthz/internal/alerts"
	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/control"
	"github.com/agentauthz/agentauthz/internal/recordstore"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Prefix is where the control plane mounts the console.
const Prefix = "/ui/"

// CSP allows no inline script or style and no outside resource: the one
// script (the live tail's) is a file of the console.
const CSP = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// DefaultExpiringWithin is when an active certificate counts as expiring.
const DefaultExpiringWithin = 7 * 24 * time.Hour

const (
	maxFleetRows = 500
	maxForm      = 16 << 10
	agentRecords = 50
)

// Config configures the console.
type Config struct {
	Authority *ca.Authority
	// Records is the central decision store; nil leaves the decision
	// pages saying so.
	Records *recordstore.Store
	// Auth checks client certificates; nil turns the console off (the
	// control plane runs without TLS, and session cookies need HTTPS).
	Auth *control.Authenticator
	// Alerts is the anomaly detector's alerts; nil leaves the Alerts page
	// saying detection is off.
	Alerts         *alerts.Service
	ExpiringWithin time.Duration
	// OIDC, when set, adds sign-in through an OpenID Connect provider.
	OIDC *OIDCConfig
	// PackKey signs the evidence packs the Compliance page sends
	// (evidence.Sign, as `audit report` signs); nil refuses the download.
	PackKey ed25519.PrivateKey
	Logger  hclog.Logger
	Now     func() time.Time
}

// Console is the web console.
type Console struct {
	cfg      Config
	pages    map[string]*template.Template
	sessions sessions
	csrfKey  []byte
	tails    streams
	hub      tailHub
	// fleetSnap is the fleet page's view of the inventory.
	fleetSnap fleetCache
	compMu    sync.Mutex
	compCache map[int]*complianceEntry
	stop      chan struct{}
	stopOnce  sync.Once
	heavySem  chan struct{}
	oidc      *oidcState // nil: no OIDC sign-in
}

// New parses the embedded templates.
func New(cfg Config) (*Console, error) {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ExpiringWithin <= 0 {
		cfg.ExpiringWithin = DefaultExpiringWithin
	}
	if cfg.OIDC != nil && cfg.OIDC.client == nil {
		if err := cfg.OIDC.check(); err != nil {
			return nil, fmt.Errorf("oidc: %w", err)
		}
	}
	// The CSRF key of certificate sign-ins is shared through the store,
	// so a form one instance rendered is accepted by another, and after
	// a restart.
	var csrfKey []byte
	if cfg.Auth != nil { // else the console is off
		if cfg.Authority == nil {
			return nil, errors.New("console: no inventory")
		}
		k, err := cfg.Authority.ConsoleKey("csrf")
		if err != nil {
			return nil, fmt.Errorf("console key: %w", err)
		}
		csrfKey = k
	}
	c := &Console{cfg: cfg, sessions: sessions{cfg.Authority}, pages: map[string]*template.Template{}, csrfKey: csrfKey, stop: make(chan struct{}), heavySem: make(chan struct{}, 1)}
	c.hub = tailHub{c: c, interval: TailPoll}
	if cfg.OIDC != nil {
		c.oidc = &oidcState{cfg: cfg.OIDC}
	}
	funcs := template.FuncMap{
		"time": func(t time.Time) string {
			if t.IsZero() {
				return ""
			}
			return t.UTC().Format("2006-01-02 15:04:05Z")
		},
		"timep": func(t *time.Time) string {
			if t == nil {
				return ""
			}
			return t.UTC().Format("2006-01-02 15:04:05Z")
		},
		"join":   strings.Join,
		"path":   url.PathEscape,
		"trusts": func() []int { return []int{0, 1, 2, 3, 4} },
		"label":  ca.TrustLabel,
		"sub":    func(a, b uint64) uint64 { return a - b },
		"sub64":  func(a, b int64) int64 { return a - b },
	}
	for _, p := range []string{"fleet", "agent", "decisions", "decision", "live", "issue", "compliance", "verified", "login", "signedin", "message", "alerts", "alert"} {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/chart.html", "templates/"+p+".html")
		if err != nil {
			return nil, err
		}
		c.pages[p] = t
	}
	return c, nil
}

// Handler serves the console; mount it at Prefix.
func (c *Console) Handler() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	mux.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", http.FileServerFS(static)))
	if c.cfg.Auth == nil {
		mux.HandleFunc("/ui/", func(w http.ResponseWriter, r *http.Request) {
			c.message(w, r, http.StatusServiceUnavailable, "Console off",
				"The console is off: the control plane runs without TLS (--plain-http), and sign-in needs HTTPS.")
		})
		return secure(mux)
	}
	mux.HandleFunc("GET /ui/{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/ui/fleet", http.StatusSeeOther)
	})
	mux.HandleFunc("GET /ui/login", c.loginPage)
	mux.HandleFunc("POST /ui/login", c.login)
	if c.oidc != nil {
		mux.HandleFunc("GET /ui/oidc/start", c.oidcStart)
		mux.HandleFunc("GET /ui/oidc/callback", c.oidcCallback)
	}
	mux.Handle("POST /ui/logout", c.require(nil, true, c.logout))
	mux.Handle("GET /ui/fleet", c.require(control.ReadAgents, false, c.fleet))
	mux.Handle("GET /ui/agents/{td}/{id}", c.require(control.ReadAgents, false, c.agent))
	mux.Handle("POST /ui/agents/{td}/{id}/{action}", c.require(control.ChangeAgents, true, c.change))
	mux.Handle("GET /ui/agents/{td}/{id}/certificates/{serial}", c.require(control.ReadAgents, false, c.certificate))
	mux.Handle("GET /ui/compliance", c.require(control.ReadRecords, false, c.compliance))
	mux.Handle("GET /ui/compliance/verify", c.require(control.ReadRecords, false, c.verifyLog))
	mux.Handle("POST /ui/compliance/evidence", c.require(control.ReadRecords, true, c.evidencePack))
	mux.Handle("GET /ui/issue", c.require(adminOnly, false, c.issuePage))
	mux.Handle("POST /ui/issue", c.require(adminOnly, true, c.issue("issue")))
	mux.Handle("POST /ui/agents/{td}/{id}/renew", c.require(adminOnly, true, c.issue("renew")))
	mux.Handle("POST /ui/agents/{td}/{id}/reissue", c.require(adminOnly, true, c.issue("reissue")))
	mux.Handle("GET /ui/decisions", c.require(control.ReadRecords, false, c.decisions))
	mux.Handle("GET /ui/decisions/{id}", c.require(control.ReadRecords, false, c.decision))
	mux.Handle("GET /ui/decisions/live", c.require(control.ReadRecords, false, c.live))
	mux.Handle("GET /ui/decisions/stream", c.require(control.ReadRecords, false, c.stream))
	c.alertRoutes(mux)
	mux.HandleFunc("/ui/", func(w http.ResponseWriter, r *http.Request) {
		c.message(w, r, http.StatusNotFound, "Not found", "No such page: "+r.URL.Path)
	})
	return secure(mux)
}

// Stop ends the live tails (they would otherwise hold a graceful shutdown
// open): register it with http.Server.RegisterOnShutdown.
func (c *Console) Stop() { c.stopOnce.Do(func() { close(c.stop) }) }

// secure sets the headers of every console answer.
func secure(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", CSP)
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("X-Frame-Options", "DENY")
		// The sign-in token is in a URL: never let it leave in a Referer.
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Cache-Control", "no-store")
		// Defence in depth behind the CSRF token: a form posted from
		// another site is refused before anything reads it. (With
		// no-referrer, browsers send "Origin: null" for our own forms;
		// Sec-Fetch-Site still tells.)
		if r.Method == http.MethodPost {
			o, site := r.Header.Get("Origin"), r.Header.Get("Sec-Fetch-Site")
			if (o != "" && o != "null" && o != "https://"+r.Host) || site == "cross-site" || site == "same-site" {
				w.Header().Set("Content-Type", "text/plain; charset=utf-8")
				http.Error(w, "refused: a form from another origin", http.StatusForbidden)
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

// viewer is the signed-in operator of a request.
type viewer struct {
	Op control.Operator
	// CSRF goes into every form.
	CSRF string
	// Session is true for a cookie session (which has a sign-out).
	Session   bool
	sessionID string
}

func (v *viewer) CanChange() bool  { return v.Op.May(control.ChangeAgents) }
func (v *viewer) CanRecords() bool { return v.Op.May(control.ReadRecords) }
func (v *viewer) CanAgents() bool  { return v.Op.May(control.ReadAgents) }
func (v *viewer) CanIssue() bool   { return v.Op.May(adminOnly) }

// identify returns the operator of r: a session cookie first, then a client
// certificate. nil when neither is valid.
func (c *Console) identify(r *http.Request) *viewer {
	if ck, err := r.Cookie(cookieName); err == nil {
		se, err := c.sessions.get(ck.Value, c.cfg.Now())
		if err != nil {
			// Fail closed: the cookie signs nobody in while the store is down.
			c.cfg.Logger.Error("console: session store", "error", err)
		}
		if se != nil {
			return &viewer{Op: se.op, CSRF: se.csrf, Session: true, sessionID: ck.Value}
		}
	}
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil
	}
	op, err := c.cfg.Auth.Authenticate(r)
	if err != nil {
		return nil
	}
	return &viewer{Op: op, CSRF: certCSRF(c.csrfKey, r.TLS.PeerCertificates[0].Raw)}
}

type handler func(w http.ResponseWriter, r *http.Request, v *viewer)

// require serves h to an operator holding one of roles (nil: any signed-in
// operator); a change also needs the form's CSRF token.
func (c *Console) require(roles []control.Role, change bool, h handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v := c.identify(r)
		if v == nil {
			c.render(w, r, http.StatusUnauthorized, "login", nil, c.loginData(""))
			return
		}
		if roles != nil && !v.Op.May(roles) {
			c.render(w, r, http.StatusForbidden, "message", v, map[string]string{"Title": "Not allowed",
				"Text": fmt.Sprintf("Role %s may not do this.", v.Op.Role)})
			return
		}
		if change {
			r.Body = http.MaxBytesReader(w, r.Body, maxForm)
			if err := r.ParseForm(); err != nil {
				c.render(w, r, http.StatusBadRequest, "message", v, map[string]string{"Title": "Bad request", "Text": "The form could not be read."})
				return
			}
			if subtle.ConstantTimeCompare([]byte(r.PostForm.Get("csrf")), []byte(v.CSRF)) != 1 {
				c.render(w, r, http.StatusForbidden, "message", v, map[string]string{"Title": "Refused",
					"Text": "The form carried no valid CSRF token: reload the page and submit it again."})
				return
			}
		}
		h(w, r, v)
	})
}

// render executes a page; the layout shows the viewer (nil: signed out).
func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, page string, v *viewer, data any) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := c.pages[page].Execute(w, map[string]any{"V": v, "D": data, "Path": r.URL.Path, "Host": r.Host}); err != nil {
		c.cfg.Logger.Error("console: render", "page", page, "error", err)
	}
}

func (c *Console) message(w http.ResponseWriter, r *http.Request, status int, title, text string) {
	c.render(w, r, status, "message", nil, map[string]string{"Title": title, "Text": text})
}

// storeError answers an error of the CA inventory as the API does.
func (c *Console) storeError(w http.ResponseWriter, r *http.Request, v *viewer, err error) {
	status, text := http.StatusInternalServerError, "Internal error; see the control plane's log."
	switch {
	case errors.Is(err, ca.ErrNotFound):
		status, text = http.StatusNotFound, err.Error()
	case errors.Is(err, ca.ErrInvalid):
		status, text = http.StatusBadRequest, err.Error()
	case errors.Is(err, ca.ErrExists):
		status, text = http.StatusConflict, err.Error()+" (renew or reissue it from its page)"
	case errors.Is(err, ca.ErrStoreBusy):
		status, text = http.StatusServiceUnavailable, "The inventory is busy; retry."
	default:
		c.cfg.Logger.Error("console: inventory", "error", err)
	}
	c.render(w, r, status, "message", v, map[string]string{"Title": http.StatusText(status), "Text": text})
}

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	// The token is only consumed by the POST, so a link previewer or
	// scanner that fetches the URL does not use it up.
	c.render(w, r, http.StatusOK, "login", nil, c.loginData(r.URL.Query().Get("token")))
}

func (c *Console) loginData(token string) map[string]any {
	d := map[string]any{"Token": token}
	if c.oidc != nil {
		d["OIDC"] = c.oidc.cfg.Issuer
	}
	return d
}

// startSession signs op in on this browser.
func (c *Console) startSession(w http.ResponseWriter, op control.Operator) error {
	id, se, err := c.sessions.create(op, c.cfg.Now())
	if err != nil {
		c.cfg.Logger.Error("console: session store", "error", err)
		return err
	}
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: id, Path: "/", Expires: se.expires, MaxAge: int(SessionTTL / time.Second),
		HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	return nil
}

// landing is the first page of op.
func landing(op control.Operator) string {
	if !op.May(control.ReadAgents) {
		return "/ui/decisions"
	}
	return "/ui/fleet"
}

func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	if err := r.ParseForm(); err != nil {
		c.message(w, r, http.StatusBadRequest, "Bad request", "The form could not be read.")
		return
	}
	op, err := claimLink(c.cfg.Authority, r.PostForm.Get("token"), c.cfg.Now())
	if errors.Is(err, ErrLink) {
		c.message(w, r, http.StatusUnauthorized, "Sign-in refused", err.Error())
		return
	}
	if err != nil || c.startSession(w, op) != nil {
		if err != nil {
			c.cfg.Logger.Error("console: sign-in store", "error", err)
		}
		c.message(w, r, http.StatusServiceUnavailable, "Sign-in failed", "The sign-in store is unavailable; see the control plane's log, then retry with a new link.")
		return
	}
	if err := c.cfg.Authority.RecordEvent("", "", "", "console_signin", op.String(), "signed in to the console with a one-time link"); err != nil {
		c.cfg.Logger.Error("console: record sign-in", "error", err)
	}
	c.cfg.Logger.Info("console sign-in", "operator", op.String())
	http.Redirect(w, r, landing(op), http.StatusSeeOther)
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request, v *viewer) {
	if v.Session {
		if err := c.sessions.remove(v.sessionID); err != nil {
			// The session would live on, on every instance: say so.
			c.cfg.Logger.Error("console: session store", "error", err)
			c.message(w, r, http.StatusServiceUnavailable, "Not signed out", "The session store is unavailable, so the session could not be ended; retry.")
			return
		}
	}
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	c.message(w, r, http.StatusOK, "Signed out", "You are signed out.")
}

// Statuses of the fleet page.
const (
	StatusActive      = "active"
	StatusExpiring    = "expiring"
	StatusExpired     = "expired"
	StatusRevoked     = "revoked"
	StatusRestricted  = "restricted"
	StatusQuarantined = "quarantined"
)

// fleetRow is one agent on the fleet page.
type fleetRow struct {
	TrustDomain, ID, Trust, Owner, Status string
	NotAfter                              time.Time
}

// fleetStatus is an agent's status from its newest certificate and its
// restriction: a restriction shows only while the agent can still act.
func fleetStatus(newest ca.AgentSummary, r *ca.Restriction, now time.Time, within time.Duration) string {
	switch {
	case newest.Status == "revoked":
		return StatusRevoked
	case newest.Status == "expired" || !now.Before(newest.NotAfter):
		return StatusExpired
	case r != nil && r.Quarantined:
		return StatusQuarantined
	case r != nil:
		return StatusRestricted
	case newest.NotAfter.Sub(now) <= within:
		return StatusExpiring
	}
	return StatusActive
}

func (c *Console) fleet(w http.ResponseWriter, r *http.Request, v *viewer) {
	q := r.URL.Query()
	search, status, tenant := strings.TrimSpace(q.Get("q")), q.Get("status"), q.Get("tenant")
	snap, err := c.fleetAgents()
	if err != nil {
		c.storeError(w, r, v, err)
		return
	}
	now := c.cfg.Now()
	counts := map[string]int{}
	var rows []fleetRow
	agents := 0
	for _, a := range snap.agents { // in order: by trust domain, then id
		ct := a.cert
		if tenant != "" && ct.TrustDomain != tenant {
			continue
		}
		agents++
		st := fleetStatus(ct, a.restr, now, c.cfg.ExpiringWithin)
		counts[st]++
		if status != "" && st != status {
			continue
		}
		if search != "" && !strings.Contains(ct.AgentID, search) && !strings.Contains(ct.Owner, search) && !strings.Contains(ct.SPIFFEID, search) {
			continue
		}
		rows = append(rows, fleetRow{TrustDomain: ct.TrustDomain, ID: ct.AgentID, Trust: ct.Trust, Owner: ct.Owner, Status: st, NotAfter: ct.NotAfter})
	}
	total := len(rows)
	if len(rows) > maxFleetRows {
		rows = rows[:maxFleetRows]
	}
	tds := snap.tenants
	var ch *chart
	if v.CanRecords() && c.cfg.Records != nil {
		ch = c.decisionChart(r.Context(), "", q.Get("range"), "/ui/fleet?")
	}
	c.render(w, r, http.StatusOK, "fleet", v, map[string]any{
		"Chart": ch, "Rows": rows, "Total": total, "Shown": len(rows), "Search": search, "Status": status, "Tenant": tenant, "Tenants": tds,
		"Statuses": []string{StatusActive, StatusExpiring, StatusExpired, StatusRevoked, StatusRestricted, StatusQuarantined},
		"Counts":   counts, "Agents": agents, "Within": days(c.cfg.ExpiringWithin), "AsOf": snap.at,
	})
}

// days says a duration the way people count certificate lifetimes.
func days(d time.Duration) string {
	if n := int(d / (24 * time.Hour)); n >= 1 && d%(24*time.Hour) == 0 {
		if n == 1 {
			return "1 day"
		}
		return fmt.Sprintf("%d days", n)
	}
	return d.String()
}

func (c *Console) agent(w http.ResponseWriter, r *http.Request, v *viewer) {
	td, id := r.PathValue("td"), r.PathValue("id")
	d, err := c.cfg.Authority.Show(td, id)
	if err != nil {
		c.storeError(w, r, v, err)
		return
	}
	data := map[string]any{"A": d, "Done": r.URL.Query().Get("done"), "Reasons": revokeReasons,
		"Alerts": c.agentAlertList(r.Context(), v, d.Agent.SPIFFEID), "AlertsOff": c.cfg.Alerts == nil}
	if v.CanRecords() {
		if c.cfg.Records == nil {
			data["RecordsOff"] = true
		} else if p, err := c.cfg.Records.Find(r.Context(), recordstore.Query{Agent: d.Agent.SPIFFEID, Limit: agentRecords, Newest: true}); err != nil {
			c.cfg.Logger.Error("console: record store", "error", err)
			data["RecordsErr"] = true
		} else {
			data["Records"] = p.Records
			data["More"] = p.Next != ""
			if len(p.Records) > 0 {
				data["Chart"] = c.decisionChart(r.Context(), d.Agent.SPIFFEID, r.URL.Query().Get("range"),
					"/ui/agents/"+url.PathEscape(td)+"/"+url.PathEscape(id)+"?")
			}
		}
	}
	c.render(w, r, http.StatusOK, "agent", v, data)
}

// revokeReasons are the RFC 5280 reasons the form offers.
var revokeReasons = []string{"keyCompromise", "affiliationChanged", "superseded", "cessationOfOperation", "unspecified"}

// change restricts, lifts or revokes through the same inventory calls as
// the API, with the operator's identity for the change log.
func (c *Console) change(w http.ResponseWriter, r *http.Request, v *viewer) {
	td, id, action := r.PathValue("td"), r.PathValue("id"), r.PathValue("action")
	f := r.PostForm
	bad := func(text string) {
		c.render(w, r, http.StatusBadRequest, "message", v, map[string]string{"Title": "Not done", "Text": text})
	}
	if f.Get("confirm") != "yes" {
		bad("Tick the confirmation box: nothing was changed.")
		return
	}
	reason := strings.TrimSpace(f.Get("reason"))
	if reason == "" {
		bad("A reason is required: nothing was changed.")
		return
	}
	op := v.Op.String()
	var err error
	switch action {
	case "restrict":
		req := ca.RestrictRequest{TrustDomain: td, AgentID: id, Quarantine: f.Get("quarantine") == "yes",
			RemoveScopes: f["remove_scope"], Reason: reason, Operator: op}
		if s := f.Get("max_trust"); s != "" {
			n, cerr := strconv.Atoi(s)
			if cerr != nil {
				bad("Maximum trust must be a level from 0 to 4.")
				return
			}
			req.MaxTrust = &n
		}
		if s := strings.TrimSpace(f.Get("until")); s != "" {
			u, perr := ca.ParseUntil(s, c.cfg.Now())
			if perr != nil {
				c.storeError(w, r, v, perr)
				return
			}
			req.Until = &u
		}
		_, err = c.cfg.Authority.Restrict(req)
	case "lift":
		err = c.cfg.Authority.Lift(td, id, reason, op)
	case "revoke":
		rr, perr := ca.ParseReason(reason)
		if perr != nil {
			c.storeError(w, r, v, perr)
			return
		}
		_, err = c.cfg.Authority.Revoke(td, id, rr, op)
	default:
		c.render(w, r, http.StatusNotFound, "message", v, map[string]string{"Title": "Not found", "Text": "No such action."})
		return
	}
	if err != nil {
		c.storeError(w, r, v, err)
		return
	}
	c.fleetSnap.invalidate()
	c.cfg.Logger.Info("console: agent "+action, "trust_domain", td, "agent_id", id, "operator", op)
	http.Redirect(w, r, "/ui/agents/"+url.PathEscape(td)+"/"+url.PathEscape(id)+"?done="+action, http.StatusSeeOther) //nolint:gosec // G710: a fixed local path, escaped segments, action one of three
}

func (c *Console) decisions(w http.ResponseWriter, r *http.Request, v *viewer) {
	f := r.URL.Query()
	data := map[string]any{"F": f}
	if c.cfg.Records == nil {
		data["RecordsOff"] = true
		c.render(w, r, http.StatusOK, "decisions", v, data)
		return
	}
	q := recordstore.Query{DecisionID: f.Get("decision_id"), RequestID: f.Get("request_id"), Agent: f.Get("agent"),
		Tenant: f.Get("tenant"), Operation: f.Get("operation"), Outcome: f.Get("outcome"), Reason: f.Get("reason"),
		After: f.Get("cursor"), Limit: 100, Newest: f.Get("order") != "oldest"}
	for name, dst := range map[string]*time.Time{"since": &q.Since, "until": &q.Until} {
		if s := strings.TrimSpace(f.Get(name)); s != "" {
			t, err := time.Parse(time.RFC3339Nano, s)
			if err != nil {
				data["Error"] = fmt.Sprintf("%s: want RFC 3339 (2026-12-07T10:00:00Z), got %q", name, s)
				c.render(w, r, http.StatusBadRequest, "decisions", v, data)
				return
			}
			*dst = t
		}
	}
	p, err := c.cfg.Records.Find(r.Context(), q)
	if errors.Is(err, recordstore.ErrBadQuery) {
		data["Error"] = err.Error()
		c.render(w, r, http.StatusBadRequest, "decisions", v, data)
		return
	}
	if err != nil {
		c.cfg.Logger.Error("console: record store", "error", err)
		data["Error"] = "The record store is unavailable; retry."
		c.render(w, r, http.StatusServiceUnavailable, "decisions", v, data)
		return
	}
	data["Records"] = p.Records
	if p.Next != "" {
		n := url.Values{}
		for k, vs := range f {
			n[k] = vs
		}
		n.Set("cursor", p.Next)
		data["Next"] = "/ui/decisions?" + n.Encode()
	}
	c.render(w, r, http.StatusOK, "decisions", v, data)
}

func (c *Console) decision(w http.ResponseWriter, r *http.Request, v *viewer) {
	id := r.PathValue("id")
	if c.cfg.Records == nil {
		c.render(w, r, http.StatusServiceUnavailable, "message", v, map[string]string{"Title": "No record store", "Text": "This control plane has no record store."})
		return
	}
	p, err := c.cfg.Records.Find(r.Context(), recordstore.Query{DecisionID: id, Limit: 10})
	if err != nil && !errors.Is(err, recordstore.ErrBadQuery) {
		c.cfg.Logger.Error("console: record store", "error", err)
		c.render(w, r, http.StatusServiceUnavailable, "message", v, map[string]string{"Title": "Unavailable", "Text": "The record store is unavailable; retry."})
		return
	}
	if err != nil || len(p.Records) == 0 {
		c.render(w, r, http.StatusNotFound, "message", v, map[string]string{"Title": "Not found", "Text": fmt.Sprintf("No decision %q in the record store.", id)})
		return
	}
	type proven struct {
		recordstore.Stored
		Proof    *recordstore.Proven
		ProofErr string
	}
	var out []proven
	for _, st := range p.Records {
		pr := proven{Stored: st}
		// Verified now, from the stored rows, not taken from when the
		// record was shipped.
		if pr.Proof, err = c.cfg.Records.Prove(r.Context(), st.Log, st.Index); err != nil {
			c.cfg.Logger.Error("console: verify a stored record", "log", st.Log, "index", st.Index, "error", err)
			pr.ProofErr = err.Error()
		}
		out = append(out, pr)
	}
	c.render(w, r, http.StatusOK, "decision", v, map[string]any{"ID": id, "Records": out})
}
