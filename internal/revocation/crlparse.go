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
// cryptobyte is the same code as golang.org/x/crypto's), so exactly the same
// CRLs are refused. FuzzParseCRLEquivalent holds the two to it.

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

// parseRevocationList parses der as x509.ParseRevocationList does and
// refuses exactly what it refuses, but returns the revoked certificates
// undecoded: the list it returns has none, and its RawTBSRevocationList is
// the TBSCertList of der (entries included), as signed.
func parseRevocationList(der []byte) (*x509.RevocationList, crlEntries, error) {
	malformed := func(what string) (*x509.RevocationList, crlEntries, error) {
		return nil, crlEntries{}, errors.New("malformed " + what)
	}
	// Find revokedCertificates by reading, with x509's framing, the elements
	// x509 reads before it: CertificateList, TBSCertList, version,
	// signature, issuer, thisUpdate, nextUpdate when present. The content of
	// most is left to x509, which sees the same bytes in the copy. Like
	// x509, this ignores bytes after the CRL and after the signature.
	input := cryptobyte.String(der)
	var crl, tbs cryptobyte.String
	if !input.ReadASN1(&crl, cbasn1.SEQUENCE) || !crl.ReadASN1Element(&tbs, cbasn1.SEQUENCE) {
		return malformed("crl")
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
		rl, err := x509.ParseRevocationList(der)
		return rl, crlEntries{}, err
	}
	prefix := head[:len(head)-len(fields)]
	var list cryptobyte.String
	if !fields.ReadASN1(&list, cbasn1.SEQUENCE) {
		return malformed("revokedCertificates")
	}
	// The copy: the same CRL with revokedCertificates an empty SEQUENCE,
	// not absent, so x509 reads every other field at the same place. Its
	// lengths are re-encoded in DER, the only form x509 accepts.
	b := cryptobyte.NewBuilder(make([]byte, 0, len(der)-len(list)))
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddBytes(prefix)
			b.AddASN1(cbasn1.SEQUENCE, func(*cryptobyte.Builder) {})
			b.AddBytes(fields) // crlExtensions and whatever x509 ignores
		})
		b.AddBytes(crl) // signatureAlgorithm, signatureValue, …
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

// checkEntries reads every entry of list, the content of revokedCertificates,
// as x509.ParseRevocationList does, and keeps only the first critical
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
		// Like x509, ignore anything after the extensions.
		if !entry.ReadOptionalASN1(&exts, nil, cbasn1.SEQUENCE) {
			return e, errors.New("malformed entry extensions")
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
