package evidence

import (
	"slices"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/simulate"
)

// leanDecoder decodes record lines for counting with policy simulate's
// decoder (fastjson for decision lines as agentauthz writes them, the log's
// strict decoder for anything else: the same records and errors as
// decisionlog.DecodeLine), and keeps the fields the report counts. The
// whole record is decoded again only for a decision that enters the
// sample. The log's integrity is Verify's job, beside the scan. One per
// worker: it is not safe for concurrent use.
type leanDecoder struct{ d simulate.LineDecoder }

func (l *leanDecoder) decode(line string) (*decisionlog.Record, error) {
	r, err := l.d.Decode(line) // reused by the next Decode: copy what is kept
	if err != nil {
		return nil, err
	}
	out := &decisionlog.Record{Kind: r.Kind, Log: r.Log, DecisionID: r.DecisionID, Time: r.Time,
		Agent:    decisionlog.Agent{ID: r.Agent.ID, Tenant: r.Agent.Tenant, TrustLevel: r.Agent.TrustLevel, CertSHA256: r.Agent.CertSHA256},
		Request:  decisionlog.Request{Operation: r.Request.Operation},
		Decision: decisionlog.Decision{Allowed: r.Decision.Allowed, Reasons: slices.Clone(r.Decision.Reasons), PolicyRevision: r.Decision.PolicyRevision}}
	if r.Response != nil {
		out.Response = &decisionlog.Response{Body: r.Response.Body, Signature: r.Response.Signature}
	}
	return out, nil
}
