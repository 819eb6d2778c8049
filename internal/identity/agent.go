package identity

import (
	"crypto/sha256"
	"crypto/x509"
	"strconv"
	"time"

	"github.com/agentauthz/agentauthz/internal/reason"
)

// Source says where an identity was taken from.
type Source string

// The identity sources, as named in identity.sources.
const (
	SourcePeerCertificate Source = "peer_certificate"
	SourceXFCC            Source = "xfcc"
	SourceSPIFFEID        Source = "spiffe_id"
)

// Profile names a certificate profile (see docs/identity.md).
type Profile string

// The certificate profiles, as named in a trust bundle's profile.
const (
	ProfileNative    Profile = "native"
	ProfileAgentPass Profile = "agentpass"
	ProfileSPIFFE    Profile = "spiffe"
)

// Agent is a verified agent identity. It is immutable once returned: the
// verifier's cache hands the same *Agent to concurrent callers.
type Agent struct {
	ID         string    // agent id, e.g. "payments-bot-1"
	SPIFFEID   string    // spiffe://<trust-domain>/agent/<id>
	Tenant     string    // trust domain of the bundle that verified it
	TrustLevel int       // 0..4
	Scopes     []string  // sorted, de-duplicated "<resource>:<action>"
	Owner      string    // accountable human or team, may be empty
	Serial     string    // certificate serial, lowercase hex without leading zeros; empty for SPIFFE-only
	CertSHA256 string    // lowercase hex SHA-256 of the leaf DER; empty for SPIFFE-only
	Issuer     string    // issuer DN of the leaf (RFC 2253 string form)
	NotBefore  time.Time // zero for SPIFFE-only
	NotAfter   time.Time // zero for SPIFFE-only
	Profile    Profile
	Source     Source
	IssuerID   string // AgentPass issuer id extension (1.3.6.1.4.1.99999.1.3); empty for other profiles
	// Chain is what revocation checks: every certificate of the verified
	// chain below the trust anchor, leaf first. Empty for SPIFFE-only.
	Chain []ChainCert
}

// ChainCert is one certificate of a verified chain as revocation sees it
// (RFC 5280 6.3: a CRL entry names a serial of the CRL's issuer, within the
// CRL's scope).
type ChainCert struct {
	Serial string // lowercase hex without leading zeros, as Agent.Serial
	// Issuer is the CA that signed it in the verified chain: a CRL counts
	// for this certificate only when Issuer signed it.
	Issuer    *x509.Certificate
	IssuerKey CAKey // CAKeyOf(Issuer)
	// IsCA and CRLDistributionPoints decide which CRLs of Issuer cover it
	// (an issuingDistributionPoint narrows a CRL's scope).
	IsCA                  bool
	CRLDistributionPoints []string
}

// CAKey identifies a CA certificate by its subject and public key, the
// pair a CRL's signature is checked against.
type CAKey [sha256.Size]byte

// CAKeyOf returns the CAKey of c: SHA-256 over its subject and
// SubjectPublicKeyInfo (both DER, so their concatenation is unambiguous).
func CAKeyOf(c *x509.Certificate) CAKey {
	h := sha256.New()
	h.Write(c.RawSubject)
	h.Write(c.RawSubjectPublicKeyInfo)
	var k CAKey
	h.Sum(k[:0])
	return k
}

// TrustLabel is the trust level in its "L<n>" form, without an allocation
// for the levels there are (it is in every answer).
func (a *Agent) TrustLabel() string {
	switch a.TrustLevel {
	case 0:
		return "L0"
	case 1:
		return "L1"
	case 2:
		return "L2"
	case 3:
		return "L3"
	case 4:
		return "L4"
	}
	return "L" + strconv.Itoa(a.TrustLevel)
}

// Error is an identity failure. It carries a stable reason code and whatever
// is known about the presented certificate, so that a denied request still
// leaves an attributable decision record.
type Error struct {
	Reason     reason.Code
	CertSHA256 string // set when a certificate was decoded
	Issuer     string // set when a certificate was decoded
	Subject    string // set when a certificate was decoded
	Err        error  // detail for logs; never sent to the client
}

func (e *Error) Error() string {
	if e.Err == nil {
		return string(e.Reason)
	}
	return string(e.Reason) + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }
