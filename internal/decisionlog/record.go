package decisionlog

import (
	"encoding/json"
	"fmt"
	"time"
)

// Record is one entry of the log: a decision, a key rotation, or another
// kind (see Kind). The JSON names are the documented format
// (docs/decision-log.md); never rename one.
//
// The caller fills DecisionID, Time, Agent, Request and Decision. The log
// assigns Index and Log when it appends the record. Seq, KeyID and Prev
// belong to v1 logs (one JWS per record, hash-chained) and are only set
// when one is read.
type Record struct {
	Index      uint64    `json:"index"` // leaf index in the Merkle tree, from 0
	Seq        uint64    `json:"seq,omitempty"`
	DecisionID string    `json:"decision_id"`
	Time       time.Time `json:"-"`
	Log        string    `json:"log"`
	KeyID      string    `json:"kid,omitempty"`
	Prev       string    `json:"prev,omitempty"` // v1: lowercase hex SHA-256 of the previous record's JWS signing input

	// Kind is "" (or KindDecision) for a decision, KindKeyRotation for
	// the record that hands the log over to a new signing key, and
	// KindResponse for the signed response a decision let through. Other
	// kinds (a-z and _) carry what they record in Data.
	Kind string `json:"kind,omitempty"`
	// KeyRotation is set on KindKeyRotation records only.
	KeyRotation *KeyRotation `json:"key_rotation,omitempty"`
	// Response is set on KindResponse records only.
	Response *Response `json:"response,omitempty"`

	Agent    Agent    `json:"agent"`
	Request  Request  `json:"request"`
	Decision Decision `json:"decision"`
	// Data carries what a kind other than a decision records (a JSON
	// object of at most MaxDataBytes), e.g. a signed response's digest
	// and the decision it answers.
	Data json.RawMessage `json:"data,omitempty"`
	// Truncated says the log cut at least one field to its bound
	// (fieldLimits) so that the record could be written: a denial is
	// always recorded, whatever the request carried.
	Truncated bool `json:"truncated,omitempty"`
}

// Record kinds.
const (
	KindDecision    = "decision"
	KindKeyRotation = "key_rotation"
	KindResponse    = "response"
)

// MaxDataBytes bounds Record.Data.
const MaxDataBytes = 4 << 10

// Response is what the upstream answered to an allowed request, as
// agentauthz signed it (docs/responses.md). A response record repeats the
// decision's agent, request and outcome and carries the same decision_id.
type Response struct {
	Status int `json:"status"`
	// Body says how the body is covered: "signed" (ContentDigest is in the
	// signature), or "unsigned: too-large", "unsigned: streamed" (the
	// digest of the whole streamed body is here, not in the signature),
	// "unsigned: not-sent", or "incomplete" (the stream ended early).
	Body          string `json:"body"`
	ContentDigest string `json:"content_digest,omitempty"` // RFC 9530 value, sha-256
	Bytes         int64  `json:"bytes"`                    // body bytes seen
	// SignatureInput and Signature are the fields added to the response.
	SignatureInput string `json:"signature_input,omitempty"`
	Signature      string `json:"signature,omitempty"`
}

// KeyRotation announces the key that signs from now on. In a v2 log the
// checkpoint that covers the rotation record is still signed by the old
// key, and every later checkpoint by the new one, so a verifier that
// trusts the first key of a log can follow every rotation. (In a v1 log,
// the rotation record is signed by the old key and every later record by
// the new one.)
type KeyRotation struct {
	NewKeyID string `json:"new_kid"`
	NewKey   string `json:"new_key"` // base64url (no padding) of the 32-byte Ed25519 public key, as JWK "x"
	// NoteKey is the new key as a signed-note verifier key (v2 logs).
	NoteKey string `json:"new_note_key,omitempty"`
}

// TimeLayout is the record time format: UTC, RFC 3339, exactly six
// fractional digits (microseconds).
const TimeLayout = "2006-01-02T15:04:05.000000Z"

// recordFields has Record's fields without its methods, so MarshalJSON can
// reuse the struct tags without recursing.
type recordFields Record

// MarshalJSON writes Record with its time as "time" in TimeLayout.
func (r Record) MarshalJSON() ([]byte, error) {
	return marshalJSON(struct {
		recordFields
		Time string `json:"time"`
	}{recordFields(r), r.Time.UTC().Format(TimeLayout)})
}

// UnmarshalJSON reads what MarshalJSON writes; "time" must be in TimeLayout.
func (r *Record) UnmarshalJSON(b []byte) error {
	var w struct {
		recordFields
		Time string `json:"time"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	t, err := time.Parse(TimeLayout, w.Time)
	if err != nil {
		return fmt.Errorf("record time: %w", err)
	}
	*r = Record(w.recordFields)
	r.Time = t
	return nil
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
	// MCP lists the JSON-RPC messages of a call to an MCP endpoint, in
	// order (a batch has several); nil for other requests.
	MCP []MCPMessage `json:"mcp,omitempty"`
}

// MCPMessage is one JSON-RPC message of an MCP call: what was asked, never
// the arguments themselves.
type MCPMessage struct {
	Kind      string `json:"kind"`             // request, notification, response
	Method    string `json:"method,omitempty"` // "" for a response
	Tool      string `json:"tool,omitempty"`   // tools/call
	URI       string `json:"uri,omitempty"`    // resources/read, subscribe, unsubscribe
	Operation string `json:"operation,omitempty"`
	// ArgumentsSHA256 is the hex SHA-256 of tools/call's arguments, byte
	// for byte as sent: it proves what was called without keeping it.
	ArgumentsSHA256 string `json:"arguments_sha256,omitempty"`
}

// Decision is the outcome.
type Decision struct {
	Allowed        bool     `json:"allowed"`
	HTTPStatus     int      `json:"http_status"`
	Reasons        []string `json:"reasons"`
	PolicyRevision string   `json:"policy_revision,omitempty"`
}

// Receipt is what Append returns: the record's leaf index and hash, and
// Header, the compact receipt for the upstream (x-agent-receipt; see
// EncodeReceipt). In sync mode the receipt's checkpoint is on disk.
type Receipt struct {
	Index  uint64
	Hash   Hash
	Header string
}
