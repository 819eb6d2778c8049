// Package respsig is agentauthz's profile of RFC 9421 for signed responses:
// which components a response signature covers, how the decision travels
// in it, and how a verifier checks all of that. internal/extproc signs with
// it; `agentauthz response verify` verifies with it.
package respsig

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"time"

	"github.com/agentauthz/agentauthz/internal/httpsig"
)

// Label and Tag of every agentauthz response signature.
const (
	Label = "agentauthz"
	Tag   = "agentauthz-response"
)

// Response fields the processor sets (overwriting what the upstream sent)
// and signs. Their values come from the decision, never from the upstream.
const (
	HeaderDecisionID = "x-decision-id"
	HeaderAgentID    = "x-agent-id"
	HeaderTrustLevel = "x-agent-trust-level"
	HeaderOperation  = "x-agent-operation"
	// HeaderBodyUnsigned replaces Content-Digest in the signature when the
	// body could not be covered; its value says why (Unsigned*).
	HeaderBodyUnsigned = "x-agent-body-unsigned"
)

// Why a body is not covered (the value of HeaderBodyUnsigned).
const (
	UnsignedTooLarge = "too-large" // larger than the processor's buffer limit
	UnsignedStreamed = "streamed"  // streamed through; its digest is in the log only
	UnsignedNotSent  = "not-sent"  // Envoy was configured not to send the body
)

// Components returns the covered components, in order. bodyCovered selects
// content-digest or HeaderBodyUnsigned; content-type is covered when the
// response has one.
func Components(bodyCovered, hasContentType bool) []httpsig.Component {
	body := httpsig.Component{Name: "content-digest"}
	if !bodyCovered {
		body = httpsig.Component{Name: HeaderBodyUnsigned}
	}
	cs := make([]httpsig.Component, 0, 10)
	cs = append(cs, httpsig.Component{Name: "@status"})
	if hasContentType {
		cs = append(cs, httpsig.Component{Name: "content-type"})
	}
	return append(cs, body,
		httpsig.Component{Name: HeaderDecisionID},
		httpsig.Component{Name: HeaderAgentID},
		httpsig.Component{Name: HeaderTrustLevel},
		httpsig.Component{Name: HeaderOperation},
		httpsig.Component{Name: "@method", Req: true},
		httpsig.Component{Name: "@authority", Req: true},
		httpsig.Component{Name: "@path", Req: true},
	)
}

// Required are the components a valid agentauthz response signature must
// cover, whatever else it covers.
var Required = []httpsig.Component{
	{Name: "@status"}, {Name: HeaderDecisionID}, {Name: HeaderAgentID}, {Name: HeaderTrustLevel}, {Name: HeaderOperation},
	{Name: "@method", Req: true}, {Name: "@authority", Req: true}, {Name: "@path", Req: true},
}

// Result is what a verified response says.
type Result struct {
	KeyID      string
	Created    time.Time
	Status     int
	DecisionID string
	AgentID    string
	TrustLevel string
	Operation  string
	Method     string
	Authority  string
	Path       string
	// BodyCovered is true when Content-Digest was signed and matches the
	// body; otherwise BodyUnsigned says why the body is not covered.
	BodyCovered  bool
	BodyUnsigned string
	Base         []byte
}

// ErrProfile means the signature verified but is not an agentauthz response
// signature (wrong tag, a required component not covered).
var ErrProfile = errors.New("not an agentauthz response signature")

// Options for Verify.
type Options struct {
	Keys   func(keyID string) (ed25519.PublicKey, bool)
	Now    time.Time     // zero: time not checked
	MaxAge time.Duration // with Now: created must be at most this old
}

// Verify checks m's agentauthz signature, its profile and its body.
func Verify(m *httpsig.Message, o Options) (Result, error) {
	var r Result
	vs, err := httpsig.Verify(m, httpsig.VerifyOptions{Key: o.Keys, Label: Label, Now: o.Now, MaxAge: o.MaxAge, Skew: time.Minute})
	if err != nil {
		return r, err
	}
	v := vs[0]
	if v.Params.Tag != Tag {
		return r, fmt.Errorf("%w: tag %q, want %q", ErrProfile, v.Params.Tag, Tag)
	}
	for _, c := range Required {
		if !v.Covers(c) {
			return r, fmt.Errorf("%w: %s is not covered", ErrProfile, c)
		}
	}
	if _, ok := m.Get("content-type"); ok && !v.Covers(httpsig.Component{Name: "content-type"}) {
		return r, fmt.Errorf("%w: content-type is present but not covered", ErrProfile)
	}
	r = Result{KeyID: v.Params.KeyID, Status: m.Status, Base: v.Base}
	if v.Params.Created != 0 {
		r.Created = time.Unix(v.Params.Created, 0).UTC()
	}
	r.DecisionID, _ = m.Get(HeaderDecisionID)
	r.AgentID, _ = m.Get(HeaderAgentID)
	r.TrustLevel, _ = m.Get(HeaderTrustLevel)
	r.Operation, _ = m.Get(HeaderOperation)
	r.Method, r.Authority, r.Path = m.Request.Method, m.Request.Authority, m.Request.Path
	switch {
	case v.Covers(httpsig.Component{Name: "content-digest"}):
		cd, _ := m.Get("content-digest")
		if err := httpsig.CheckContentDigest(cd, m.Body); err != nil {
			return r, err
		}
		r.BodyCovered = true
	case v.Covers(httpsig.Component{Name: HeaderBodyUnsigned}):
		r.BodyUnsigned, _ = m.Get(HeaderBodyUnsigned)
	default:
		return r, fmt.Errorf("%w: neither content-digest nor %s is covered", ErrProfile, HeaderBodyUnsigned)
	}
	return r, nil
}

// Decision is what a response signature binds the response to.
type Decision struct {
	ID         string
	AgentID    string
	TrustLevel string
	Operation  string
}

// NoOperation stands for an empty operation in HeaderOperation: some HTTP
// clients drop fields with empty values.
const NoOperation = "-"

// Signer signs responses with the published key.
type Signer struct {
	KeyID string
	Sign  func(base []byte) ([]byte, error)
	Now   func() time.Time
}

// SignResponse binds resp (whose Request must be set) to d and signs it.
// It sets the decision fields, Content-Digest (digest, a formatted value)
// or, when digest is "", HeaderBodyUnsigned (unsigned, one of Unsigned*),
// and Signature-Input and Signature, replacing any the upstream sent. It
// returns the fields to set on the response and the ones to remove.
func (s *Signer) SignResponse(resp *httpsig.Message, d Decision, digest, unsigned string) (set []httpsig.Field, del []string, err error) {
	op := d.Operation
	if op == "" {
		op = NoOperation
	}
	set = make([]httpsig.Field, 0, 8)
	set = append(set,
		httpsig.Field{Name: HeaderDecisionID, Value: d.ID},
		httpsig.Field{Name: HeaderAgentID, Value: d.AgentID},
		httpsig.Field{Name: HeaderTrustLevel, Value: d.TrustLevel},
		httpsig.Field{Name: HeaderOperation, Value: op},
	)
	if digest != "" {
		set = append(set, httpsig.Field{Name: "content-digest", Value: digest})
		del = append(del, HeaderBodyUnsigned)
	} else {
		if unsigned == "" {
			return nil, nil, errors.New("respsig: neither a digest nor why the body is unsigned")
		}
		set = append(set, httpsig.Field{Name: HeaderBodyUnsigned, Value: unsigned})
		del = append(del, "content-digest")
	}
	for _, f := range set {
		resp.Set(f.Name, f.Value)
	}
	for _, n := range del {
		resp.Del(n)
	}
	resp.Del("signature")
	resp.Del("signature-input")
	_, hasCT := resp.Get("content-type")
	signed, err := httpsig.Sign(resp, Label, httpsig.Params{
		Components: Components(digest != "", hasCT),
		Created:    s.Now().Unix(),
		KeyID:      s.KeyID,
		Alg:        httpsig.AlgEd25519,
		Tag:        Tag,
	}, s.Sign)
	if err != nil {
		return nil, nil, err
	}
	set = append(set, httpsig.Field{Name: "signature-input", Value: signed.Input}, httpsig.Field{Name: "signature", Value: signed.Signature})
	resp.Header = append(resp.Header, set[len(set)-2:]...)
	return set, del, nil
}
