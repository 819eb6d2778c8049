package console

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/agentauthz/agentauthz/internal/alerts"
	"github.com/agentauthz/agentauthz/internal/anomaly"
	"github.com/agentauthz/agentauthz/internal/control"
)

// The Alerts page: the anomaly detector's alerts with their explanation and
// the decisions behind them, and a responder's decisions on their
// responses (approve or dismiss a proposed or automatic restriction,
// acknowledge), each with a reason, a confirmation and the CSRF token, and
// recorded in the change log by internal/alerts.

const (
	maxAlertRows = 200
	agentAlerts  = 20
)

func (v *viewer) CanAlerts() bool { return v.Op.May(control.ReadAlerts) }
func (v *viewer) CanDecide() bool { return v.Op.May(control.DecideAlerts) }

func (c *Console) alertRoutes(mux *http.ServeMux) {
	mux.Handle("GET /ui/alerts", c.require(control.ReadAlerts, false, c.alertList))
	mux.Handle("GET /ui/alerts/{id}", c.require(control.ReadAlerts, false, c.alertPage))
	mux.Handle("POST /ui/alerts/{id}/{action}", c.require(control.DecideAlerts, true, c.alertDecide))
}

func (c *Console) alertsOff(w http.ResponseWriter, r *http.Request, v *viewer) bool {
	if c.cfg.Alerts != nil {
		return false
	}
	c.render(w, r, http.StatusServiceUnavailable, "message", v, map[string]string{"Title": "Anomaly detection off",
		"Text": "This control plane runs without the anomaly detector (control serve --anomaly=false)."})
	return true
}

func (c *Console) alertError(w http.ResponseWriter, r *http.Request, v *viewer, err error) {
	var status int
	switch {
	case errors.Is(err, alerts.ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, alerts.ErrConflict), errors.Is(err, alerts.ErrInvalid), errors.Is(err, alerts.ErrBadFilter):
		status = http.StatusBadRequest
	default:
		c.storeError(w, r, v, err)
		return
	}
	c.render(w, r, status, "message", v, map[string]string{"Title": "Not done", "Text": err.Error()})
}

func (c *Console) alertList(w http.ResponseWriter, r *http.Request, v *viewer) {
	if c.alertsOff(w, r, v) {
		return
	}
	q := r.URL.Query()
	f := alerts.Filter{Open: q.Get("open") == "yes", Rule: q.Get("rule"), Agent: strings.TrimSpace(q.Get("agent")), Limit: maxAlertRows}
	as, err := c.cfg.Alerts.List(r.Context(), f)
	if err != nil {
		c.alertError(w, r, v, err)
		return
	}
	c.render(w, r, http.StatusOK, "alerts", v, map[string]any{"Alerts": as, "F": q, "Rules": anomaly.Rules, "Max": maxAlertRows})
}

func (c *Console) alertPage(w http.ResponseWriter, r *http.Request, v *viewer) {
	if c.alertsOff(w, r, v) {
		return
	}
	a, err := c.cfg.Alerts.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		c.alertError(w, r, v, err)
		return
	}
	c.render(w, r, http.StatusOK, "alert", v, map[string]any{"A": a, "Done": r.URL.Query().Get("done")})
}

// alertDecide acknowledges an alert, or approves or dismisses its response,
// through the same calls as the API, with the operator's identity.
func (c *Console) alertDecide(w http.ResponseWriter, r *http.Request, v *viewer) {
	if c.alertsOff(w, r, v) {
		return
	}
	id, action, f := r.PathValue("id"), r.PathValue("action"), r.PostForm
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
	var do func(context.Context, string, string, string) (*alerts.Alert, error)
	switch action {
	case "ack":
		do = c.cfg.Alerts.Ack
	case "approve":
		do = c.cfg.Alerts.Approve
	case "dismiss":
		do = c.cfg.Alerts.Dismiss
	default:
		c.render(w, r, http.StatusNotFound, "message", v, map[string]string{"Title": "Not found", "Text": "No such action."})
		return
	}
	if _, err := do(r.Context(), id, v.Op.String(), reason); err != nil {
		c.alertError(w, r, v, err)
		return
	}
	c.cfg.Logger.Info("console: alert "+action, "id", id, "operator", v.Op.String())
	http.Redirect(w, r, "/ui/alerts/"+url.PathEscape(id)+"?done="+action, http.StatusSeeOther) //nolint:gosec // G710: a fixed local path, an escaped id, action one of three
}

// agentAlertList is the agent page's alerts section: nil when the viewer
// may not read alerts or detection is off.
func (c *Console) agentAlertList(ctx context.Context, v *viewer, spiffeID string) []alerts.Alert {
	if c.cfg.Alerts == nil || !v.CanAlerts() {
		return nil
	}
	as, err := c.cfg.Alerts.List(ctx, alerts.Filter{Agent: spiffeID, Limit: agentAlerts})
	if err != nil {
		c.cfg.Logger.Error("console: alerts", "error", err)
		return nil
	}
	return as
}
