package evidence

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
)

// leanRecord holds the fields of a record line that the report counts.
// Decoding only these costs about two thirds of a whole record
// (decisionlog.DecodeLine, which checks the line's head and decodes it
// twice); the whole record is decoded only for a decision that enters the
// sample. The log's integrity is Verify's job, beside the scan.
type leanRecord struct {
	Kind       string `json:"kind"`
	Log        string `json:"log"`
	DecisionID string `json:"decision_id"`
	Time       string `json:"time"`
	Agent      struct {
		ID         string `json:"id"`
		Tenant     string `json:"tenant"`
		TrustLevel string `json:"trust_level"`
		CertSHA256 string `json:"cert_sha256"`
	} `json:"agent"`
	Request struct {
		Operation string `json:"operation"`
	} `json:"request"`
	Decision struct {
		Allowed        bool     `json:"allowed"`
		Reasons        []string `json:"reasons"`
		PolicyRevision string   `json:"policy_revision"`
	} `json:"decision"`
	Response *struct {
		Body      string `json:"body"`
		Signature string `json:"signature"`
	} `json:"response"`
}

// decodeLean decodes the counted fields of a record line. A v1 line (a
// JWS) is decoded whole.
func decodeLean(line string) (*decisionlog.Record, error) {
	if !strings.HasPrefix(line, "{") {
		return decisionlog.DecodeLine(line)
	}
	if len(line) > decisionlog.MaxRecordBytes {
		return nil, fmt.Errorf("%w: longer than %d bytes", decisionlog.ErrMalformed, decisionlog.MaxRecordBytes)
	}
	var l leanRecord
	if err := json.Unmarshal([]byte(line), &l); err != nil {
		return nil, fmt.Errorf("%w: %v", decisionlog.ErrMalformed, err)
	}
	t, err := time.Parse(decisionlog.TimeLayout, l.Time)
	if err != nil {
		return nil, fmt.Errorf("%w: record time: %v", decisionlog.ErrMalformed, err)
	}
	r := &decisionlog.Record{Kind: l.Kind, Log: l.Log, DecisionID: l.DecisionID, Time: t,
		Agent:    decisionlog.Agent{ID: l.Agent.ID, Tenant: l.Agent.Tenant, TrustLevel: l.Agent.TrustLevel, CertSHA256: l.Agent.CertSHA256},
		Request:  decisionlog.Request{Operation: l.Request.Operation},
		Decision: decisionlog.Decision{Allowed: l.Decision.Allowed, Reasons: l.Decision.Reasons, PolicyRevision: l.Decision.PolicyRevision}}
	if l.Response != nil {
		r.Response = &decisionlog.Response{Body: l.Response.Body, Signature: l.Response.Signature}
	}
	return r, nil
}
