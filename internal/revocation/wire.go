package revocation

import "encoding/json"

// Watch protocol (documented in docs/revocation.md):
//
//	GET /v1/watch?tenant=<trust-domain>   Accept: text/event-stream
//
// The server answers 200 text/event-stream and immediately sends the
// tenant's current state as one event, then a new event whenever the state
// changes, and a comment line (": ping") every heartbeat interval:
//
//	event: revocation
//	id: <generation>
//	data: {"generation":42,"tenant":"example.test","crl":"<base64 DER>","revoked_agents":["bot-1"],
//	       "restrictions":{"bot-2":{"quarantined":true,"removed_scopes":[]}},"expires":1796000000,
//	       "signature":"<base64>"}
//
// The signature is the tenant CA's over PushMessage (push.go); replicas
// refuse an unsigned, wrongly signed, expired or older event.
//
// Every event carries the full state (the whole CRL and the whole agent
// list), so a replica never needs history: a reconnect is a resync. A CRL
// larger than the publisher's inline limit is not inlined: the event carries
// "crl_etag" instead and the replica fetches GET /v1/crl/<tenant>.

// Paths served by Publisher.
const (
	CRLPath   = "/v1/crl/"  // + <tenant>: DER CRL, application/pkix-crl
	WatchPath = "/v1/watch" // ?tenant=<tenant>: SSE stream of WatchEvent
)

// WatchEvent is the data of one "revocation" event.
type WatchEvent struct {
	// Generation is the CA store's revocation generation when the state
	// was read; it increases with every committed revocation.
	Generation int64 `json:"generation"`
	// Tenant is the trust domain the event is about.
	Tenant string `json:"tenant"`
	// CRL is the tenant's current CRL, DER, standard base64 in JSON. It is
	// verified like any other CRL before use.
	CRL []byte `json:"crl,omitempty"`
	// CRLETag is set instead of CRL when the CRL is too large to inline:
	// the ETag of the CRL now served at CRLPath+Tenant.
	CRLETag string `json:"crl_etag,omitempty"`
	// RevokedAgents lists agent ids under an agent-level revocation.
	RevokedAgents []string `json:"revoked_agents"`
	// Restrictions is the tenant's restrictions in force, a JSON object by
	// agent id in the shape of data.agentauthz.restrictions.
	Restrictions json.RawMessage `json:"restrictions,omitempty"`
	// Expires is when this signed state stops being applied (Unix seconds);
	// the publisher re-signs unchanged state before then.
	Expires int64 `json:"expires"`
	// Signature is the tenant CA's signature over PushMessage(event),
	// standard base64 in JSON.
	Signature []byte `json:"signature"`
}
