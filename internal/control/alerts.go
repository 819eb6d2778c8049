package control

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/agentauthz/agentauthz/internal/alerts"
)

// Who may do what with alerts: auditors and responders read them,
// responders acknowledge them and decide their responses.
var (
	ReadAlerts   = []Role{RoleAuditor, RoleResponder}
	DecideAlerts = []Role{RoleResponder}
)

// NoteBody is the body of POST /v1/alerts/{id}/ack|approve|dismiss.
type NoteBody struct {
	Reason string `json:"reason"`
}

func (a *API) alertRoutes(mux *http.ServeMux) {
	mux.Handle("GET /v1/alerts", a.authn.Require(http.HandlerFunc(a.listAlerts), ReadAlerts...))
	mux.Handle("GET /v1/alerts/{id}", a.authn.Require(http.HandlerFunc(a.showAlert), ReadAlerts...))
	for verb, f := range map[string]func(*alerts.Service, *http.Request, string, string) (*alerts.Alert, error){
		"ack": func(s *alerts.Service, r *http.Request, op, why string) (*alerts.Alert, error) {
			return s.Ack(r.Context(), r.PathValue("id"), op, why)
		},
		"approve": func(s *alerts.Service, r *http.Request, op, why string) (*alerts.Alert, error) {
			return s.Approve(r.Context(), r.PathValue("id"), op, why)
		},
		"dismiss": func(s *alerts.Service, r *http.Request, op, why string) (*alerts.Alert, error) {
			return s.Dismiss(r.Context(), r.PathValue("id"), op, why)
		},
	} {
		mux.Handle("POST /v1/alerts/{id}/"+verb, a.authn.Require(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !a.alertsOn(w) {
				return
			}
			op, _ := OperatorFrom(r.Context())
			var b NoteBody
			if !a.decode(w, r, &b) {
				return
			}
			al, err := f(a.alerts, r, op.String(), b.Reason)
			if err != nil {
				a.alertError(w, err)
				return
			}
			a.changes.WithLabelValues("alert_" + verb).Inc()
			a.log.Info("alert "+verb, "id", al.ID, "operator", op.String())
			writeJSON(w, http.StatusOK, al)
		}), DecideAlerts...))
	}
}

func (a *API) alertsOn(w http.ResponseWriter) bool {
	if a.alerts == nil {
		writeError(w, http.StatusServiceUnavailable, "anomaly_off", errors.New("anomaly detection is off on this control plane (control serve --anomaly=false)"))
		return false
	}
	return true
}

func (a *API) alertError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, alerts.ErrNotFound):
		a.refuse(w, "unknown_alert", http.StatusNotFound, err)
	case errors.Is(err, alerts.ErrConflict):
		a.refuse(w, "conflict", http.StatusConflict, err)
	case errors.Is(err, alerts.ErrInvalid), errors.Is(err, alerts.ErrBadFilter):
		a.refuse(w, RefusedInvalid, http.StatusBadRequest, err)
	default:
		a.storeError(w, err)
	}
}

// listAlerts is GET /v1/alerts: newest first; filters open (true|false),
// rule, agent (SPIFFE ID, agent id or certificate hash), tenant, limit.
func (a *API) listAlerts(w http.ResponseWriter, r *http.Request) {
	if !a.alertsOn(w) {
		return
	}
	v := r.URL.Query()
	f := alerts.Filter{Rule: v.Get("rule"), Agent: v.Get("agent"), Tenant: v.Get("tenant")}
	if s := v.Get("open"); s != "" {
		b, err := strconv.ParseBool(s)
		if err != nil {
			a.refuse(w, RefusedBadRequest, http.StatusBadRequest, fmt.Errorf("open: %q is not true or false", s))
			return
		}
		f.Open = b
	}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			a.refuse(w, RefusedBadRequest, http.StatusBadRequest, fmt.Errorf("limit: %q is not a number", s))
			return
		}
		f.Limit = n
	}
	as, err := a.alerts.List(r.Context(), f)
	if err != nil {
		a.alertError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"alerts": as})
}

func (a *API) showAlert(w http.ResponseWriter, r *http.Request) {
	if !a.alertsOn(w) {
		return
	}
	al, err := a.alerts.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		a.alertError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, al)
}
