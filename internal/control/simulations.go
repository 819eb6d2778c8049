package control

import (
	"fmt"
	"net/http"

	"github.com/agentauthz/agentauthz/internal/simrun"
)

// recordSimulation is POST /v1/simulations: a policy simulation run
// (agentauthz policy simulate --record --server) appended to the signed
// change log as a policy_simulation row, with the authenticated operator.
// The body is a simrun.Run; the detail is built here from the validated
// fields, never taken as text from the caller.
func (a *API) recordSimulation(w http.ResponseWriter, r *http.Request) {
	op, _ := OperatorFrom(r.Context())
	var run simrun.Run
	if !a.decode(w, r, &run) {
		return
	}
	if err := run.Validate(); err != nil {
		a.refuse(w, RefusedInvalid, http.StatusBadRequest, err)
		return
	}
	detail := run.Detail()
	if err := a.auth.RecordEvent("", "", "", simrun.Event, op.String(), detail); err != nil {
		a.storeError(w, err)
		return
	}
	a.changes.WithLabelValues(simrun.Event).Inc()
	a.log.Info("policy simulation recorded", "revision", fmt.Sprintf("%q", run.Revision), "gate", run.Gate, "operator", op.String())
	writeJSON(w, http.StatusOK, map[string]string{"event": simrun.Event, "operator": op.String(), "detail": detail})
}
