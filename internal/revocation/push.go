package revocation

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/agentauthz/agentauthz/internal/jsonstring"
)

// Signed push events. Everything a watch event carries besides the CRL (which
// is signed on its own) is covered by one signature of the tenant's CA over
// PushMessage: the revoked-agent list, the restrictions, the generation and
// an expiry. A replica verifies it with the trust bundle it already has, so
// nobody between the control plane and a replica can add, remove or replay an
// old agent revocation or restriction without being refused (see
// docs/security.md, "Push channel").

// PushValidity is how long a signed event may be applied after it was
// signed; the publisher re-signs unchanged state well before that, so a
// replica that hears nothing fresh for longer knows the channel is stale, and
// a replayed old event is refused once it has expired.
const PushValidity = 10 * time.Minute

// pushContext separates these signatures from any other use of the CA key.
const pushContext = "agentauthz watch event v1\n"

// Push refusal reasons, the "reason" label of
// agentauthz_revocation_push_refused_total.
const (
	PushUnsigned       = "unsigned"
	PushBadSignature   = "bad_signature"
	PushExpired        = "expired"
	PushOlder          = "older_generation"
	PushBadRestriction = "bad_restrictions"
)

// PushError is a refused watch event.
type PushError struct {
	Reason string
	Err    error
}

func (e *PushError) Error() string {
	return fmt.Sprintf("push event refused (%s): %v", e.Reason, e.Err)
}
func (e *PushError) Unwrap() error { return e.Err }

// PushMessage is the byte string a watch event's signature covers: the
// tenant, generation, expiry and the SHA-256 of the CRL (or its ETag), of the
// agent list as JSON and of the restrictions exactly as sent. Both ends
// encode the list, so by a rule that does not move with the toolchain
// (internal/jsonstring, HTML escaped: json.Marshal's bytes up to go1.26).
func PushMessage(ev *WatchEvent) []byte {
	agents := []byte("null")
	if ev.RevokedAgents != nil {
		agents = []byte{'['}
		for i, id := range ev.RevokedAgents {
			if i > 0 {
				agents = append(agents, ',')
			}
			agents = jsonstring.AppendHTML(agents, id)
		}
		agents = append(agents, ']')
	}
	crl := "crl:" + hexSum(ev.CRL)
	if len(ev.CRL) == 0 {
		crl = "etag:" + ev.CRLETag
	}
	restr := []byte(ev.Restrictions)
	if len(restr) == 0 {
		restr = []byte("{}")
	}
	msg := pushContext + "tenant:" + ev.Tenant + "\n" +
		"generation:" + strconv.FormatInt(ev.Generation, 10) + "\n" +
		"expires:" + strconv.FormatInt(ev.Expires, 10) + "\n" +
		crl + "\n" +
		"agents:" + hexSum(agents) + "\n" +
		"restrictions:" + hexSum(restr) + "\n"
	return []byte(msg)
}

func hexSum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// SignPush signs msg with a CA key: ECDSA and RSA over SHA-256, Ed25519 over
// the message itself (as x509.CheckSignature expects).
func SignPush(key crypto.Signer, msg []byte) ([]byte, error) {
	if _, ok := key.Public().(ed25519.PublicKey); ok {
		return key.Sign(nil, msg, crypto.Hash(0))
	}
	d := sha256.Sum256(msg)
	return key.Sign(nil, d[:], crypto.SHA256)
}

// VerifyPush checks ev's signature against the tenant's CA certificates, and
// that it has not expired at now.
func VerifyPush(cas []*x509.Certificate, ev *WatchEvent, now time.Time) error {
	if err := verifyPushSignature(cas, ev); err != nil {
		return err
	}
	if exp := time.Unix(ev.Expires, 0); !now.Before(exp) {
		return &PushError{PushExpired, fmt.Errorf("signed state expired at %s", exp.UTC().Format(time.RFC3339))}
	}
	return nil
}

// verifyPushSignature is VerifyPush without the expiry: the signature and
// the restrictions' shape.
func verifyPushSignature(cas []*x509.Certificate, ev *WatchEvent) error {
	if len(ev.Signature) == 0 {
		return &PushError{PushUnsigned, errors.New("the event carries no signature")}
	}
	msg := PushMessage(ev)
	ok := false
	for _, ca := range cas {
		alg := x509.UnknownSignatureAlgorithm
		switch ca.PublicKey.(type) {
		case *ecdsa.PublicKey:
			alg = x509.ECDSAWithSHA256
		case ed25519.PublicKey:
			alg = x509.PureEd25519
		case *rsa.PublicKey:
			alg = x509.SHA256WithRSA
		}
		if ca.CheckSignature(alg, msg, ev.Signature) == nil {
			ok = true
			break
		}
	}
	if !ok {
		return &PushError{PushBadSignature, errors.New("the signature does not verify with any CA of the tenant")}
	}
	if len(ev.Restrictions) > 0 {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(ev.Restrictions, &m); err != nil {
			return &PushError{PushBadRestriction, fmt.Errorf("restrictions: %w", err)}
		}
	}
	return nil
}
