package control

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/recordstore"
)

// Shipping limits: a batch is at most MaxShipRecords records and
// MaxShipBytes of body.
const (
	MaxShipRecords = 1000
	MaxShipBytes   = 8 << 20
)

// ShipBody is the body of POST /v1/records: consecutive group-commit
// batches of one log, each with its signed checkpoint.
type ShipBody struct {
	Log string `json:"log"`
	// Keys is the log's JWKS; pinned when the log first ships.
	Keys decisionlog.JWKS `json:"keys"`
	// Head is the number of records in the replica's log, for the lag
	// metric.
	Head   uint64              `json:"head"`
	Groups []recordstore.Group `json:"groups"`
}

type recordMetrics struct {
	stored  prometheus.Counter
	refused *prometheus.CounterVec
	lag     *prometheus.GaugeVec
}

func newRecordMetrics() *recordMetrics {
	return &recordMetrics{
		stored: prometheus.NewCounter(prometheus.CounterOpts{Name: "agentauthz_control_records_stored_total",
			Help: "Shipped records verified and stored."}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agentauthz_control_records_refused_total",
			Help: "Shipped batches refused, by reason (bad_signature, bad_checkpoint, gap, not_append_only, wrong_log, conflict, malformed, no_keys): each is an alarm."}, []string{"reason"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "agentauthz_control_records_lag",
			Help: "Records a replica reported but the store does not hold yet, by log."}, []string{"log"}),
	}
}

func (a *API) shipRecords(w http.ResponseWriter, r *http.Request) {
	op, _ := OperatorFrom(r.Context())
	var b ShipBody
	dec := json.NewDecoder(io.LimitReader(r.Body, MaxShipBytes+1))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		a.refuse(w, RefusedBadRequest, http.StatusBadRequest, fmt.Errorf("request body: %w", err))
		return
	}
	if b.Log != op.Name {
		// A replica ships only the log named after its certificate.
		a.rm.refused.WithLabelValues(recordstore.RefusedWrongLog).Inc()
		a.log.Error("ALARM: a replica shipped another replica's log", "replica", op.Name, "log", b.Log)
		writeError(w, http.StatusForbidden, recordstore.RefusedWrongLog, fmt.Errorf("replica %q may ship only its own log, not %q", op.Name, b.Log))
		return
	}
	n := 0
	for _, g := range b.Groups {
		n += len(g.Records)
	}
	if n > MaxShipRecords {
		a.refuse(w, RefusedBadRequest, http.StatusRequestEntityTooLarge, fmt.Errorf("%d records in one shipment; at most %d", n, MaxShipRecords))
		return
	}
	keys := decisionlog.KeySet{}
	for _, k := range b.Keys.Keys {
		pub, err := decodeJWK(k)
		if err != nil {
			a.refuse(w, RefusedBadRequest, http.StatusBadRequest, fmt.Errorf("keys: %w", err))
			return
		}
		keys.Add(pub)
	}
	res, err := a.records.Append(r.Context(), recordstore.Shipment{Log: b.Log, Keys: keys, Head: b.Head, Groups: b.Groups})
	var ref *recordstore.Refusal
	if errors.As(err, &ref) {
		res, err = &recordstore.Result{Refused: ref}, nil
	}
	if err != nil {
		a.log.Error("control: record store", "error", err)
		a.refuse(w, RefusedInternal, http.StatusServiceUnavailable, errors.New("record store unavailable; retry"))
		return
	}
	a.rm.stored.Add(float64(res.Stored))
	if res.Stored > 0 && a.alerts != nil {
		a.alerts.Wake()
	}
	a.rm.lag.WithLabelValues(b.Log).Set(float64(max(b.Head, res.Size) - res.Size))
	status := http.StatusOK
	if res.Refused != nil {
		a.rm.refused.WithLabelValues(res.Refused.Reason).Inc()
		a.log.Error("ALARM: shipped records refused; nothing stored was changed", "log", b.Log, "index", res.Refused.Index,
			"reason", res.Refused.Reason, "detail", res.Refused.Detail)
		status = http.StatusUnprocessableEntity
	}
	writeJSON(w, status, res)
}

func (a *API) recordCursor(w http.ResponseWriter, r *http.Request) {
	op, _ := OperatorFrom(r.Context())
	log := r.URL.Query().Get("log")
	if op.Role == RoleReplica && log != op.Name {
		writeError(w, http.StatusForbidden, AuthWrongRole, fmt.Errorf("replica %q may read only its own log's cursor", op.Name))
		return
	}
	c, err := a.records.LogCursor(r.Context(), log)
	if err != nil {
		a.log.Error("control: record store", "error", err)
		a.refuse(w, RefusedInternal, http.StatusServiceUnavailable, errors.New("record store unavailable; retry"))
		return
	}
	writeJSON(w, http.StatusOK, c)
}

// findRecords is GET /v1/records: the auditor's query across the fleet.
// Filters: decision_id, request_id, agent (id or SPIFFE ID), tenant,
// operation, outcome (allowed|denied), reason, log, since, until (RFC 3339);
// limit (≤ 1000) and cursor (the "next" of the previous page).
func (a *API) findRecords(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	q := recordstore.Query{DecisionID: v.Get("decision_id"), RequestID: v.Get("request_id"), Agent: v.Get("agent"),
		Tenant: v.Get("tenant"), Operation: v.Get("operation"), Outcome: v.Get("outcome"), Reason: v.Get("reason"),
		Log: v.Get("log"), After: v.Get("cursor")}
	for name, dst := range map[string]*time.Time{"since": &q.Since, "until": &q.Until} {
		if s := v.Get(name); s != "" {
			t, err := time.Parse(time.RFC3339Nano, s)
			if err != nil {
				a.refuse(w, RefusedBadRequest, http.StatusBadRequest, fmt.Errorf("%s: want RFC 3339, got %q", name, s))
				return
			}
			*dst = t
		}
	}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			a.refuse(w, RefusedBadRequest, http.StatusBadRequest, fmt.Errorf("limit: %q is not a number", s))
			return
		}
		q.Limit = n
	}
	p, err := a.records.Find(r.Context(), q)
	if errors.Is(err, recordstore.ErrBadQuery) {
		a.refuse(w, RefusedBadRequest, http.StatusBadRequest, err)
		return
	}
	if err != nil {
		a.log.Error("control: record store", "error", err)
		a.refuse(w, RefusedInternal, http.StatusServiceUnavailable, errors.New("record store unavailable; retry"))
		return
	}
	writeJSON(w, http.StatusOK, p)
}

func (a *API) verifyRecords(w http.ResponseWriter, r *http.Request) {
	res, err := a.records.Verify(r.Context(), r.URL.Query().Get("log"), nil)
	if err != nil {
		a.refuse(w, RefusedUnknownAgent, http.StatusNotFound, fmt.Errorf("log %q: not stored", r.URL.Query().Get("log")))
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (a *API) listLogs(w http.ResponseWriter, r *http.Request) {
	ls, err := a.records.Logs(r.Context())
	if err != nil {
		a.log.Error("control: record store", "error", err)
		a.refuse(w, RefusedInternal, http.StatusServiceUnavailable, errors.New("record store unavailable; retry"))
		return
	}
	if ls == nil {
		ls = []recordstore.LogStatus{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"logs": ls})
}

func decodeJWK(k decisionlog.JWK) (ed25519.PublicKey, error) {
	if k.Kty != "OKP" || k.Crv != "Ed25519" {
		return nil, fmt.Errorf("key %q: want an OKP Ed25519 JWK", k.Kid)
	}
	b, err := base64.RawURLEncoding.DecodeString(k.X)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("key %q: x is not a 32-byte base64url value", k.Kid)
	}
	return ed25519.PublicKey(b), nil
}
