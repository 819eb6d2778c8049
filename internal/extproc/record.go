package extproc

import (
	"context"
	"time"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
)

// ResponseRecord is what the log keeps of one signed response.
type ResponseRecord struct {
	Decision       Decision
	Time           time.Time
	Status         int
	Body           string // BodySigned, "unsigned: <why>" or BodyIncomplete
	ContentDigest  string
	Bytes          int64
	SignatureInput string
	Signature      string
}

// Values of ResponseRecord.Body.
const (
	BodySigned     = "signed"
	BodyIncomplete = "incomplete"
)

// ResponseLog records responses. It is an interface so the processor does
// not depend on how the decision log stores them.
type ResponseLog interface {
	AppendResponse(ctx context.Context, r ResponseRecord) error
}

// DecisionLog records responses as "response" records in the decision log,
// beside the decision they share a decision_id with.
type DecisionLog struct{ Log Appender }

// AppendResponse appends r (durably, in the log's sync mode).
func (l DecisionLog) AppendResponse(ctx context.Context, r ResponseRecord) error {
	d := r.Decision
	_, err := l.Log.Append(ctx, &decisionlog.Record{
		DecisionID: d.ID,
		Time:       r.Time,
		Kind:       decisionlog.KindResponse,
		Agent:      decisionlog.Agent{ID: d.AgentID, TrustLevel: d.TrustLevel},
		Request:    decisionlog.Request{Method: d.Method, Host: d.Host, Path: d.Path, Operation: d.Operation},
		// Responses exist only for allowed decisions; the record repeats
		// that outcome rather than leave a misleading "allowed": false.
		Decision: decisionlog.Decision{Allowed: true, HTTPStatus: 200, Reasons: []string{"allowed"}},
		Response: &decisionlog.Response{
			Status: r.Status, Body: r.Body, ContentDigest: r.ContentDigest, Bytes: r.Bytes,
			SignatureInput: r.SignatureInput, Signature: r.Signature,
		},
	})
	return err
}
