package revocation

import (
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"math/big"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// x509.ParseRevocationList decodes every revoked certificate into a
// RevocationListEntry (and a deprecated pkix.RevokedCertificate beside it):
// about 1.2 KB per entry, so 1.1 GiB of garbage for a million-entry CRL,
// which is enough to get a 512 MiB container killed during a refresh. So
// parseRevocationList hands x509 a copy of the CRL whose revokedCertificates
// is empty, and checks the entries itself, without keeping them; the
// SerialSet is then built from the DER. crypto/x509 still parses and
// validates everything else, and the signature is checked over the TBS the
// CA signed.
//
// The entries are read with the same cryptobyte calls, in the same order,
// as crypto/x509 reads them (Go 1.26 parser.go; the std vendored copy of
// cryptobyte is the same code as golang.org/x/crypto's), so the same
// entries are refused.
//
// On top of crypto/x509, parseRevocationList refuses the shapes RFC 5280
// does not allow and x509 lets through by ignoring bytes (errCRL* below):
// data after the CertificateList, or after its signatureValue; in the
// TBSCertList, anything after revokedCertificates (after nextUpdate when
// there is no list) but one [0] EXPLICIT crlExtensions holding one
// SEQUENCE; in an entry, anything after crlEntryExtensions. A CRL is signed,
// so only its CA can produce these, but x509 skipping the [0]
// crlExtensions behind a second SEQUENCE (or a second SEQUENCE inside
// [0]) would hide a critical extension such as a delta CRL indicator
// (RFC 5280 5.2.4) and make a delta CRL pass for a complete one; and an
// entry's second extensions SEQUENCE would hide a critical
// certificateIssuer. Fail closed on all of them. FuzzParseCRLEquivalent
// holds parseRevocationList to x509.ParseRevocationList plus the same
// checks written independently (parseRevocationListReference).

// crlEntries is the revokedCertificates of a CRL, checked but not decoded.
type crlEntries struct {
	der []byte // the content of the revokedCertificates SEQUENCE; nil when absent
	// critical is the first critical entry extension; nil when there is
	// none.
	critical asn1.ObjectIdentifier
}

// reasonCodeOID is the DER of id-ce-cRLReasons (2.5.29.21). An OID has one
// DER form (cryptobyte refuses non-minimal sub-identifiers), so comparing
// bytes is comparing OIDs.
const reasonCodeOID = "\x06\x03\x55\x1d\x15"

// Structural errors: shapes crypto/x509 accepts by ignoring bytes, and RFC
// 5280 does not allow. ParseCRL wraps them in ErrCRLInvalid, like any
// malformed CRL.
var (
	errCRLTrailingData = errors.New("malformed crl: data after the CertificateList")
	errCRLExtraField   = errors.New("malformed crl: field after signatureValue")
	errCRLTBSField     = errors.New("malformed tbs crl: field where only [0] crlExtensions may be")
	errCRLExtensions   = errors.New("malformed crlExtensions: [0] must hold exactly one SEQUENCE")
	errCRLEntryField   = errors.New("malformed crl entry: field after crlEntryExtensions")
)

// parseRevocationList parses der as x509.ParseRevocationList does and
// refuses what it refuses, and the shapes it ignores (errCRL*), but returns
// the revoked certificates undecoded: the list it returns has none, and its
// RawTBSRevocationList is the TBSCertList of der (entries included), as
// signed.
func parseRevocationList(der []byte) (*x509.RevocationList, crlEntries, error) {
	malformed := func(what string) (*x509.RevocationList, crlEntries, error) {
		return nil, crlEntries{}, errors.New("malformed " + what)
	}
	// Find revokedCertificates by reading, with x509's framing, the elements
	// x509 reads before it: CertificateList, TBSCertList, version,
	// signature, issuer, thisUpdate, nextUpdate when present. The content of
	// most is left to x509, which sees the same bytes in the copy.
	input := cryptobyte.String(der)
	var crl, tbs cryptobyte.String
	if !input.ReadASN1(&crl, cbasn1.SEQUENCE) || !crl.ReadASN1Element(&tbs, cbasn1.SEQUENCE) {
		return malformed("crl")
	}
	// x509 ignores both of these; refuse them (see errCRL*).
	if !input.Empty() {
		return nil, crlEntries{}, errCRLTrailingData
	}
	if tail := crl; !tail.SkipASN1(cbasn1.SEQUENCE) || !tail.SkipASN1(cbasn1.BIT_STRING) {
		return malformed("crl") // no signatureAlgorithm or signatureValue: x509 refuses it too
	} else if !tail.Empty() {
		return nil, crlEntries{}, errCRLExtraField
	}
	fields := tbs
	if !fields.ReadASN1(&fields, cbasn1.SEQUENCE) {
		return malformed("tbs crl")
	}
	head := fields
	if !fields.SkipASN1(cbasn1.INTEGER) || !fields.SkipASN1(cbasn1.SEQUENCE) ||
		!fields.SkipASN1(cbasn1.SEQUENCE) || !readTime(&fields) {
		return malformed("tbs crl")
	}
	if (fields.PeekASN1Tag(cbasn1.UTCTime) || fields.PeekASN1Tag(cbasn1.GeneralizedTime)) && !readTime(&fields) {
		return malformed("nextUpdate")
	}
	if !fields.PeekASN1Tag(cbasn1.SEQUENCE) {
		// revokedCertificates is absent: nothing to take out.
		if err := checkCRLExtensions(fields); err != nil {
			return nil, crlEntries{}, err
		}
		rl, err := x509.ParseRevocationList(der)
		return rl, crlEntries{}, err
	}
	prefix := head[:len(head)-len(fields)]
	var list cryptobyte.String
	if !fields.ReadASN1(&list, cbasn1.SEQUENCE) {
		return malformed("revokedCertificates")
	}
	if err := checkCRLExtensions(fields); err != nil {
		return nil, crlEntries{}, err
	}
	// The copy: the same CRL with revokedCertificates an empty SEQUENCE,
	// not absent, so x509 reads every other field at the same place. Its
	// lengths are re-encoded in DER, the only form x509 accepts.
	b := cryptobyte.NewBuilder(make([]byte, 0, len(der)-len(list)))
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddBytes(prefix)
			b.AddASN1(cbasn1.SEQUENCE, func(*cryptobyte.Builder) {})
			b.AddBytes(fields) // crlExtensions, if any
		})
		b.AddBytes(crl) // signatureAlgorithm, signatureValue
	})
	stripped, err := b.Bytes()
	if err != nil {
		return nil, crlEntries{}, err
	}
	rl, err := x509.ParseRevocationList(stripped)
	if err != nil {
		return nil, crlEntries{}, err
	}
	if len(rl.RevokedCertificateEntries) != 0 {
		return malformed("crl copy") // cannot happen: x509 found entries in an empty list
	}
	entries, err := checkEntries(list)
	if err != nil {
		return nil, crlEntries{}, err
	}
	// The signature covers the entries: check it over the original.
	rl.RawTBSRevocationList = tbs
	return rl, entries, nil
}

// checkCRLExtensions checks rest, what follows revokedCertificates (or
// nextUpdate, or thisUpdate) in a TBSCertList: nothing, or one
// [0] EXPLICIT Extensions. x509 reads [0] only when it comes next, and
// only the first element inside it, and ignores the rest: a second
// SEQUENCE before [0], or inside it, would hide crlExtensions from it.
// The extensions themselves are left to x509.
func checkCRLExtensions(rest cryptobyte.String) error {
	if rest.Empty() {
		return nil
	}
	var exts cryptobyte.String
	if !rest.ReadASN1(&exts, cbasn1.Tag(0).Constructed().ContextSpecific()) || !rest.Empty() {
		return errCRLTBSField
	}
	if !exts.SkipASN1(cbasn1.SEQUENCE) || !exts.Empty() {
		return errCRLExtensions
	}
	return nil
}

// checkEntries reads every entry of list, the content of revokedCertificates,
// as x509.ParseRevocationList does (but refusing a field after an entry's
// extensions, which x509 ignores), and keeps only the first critical
// extension.
func checkEntries(list cryptobyte.String) (crlEntries, error) {
	e := crlEntries{der: list}
	var serial big.Int // reused: SetBytes keeps its backing array
	for !list.Empty() {
		var entry, exts cryptobyte.String
		if !list.ReadASN1(&entry, cbasn1.SEQUENCE) {
			return e, errors.New("malformed crl entry")
		}
		if !entry.ReadASN1Integer(&serial) {
			return e, errors.New("malformed serial number")
		}
		if !readTime(&entry) {
			return e, errors.New("malformed revocation time")
		}
		if !entry.ReadOptionalASN1(&exts, nil, cbasn1.SEQUENCE) {
			return e, errors.New("malformed entry extensions")
		}
		// x509 ignores anything after the extensions, a second
		// extensions SEQUENCE included (which would hide a critical
		// certificateIssuer); refuse it.
		if !entry.Empty() {
			return e, errCRLEntryField
		}
		for !exts.Empty() {
			var ext, oid, value cryptobyte.String
			if !exts.ReadASN1(&ext, cbasn1.SEQUENCE) || !ext.ReadASN1Element(&oid, cbasn1.OBJECT_IDENTIFIER) {
				return e, errors.New("malformed entry extension")
			}
			reason := string(oid) == reasonCodeOID
			var id asn1.ObjectIdentifier
			if !reason && !oid.ReadASN1ObjectIdentifier(&id) {
				return e, errors.New("malformed entry extension oid")
			}
			critical := false
			if ext.PeekASN1Tag(cbasn1.BOOLEAN) && !ext.ReadASN1Boolean(&critical) {
				return e, errors.New("malformed entry extension critical field")
			}
			// Like x509, ignore anything after the value.
			if !ext.ReadASN1(&value, cbasn1.OCTET_STRING) {
				return e, errors.New("malformed entry extension value")
			}
			var code int
			if reason && !value.ReadASN1Enum(&code) {
				return e, errors.New("malformed reasonCode extension")
			}
			if critical && e.critical == nil {
				if reason {
					id = asn1.ObjectIdentifier{2, 5, 29, 21}
				}
				e.critical = id
			}
		}
	}
	return e, nil
}

// readTime reads a time as x509 does: a valid UTCTime or GeneralizedTime.
func readTime(s *cryptobyte.String) bool {
	var t time.Time
	switch {
	case s.PeekASN1Tag(cbasn1.UTCTime):
		return s.ReadASN1UTCTime(&t)
	case s.PeekASN1Tag(cbasn1.GeneralizedTime):
		return s.ReadASN1GeneralizedTime(&t)
	}
	return false
}

// serials yields the serial of each entry, in one big.Int overwritten each
// time. The entries must have passed checkEntries; an error means they
// changed since.
func (e crlEntries) serials(yield func(*big.Int)) error {
	list := cryptobyte.String(e.der)
	var serial big.Int
	for !list.Empty() {
		var entry cryptobyte.String
		if !list.ReadASN1(&entry, cbasn1.SEQUENCE) || !entry.ReadASN1Integer(&serial) {
			return errors.New("crl entries changed while parsed")
		}
		yield(&serial)
	}
	return nil
}
