package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentauthz/agentauthz/internal/alerts"
	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/recordstore"
	"github.com/agentauthz/agentauthz/internal/revocation"
)

// maxBody bounds a request body of the API.
const maxBody = 64 << 10

// API refusal reasons, the "reason" label of
// agentauthz_control_refused_total.
const (
	RefusedBadRequest   = "bad_request"
	RefusedInvalid      = "invalid_input"
	RefusedUnknownAgent = "unknown_agent"
	RefusedBusy         = "busy"
	RefusedInternal     = "internal"
)

// Config configures the control plane's HTTP API.
type Config struct {
	Authority *ca.Authority
	Publisher *revocation.Publisher
	// Records is the central decision store replicas ship to.
	Records *recordstore.Store
	// Alerts is the anomaly detector's alerts; nil when it is off.
	Alerts *alerts.Service
	// Auth authenticates callers; nil serves the public endpoints only
	// (CRLs and the signed watch stream) and refuses the rest, for a
	// control plane run without TLS.
	Auth       *Authenticator
	Logger     hclog.Logger
	Registerer prometheus.Registerer
}

// API is the control plane's HTTP API.
type API struct {
	auth    *ca.Authority
	pub     *revocation.Publisher
	authn   *Authenticator
	log     hclog.Logger
	refused *prometheus.CounterVec
	authRef *prometheus.CounterVec
	changes *prometheus.CounterVec
	records *recordstore.Store
	rm      *recordMetrics
	alerts  *alerts.Service
}

// NewAPI registers the control plane metrics and returns the API.
func NewAPI(cfg Config) (*API, error) {
	a := &API{auth: cfg.Authority, pub: cfg.Publisher, authn: cfg.Auth, log: cfg.Logger, records: cfg.Records, rm: newRecordMetrics(), alerts: cfg.Alerts,
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agentauthz_control_refused_total",
			Help: "API requests refused for their content, by reason (bad_request, invalid_input, unknown_agent, busy, internal)."}, []string{"reason"}),
		authRef: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agentauthz_control_auth_refused_total",
			Help: "Requests refused by authentication or role, by reason (no_tls, no_certificate, expired, unknown_ca, invalid_certificate, no_role, wrong_role)."}, []string{"reason"}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agentauthz_control_changes_total",
			Help: "State changes made through the API, by kind (restrict, lift, revoke, alert_ack, alert_approve, alert_dismiss, policy_simulation)."}, []string{"kind"}),
	}
	if a.log == nil {
		a.log = hclog.NewNullLogger()
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{a.refused, a.authRef, a.changes, a.rm.stored, a.rm.refused, a.rm.lag} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, err
			}
		}
	}
	if a.authn != nil {
		prev := a.authn.refused
		a.authn.refused = func(r string) { a.authRef.WithLabelValues(r).Inc(); prev(r) }
	}
	return a, nil
}

// Handler serves the public endpoints (GET /v1/crl/<tenant>, /healthz) and,
// to authenticated callers, the watch stream and the API.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	pub := a.pub.Handler()
	mux.Handle("GET "+revocation.CRLPath+"{tenant}", pub)
	mux.Handle("GET /healthz", pub)
	mux.HandleFunc("GET /v1/changelog/key", a.changeLogKey)
	read, change := ReadAgents, ChangeAgents
	if a.authn == nil {
		// Without TLS: the watch stream is signed, so it may still be
		// served; everything else says why it is off.
		mux.Handle("GET "+revocation.WatchPath, pub)
		off := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			a.authRef.WithLabelValues(AuthNoTLS).Inc()
			writeError(w, http.StatusUnauthorized, AuthNoTLS,
				errors.New("the control plane API is off: control serve runs without TLS (--plain-http)"))
		})
		mux.Handle("/v1/", off)
		return mux
	}
	mux.Handle("GET "+revocation.WatchPath, a.authn.Require(pub, RoleReplica, RoleAuditor, RoleResponder))
	mux.Handle("GET /v1/agents/{td}/{id}", a.authn.Require(http.HandlerFunc(a.showAgent), read...))
	mux.Handle("GET /v1/changes", a.authn.Require(http.HandlerFunc(a.listChanges), read...))
	mux.Handle("GET /v1/changelog/verify", a.authn.Require(http.HandlerFunc(a.verifyChangeLog), read...))
	mux.Handle("POST /v1/agents/{td}/{id}/restrict", a.authn.Require(http.HandlerFunc(a.restrict), change...))
	mux.Handle("POST /v1/agents/{td}/{id}/lift", a.authn.Require(http.HandlerFunc(a.lift), change...))
	mux.Handle("POST /v1/agents/{td}/{id}/revoke", a.authn.Require(http.HandlerFunc(a.revoke), change...))
	mux.Handle("POST /v1/records", a.authn.Require(http.HandlerFunc(a.shipRecords), RoleReplica))
	mux.Handle("GET /v1/records/cursor", a.authn.Require(http.HandlerFunc(a.recordCursor), RoleReplica, RoleAuditor))
	mux.Handle("GET /v1/records", a.authn.Require(http.HandlerFunc(a.findRecords), ReadRecords...))
	mux.Handle("GET /v1/records/verify", a.authn.Require(http.HandlerFunc(a.verifyRecords), ReadRecords...))
	mux.Handle("GET /v1/logs", a.authn.Require(http.HandlerFunc(a.listLogs), RoleAuditor))
	mux.Handle("POST /v1/simulations", a.authn.Require(http.HandlerFunc(a.recordSimulation), RecordSimulations...))
	a.alertRoutes(mux)
	mux.Handle("GET /v1/whoami", a.authn.Require(http.HandlerFunc(a.whoami), RoleAuditor, RoleResponder, RoleReplica))
	return mux
}

// RestrictBody is the body of POST /v1/agents/{td}/{id}/restrict.
type RestrictBody struct {
	Quarantine   bool     `json:"quarantine,omitempty"`
	MaxTrust     *int     `json:"max_trust,omitempty"`
	RemoveScopes []string `json:"remove_scopes,omitempty"`
	// Until is RFC 3339; empty keeps the restriction until lifted.
	Until  string `json:"until,omitempty"`
	Reason string `json:"reason"`
}

// ReasonBody is the body of lift: why, for the change log.
type ReasonBody struct {
	Reason string `json:"reason"`
}

// RevokeBody is the body of revoke.
type RevokeBody struct {
	// Reason is an RFC 5280 reason name (keyCompromise, …); default
	// unspecified.
	Reason string `json:"reason,omitempty"`
}

func (a *API) decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody+1))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		a.refuse(w, RefusedBadRequest, http.StatusBadRequest, fmt.Errorf("request body: %w", err))
		return false
	}
	if dec.More() {
		a.refuse(w, RefusedBadRequest, http.StatusBadRequest, errors.New("request body: more than one JSON value"))
		return false
	}
	return true
}

func (a *API) refuse(w http.ResponseWriter, reason string, status int, err error) {
	a.refused.WithLabelValues(reason).Inc()
	writeError(w, status, reason, err)
}

// storeError answers an error of the CA inventory.
func (a *API) storeError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ca.ErrNotFound):
		a.refuse(w, RefusedUnknownAgent, http.StatusNotFound, err)
	case errors.Is(err, ca.ErrInvalid):
		a.refuse(w, RefusedInvalid, http.StatusBadRequest, err)
	case errors.Is(err, ca.ErrStoreBusy):
		a.refuse(w, RefusedBusy, http.StatusServiceUnavailable, err)
	default:
		a.log.Error("control: inventory", "error", err)
		a.refuse(w, RefusedInternal, http.StatusInternalServerError, errors.New("internal error; see the control plane's log"))
	}
}

func (a *API) restrict(w http.ResponseWriter, r *http.Request) {
	op, _ := OperatorFrom(r.Context())
	var b RestrictBody
	if !a.decode(w, r, &b) {
		return
	}
	req := ca.RestrictRequest{TrustDomain: r.PathValue("td"), AgentID: r.PathValue("id"), Quarantine: b.Quarantine,
		MaxTrust: b.MaxTrust, RemoveScopes: b.RemoveScopes, Reason: b.Reason, Operator: op.String()}
	if b.Until != "" {
		u, err := ca.ParseUntil(b.Until, time.Now())
		if err != nil {
			a.storeError(w, err)
			return
		}
		req.Until = &u
	}
	res, err := a.auth.Restrict(req)
	if err != nil {
		a.storeError(w, err)
		return
	}
	a.changes.WithLabelValues("restrict").Inc()
	a.log.Info("agent restricted", "trust_domain", res.TrustDomain, "agent_id", res.AgentID, "operator", op.String())
	writeJSON(w, http.StatusOK, res)
}

func (a *API) lift(w http.ResponseWriter, r *http.Request) {
	op, _ := OperatorFrom(r.Context())
	var b ReasonBody
	if !a.decode(w, r, &b) {
		return
	}
	td, id := r.PathValue("td"), r.PathValue("id")
	if err := a.auth.Lift(td, id, b.Reason, op.String()); err != nil {
		a.storeError(w, err)
		return
	}
	a.changes.WithLabelValues("lift").Inc()
	a.log.Info("agent restriction lifted", "trust_domain", td, "agent_id", id, "operator", op.String())
	writeJSON(w, http.StatusOK, map[string]string{"lifted": ca.SPIFFEID(td, id)})
}

func (a *API) revoke(w http.ResponseWriter, r *http.Request) {
	op, _ := OperatorFrom(r.Context())
	var b RevokeBody
	if !a.decode(w, r, &b) {
		return
	}
	reason, err := ca.ParseReason(b.Reason)
	if err != nil {
		a.storeError(w, err)
		return
	}
	td, id := r.PathValue("td"), r.PathValue("id")
	serials, err := a.auth.Revoke(td, id, reason, op.String())
	if err != nil {
		a.storeError(w, err)
		return
	}
	a.changes.WithLabelValues("revoke").Inc()
	a.log.Info("agent revoked", "trust_domain", td, "agent_id", id, "operator", op.String())
	writeJSON(w, http.StatusOK, map[string]any{"revoked": ca.SPIFFEID(td, id), "serials": serials})
}

func (a *API) showAgent(w http.ResponseWriter, r *http.Request) {
	d, err := a.auth.Show(r.PathValue("td"), r.PathValue("id"))
	if err != nil {
		a.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

func (a *API) listChanges(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	ev, err := a.auth.Events(q.Get("tenant"), q.Get("agent"))
	if err != nil {
		a.storeError(w, err)
		return
	}
	if ev == nil {
		ev = []ca.Event{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"changes": ev})
}

// verifyChangeLog is GET /v1/changelog/verify: the signed change log checked
// with the control plane's key, as audit verify --changelog does on its
// data directory (the evidence pack's CC8.1 with --server).
func (a *API) verifyChangeLog(w http.ResponseWriter, _ *http.Request) {
	keys, err := ca.ChangeLogKeys(a.auth.DataDir()) // the current key and the retired ones it follows
	if errors.Is(err, os.ErrNotExist) {
		writeError(w, http.StatusNotFound, "no_change_log", errors.New("no change has been logged yet"))
		return
	}
	if err != nil {
		a.storeError(w, err)
		return
	}
	res, err := a.auth.VerifyChangeLog(keys...)
	if err != nil {
		a.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (a *API) whoami(w http.ResponseWriter, r *http.Request) {
	op, _ := OperatorFrom(r.Context())
	writeJSON(w, http.StatusOK, map[string]string{"name": op.Name, "role": string(op.Role)})
}

// changeLogKey serves the public key of the signed change log (public: an
// auditor should still compare it with a copy obtained out of band).
func (a *API) changeLogKey(w http.ResponseWriter, _ *http.Request) {
	b, err := os.ReadFile(ca.ChangeLogKeyPath(a.auth.DataDir()))
	if err != nil {
		writeError(w, http.StatusNotFound, "no_change_log", errors.New("no change has been logged yet"))
		return
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	_, _ = w.Write(b) // the client went away: nothing to do
}
