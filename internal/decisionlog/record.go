package decisionlog

import "time"

// Record is one decision as it is signed into the log. The JSON names are the
// documented format (docs/decision-log.md); never rename one.
//
// The caller fills DecisionID, Time, Agent, Request and Decision. The log
// assigns Seq, Log, KeyID and Prev when it appends the record.
type Record struct {
	Seq        uint64    `json:"seq"`
	DecisionID string    `json:"decision_id"`
	Time       time.Time `json:"-"`
	Log        string    `json:"log"`
	KeyID      string    `json:"kid"`
	Prev       string    `json:"prev"` // lowercase hex SHA-256 of the previous record's JWS; "" for the first

	Agent    Agent    `json:"agent"`
	Request  Request  `json:"request"`
	Decision Decision `json:"decision"`
}

// Agent is what is known of the caller. For identity failures only the
// certificate fields may be set.
type Agent struct {
	ID         string   `json:"id,omitempty"`
	SPIFFEID   string   `json:"spiffe_id,omitempty"`
	Tenant     string   `json:"tenant,omitempty"`
	TrustLevel string   `json:"trust_level,omitempty"` // "L0".."L4"
	Scopes     []string `json:"scopes,omitempty"`
	Owner      string   `json:"owner,omitempty"`
	Serial     string   `json:"serial,omitempty"`
	CertSHA256 string   `json:"cert_sha256,omitempty"`
	Issuer     string   `json:"issuer,omitempty"`
	Source     string   `json:"source,omitempty"`
}

// Request describes the request that was decided. Bodies and credentials are
// never recorded.
type Request struct {
	ID        string `json:"id,omitempty"` // x-request-id
	Method    string `json:"method,omitempty"`
	Host      string `json:"host,omitempty"`
	Path      string `json:"path,omitempty"`
	Operation string `json:"operation,omitempty"`
	Source    string `json:"source,omitempty"` // source address "ip:port"
}

// Decision is the outcome.
type Decision struct {
	Allowed        bool     `json:"allowed"`
	HTTPStatus     int      `json:"http_status"`
	Reasons        []string `json:"reasons"`
	PolicyRevision string   `json:"policy_revision,omitempty"`
}

// Receipt is what Append returns: the durably assigned sequence number and the
// signed record (a compact JWS) that doubles as the receipt for the upstream.
type Receipt struct {
	Seq uint64
	JWS string
}
