package revocation

import (
	"encoding/asn1"
	"errors"
	"slices"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/agentauthz/agentauthz/internal/identity"
)

// oidIssuingDistributionPoint is id-ce-issuingDistributionPoint.
var oidIssuingDistributionPoint = asn1.ObjectIdentifier{2, 5, 29, 28}

// Scope is what a CRL covers, from its issuingDistributionPoint extension
// (RFC 5280 5.2.5). The zero Scope is a complete CRL: every certificate
// its issuer issued.
type Scope struct {
	raw string // DER of the extension value; "" for a complete CRL
	// DistributionPoints are the URIs of the distributionPoint fullName:
	// the CRL covers only certificates whose CRL distribution points name
	// one of them (RFC 5280 6.3.3 b.2.i).
	DistributionPoints []string
	OnlyUserCerts      bool // covers only end-entity certificates
	OnlyCACerts        bool // covers only CA certificates
}

// Complete reports whether the CRL covers everything its issuer issued.
func (s *Scope) Complete() bool { return s.raw == "" }

// covers reports whether a CRL of this scope, from the issuer of c, says
// anything about c.
func (s *Scope) covers(c *identity.ChainCert) bool {
	if s.OnlyUserCerts && c.IsCA || s.OnlyCACerts && !c.IsCA {
		return false
	}
	if len(s.DistributionPoints) == 0 {
		return true
	}
	for _, dp := range c.CRLDistributionPoints {
		if slices.Contains(s.DistributionPoints, dp) {
			return true
		}
	}
	return false
}

// Errors for the issuingDistributionPoint shapes that cannot be applied.
// Each would need something agentauthz does not do, and using such a CRL
// as if it covered more, or less, than it does would be wrong either way.
var (
	errIDPMalformed  = errors.New("malformed extension")
	errIDPIndirect   = errors.New("indirectCRL: entries for other CAs' certificates are not supported; publish a CRL per CA")
	errIDPReasons    = errors.New("onlySomeReasons: a CRL partitioned by reason is not supported; publish a CRL covering every reason")
	errIDPAttribute  = errors.New("onlyContainsAttributeCerts: the CRL covers no public-key certificate")
	errIDPBothOnly   = errors.New("onlyContainsUserCerts and onlyContainsCACerts are both set (RFC 5280 5.2.5)")
	errIDPRelative   = errors.New("distributionPoint nameRelativeToCRLIssuer is not supported; name the distribution point with a URI (fullName)")
	errIDPNoURI      = errors.New("distributionPoint fullName holds no URI; only URI names are matched against certificates")
	errIDPEmptyScope = errors.New("the extension is empty (RFC 5280 5.2.5 forbids it)")
)

// parseScope parses an issuingDistributionPoint extension value:
//
//	IssuingDistributionPoint ::= SEQUENCE {
//	     distributionPoint          [0] DistributionPointName OPTIONAL,
//	     onlyContainsUserCerts      [1] BOOLEAN DEFAULT FALSE,
//	     onlyContainsCACerts        [2] BOOLEAN DEFAULT FALSE,
//	     onlySomeReasons            [3] ReasonFlags OPTIONAL,
//	     indirectCRL                [4] BOOLEAN DEFAULT FALSE,
//	     onlyContainsAttributeCerts [5] BOOLEAN DEFAULT FALSE }
//
// (implicit tags; DistributionPointName is a CHOICE, so [0] wraps it).
func parseScope(v []byte) (Scope, error) {
	s := Scope{raw: string(v)}
	in := cryptobyte.String(v)
	var seq cryptobyte.String
	if !in.ReadASN1(&seq, cbasn1.SEQUENCE) || !in.Empty() {
		return Scope{}, errIDPMalformed
	}
	if seq.Empty() {
		return Scope{}, errIDPEmptyScope
	}
	dpTag := cbasn1.Tag(0).Constructed().ContextSpecific()
	if seq.PeekASN1Tag(dpTag) {
		var dpn, full cryptobyte.String
		if !seq.ReadASN1(&dpn, dpTag) {
			return Scope{}, errIDPMalformed
		}
		if dpn.PeekASN1Tag(cbasn1.Tag(1).Constructed().ContextSpecific()) {
			return Scope{}, errIDPRelative
		}
		if !dpn.ReadASN1(&full, cbasn1.Tag(0).Constructed().ContextSpecific()) || !dpn.Empty() || full.Empty() {
			return Scope{}, errIDPMalformed
		}
		for !full.Empty() {
			var name cryptobyte.String
			var tag cbasn1.Tag
			if !full.ReadAnyASN1(&name, &tag) {
				return Scope{}, errIDPMalformed
			}
			if tag == cbasn1.Tag(6).ContextSpecific() { // uniformResourceIdentifier
				s.DistributionPoints = append(s.DistributionPoints, string(name))
			}
		}
		if len(s.DistributionPoints) == 0 {
			return Scope{}, errIDPNoURI
		}
	}
	// The booleans are DEFAULT FALSE, so DER encodes only TRUE.
	flag := func(n cbasn1.Tag) (bool, error) {
		tag := n.ContextSpecific()
		if !seq.PeekASN1Tag(tag) {
			return false, nil
		}
		var b cryptobyte.String
		if !seq.ReadASN1(&b, tag) || len(b) != 1 || (b[0] != 0 && b[0] != 0xff) {
			return false, errIDPMalformed // DER: a BOOLEAN is 0x00 or 0xFF
		}
		return b[0] == 0xff, nil
	}
	var err error
	if s.OnlyUserCerts, err = flag(1); err != nil {
		return Scope{}, err
	}
	if s.OnlyCACerts, err = flag(2); err != nil {
		return Scope{}, err
	}
	if seq.PeekASN1Tag(cbasn1.Tag(3).ContextSpecific()) {
		return Scope{}, errIDPReasons
	}
	indirect, err := flag(4)
	if err != nil {
		return Scope{}, err
	}
	if indirect {
		return Scope{}, errIDPIndirect
	}
	attr, err := flag(5)
	if err != nil {
		return Scope{}, err
	}
	if attr {
		return Scope{}, errIDPAttribute
	}
	if !seq.Empty() {
		return Scope{}, errIDPMalformed
	}
	if s.OnlyUserCerts && s.OnlyCACerts {
		return Scope{}, errIDPBothOnly
	}
	return s, nil
}
