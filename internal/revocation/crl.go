package revocation

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"time"
)

// DefaultMaxCRLBytes bounds one CRL. A CRL revoking a million P-256
// certificates is about 40 MB, so 64 MiB leaves room without letting a
// misbehaving source exhaust memory.
const DefaultMaxCRLBytes = 64 << 20

// Sentinel errors callers (and tests) branch on.
var (
	// ErrCRLTooLarge means the CRL exceeded the configured size bound.
	ErrCRLTooLarge = errors.New("crl too large")
	// ErrCRLSignature means no configured CA of the tenant signed the CRL.
	ErrCRLSignature = errors.New("crl not signed by a ca of this tenant")
	// ErrCRLInvalid means the CRL is malformed or unusable (no nextUpdate,
	// a critical extension we do not understand, a delta CRL, …).
	ErrCRLInvalid = errors.New("invalid crl")
	// ErrCRLOlder means the CRL is older than the one already held for the
	// same CA (its CRL number went backwards).
	ErrCRLOlder = errors.New("crl older than the one held")
)

// CRL is a parsed CRL whose signature verified against one of a tenant's CAs.
type CRL struct {
	Number     *big.Int // nil when the CRL carries no CRL number
	ThisUpdate time.Time
	NextUpdate time.Time
	// CA is the index into the CA list given to ParseCRLs of the
	// certificate that verified the signature.
	CA int
	// Serials holds every revoked serial; it is never nil in a CRL returned
	// by ParseCRL.
	Serials *SerialSet
	// Raw is the DER the CRL was parsed from. The checker drops it once the
	// CRL is held (a million-entry CRL is 40 MB) and compares Digest.
	Raw []byte
	// Digest is the SHA-256 of Raw.
	Digest [sha256.Size]byte
	// Scope is what the CRL covers: everything its issuer issued, unless
	// an issuingDistributionPoint narrows it.
	Scope Scope

	// issuerName is the CRL's issuer (DER); pending is set instead of CA
	// (which is then -1) when no CA given to parseCRLs has that name: the
	// signature is checked once a verified chain shows the certificate of
	// that CA (Checker.learn).
	issuerName string
	pending    *x509.RevocationList
	issuer     *x509.Certificate // the CA that verified it, once verified
}

// MaxCRLsPerFile bounds the CRLs in one PEM file or response.
const MaxCRLsPerFile = 64

// ParseCRL is ParseCRLs for input that must hold exactly one CRL.
func ParseCRL(data []byte, cas []*x509.Certificate, maxBytes int64) (*CRL, error) {
	crls, err := ParseCRLs(data, cas, maxBytes)
	if err != nil {
		return nil, err
	}
	if len(crls) != 1 {
		return nil, fmt.Errorf("%w: %d CRLs where one was expected", ErrCRLInvalid, len(crls))
	}
	return crls[0], nil
}

// ParseCRLs decodes the CRLs in data: one DER CRL, or every PEM "X509 CRL"
// block of a PEM file (`cat root.crl issuing.crl`, the form openssl verify
// -CRLfile, nginx and Envoy read; text around the blocks, such as `openssl
// crl -text` output, is ignored, as in trust bundles). Each CRL is checked
// on its own (parseOneCRL) and matched to the CA of cas that signed it; a
// file in which any CRL fails, any PEM block is not a CRL, or two CRLs come
// from the same CA is refused as a whole, with the number of the CRL at
// fault: applying only part of a file would silently drop revocations.
// maxBytes bounds the input (DefaultMaxCRLBytes when <= 0).
func ParseCRLs(data []byte, cas []*x509.Certificate, maxBytes int64) ([]*CRL, error) {
	return parseCRLs(data, cas, maxBytes, false)
}

// parseCRLs is ParseCRLs; with allowPending, a CRL whose issuer is the
// subject of none of cas is returned unverified, with CA -1 and pending
// set, instead of refused.
func parseCRLs(data []byte, cas []*x509.Certificate, maxBytes int64, allowPending bool) ([]*CRL, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxCRLBytes
	}
	if int64(len(data)) > maxBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrCRLTooLarge, len(data), maxBytes)
	}
	ders, err := crlBlocks(data)
	if err != nil {
		return nil, err
	}
	crls := make([]*CRL, 0, len(ders))
	for i, der := range ders {
		crl, err := parseOneCRL(der, cas, allowPending)
		if err == nil {
			for j, prev := range crls {
				if prev.issuerName == crl.issuerName && prev.Scope.raw == crl.Scope.raw {
					err = fmt.Errorf("%w: CRLs %d and %d are both from CA %.120q with the same scope; a file holds one CRL per CA and scope",
						ErrCRLInvalid, j+1, i+1, crl.Issuer())
				}
			}
		}
		if err != nil {
			if len(ders) > 1 {
				err = fmt.Errorf("crl %d of %d in the file: %w", i+1, len(ders), err)
			}
			return nil, err
		}
		crls = append(crls, crl)
	}
	return crls, nil
}

// crlBlocks splits data into the DER of each CRL it holds.
func crlBlocks(data []byte) ([][]byte, error) {
	if len(data) > 0 && data[0] == 0x30 { // a DER SEQUENCE: binary CRL
		return [][]byte{data}, nil
	}
	var out [][]byte
	rest := data
	for n := 1; ; n++ {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "X509 CRL" {
			return nil, fmt.Errorf("%w: PEM block %d is %.40q, not X509 CRL (a CRL file holds CRLs only)", ErrCRLInvalid, n, block.Type)
		}
		if len(out) == MaxCRLsPerFile {
			return nil, fmt.Errorf("%w: more than %d CRLs in one file", ErrCRLInvalid, MaxCRLsPerFile)
		}
		out = append(out, block.Bytes)
	}
	// A BEGIN line that did not decode is a truncated or corrupt file:
	// refuse it rather than use the blocks before it.
	if bytes.Contains(rest, []byte("-----BEGIN")) {
		return nil, fmt.Errorf("%w: truncated or corrupt PEM block after CRL %d", ErrCRLInvalid, len(out))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: neither a DER CRL nor PEM with an X509 CRL block", ErrCRLInvalid)
	}
	return out, nil
}

// parseOneCRL checks one DER CRL: a complete CRL with a nextUpdate,
// signed by one of cas. It refuses what crypto/x509 refuses and, unlike
// x509, bytes RFC 5280 does not allow after the CRL, its signature, its
// crlExtensions or an entry's extensions; it needs memory for the DER and
// the SerialSet only, not x509's 1.2 KB per entry (see
// parseRevocationList).
func parseOneCRL(der []byte, cas []*x509.Certificate, allowPending bool) (*CRL, error) {
	rl, entries, err := parseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCRLInvalid, err)
	}
	// Signature first: nothing about an unverified CRL is worth reporting.
	verifiedBy, named := -1, false
	for i, ca := range cas {
		if ca == nil || !bytes.Equal(rl.RawIssuer, ca.RawSubject) {
			continue
		}
		named = true
		if rl.CheckSignatureFrom(ca) == nil {
			verifiedBy = i
			break
		}
	}
	if verifiedBy < 0 && (named || !allowPending) {
		return nil, ErrCRLSignature
	}
	if rl.NextUpdate.IsZero() {
		// Without nextUpdate there is no way to tell stale data from fresh.
		return nil, fmt.Errorf("%w: no nextUpdate", ErrCRLInvalid)
	}
	if rl.NextUpdate.Before(rl.ThisUpdate) {
		return nil, fmt.Errorf("%w: nextUpdate before thisUpdate", ErrCRLInvalid)
	}
	// An issuingDistributionPoint (critical, RFC 5280 5.2.5) narrows the
	// CRL's scope; parseScope refuses the scopes that cannot be applied.
	// Any other critical extension (a delta CRL indicator, say) changes
	// what the CRL means in a way not supported here: treating it as a
	// complete CRL would be wrong, so refuse it.
	var scope Scope
	for _, ext := range rl.Extensions {
		switch {
		case ext.Id.Equal(oidIssuingDistributionPoint):
			if scope, err = parseScope(ext.Value); err != nil {
				return nil, fmt.Errorf("%w: issuing distribution point: %w", ErrCRLInvalid, err)
			}
		case ext.Critical:
			return nil, fmt.Errorf("%w: unsupported critical extension %s", ErrCRLInvalid, ext.Id)
		}
	}
	if entries.critical != nil {
		return nil, fmt.Errorf("%w: unsupported critical entry extension %s", ErrCRLInvalid, entries.critical)
	}
	serials, err := newSerialSet(entries.serials)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCRLInvalid, err)
	}
	crl := &CRL{
		Number:     rl.Number,
		ThisUpdate: rl.ThisUpdate,
		NextUpdate: rl.NextUpdate,
		CA:         verifiedBy,
		Serials:    serials,
		Raw:        der,
		Digest:     sha256.Sum256(der),
		Scope:      scope,
		issuerName: string(rl.RawIssuer),
	}
	if verifiedBy < 0 {
		crl.pending = rl
	}
	return crl, nil
}

// Issuer returns the CRL's issuer name in RFC 2253 form, for messages.
func (c *CRL) Issuer() string {
	var rdn pkix.RDNSequence
	if _, err := asn1.Unmarshal([]byte(c.issuerName), &rdn); err != nil {
		return fmt.Sprintf("%x", c.issuerName)
	}
	var n pkix.Name
	n.FillFromRDNSequence(&rdn)
	return n.String()
}

// newerThan reports whether c may replace held (same CA): the CRL number
// must not go backwards, and an equal number must not carry an older
// thisUpdate. CRLs without numbers are ordered by thisUpdate alone.
func (c *CRL) newerThan(held *CRL) error {
	if held == nil {
		return nil
	}
	if c.Number != nil && held.Number != nil {
		switch c.Number.Cmp(held.Number) {
		case -1:
			return fmt.Errorf("%w: number %s < %s", ErrCRLOlder, c.Number, held.Number)
		case 1:
			return nil
		}
	}
	if c.ThisUpdate.Before(held.ThisUpdate) {
		return fmt.Errorf("%w: thisUpdate %s < %s", ErrCRLOlder,
			c.ThisUpdate.UTC().Format(time.RFC3339), held.ThisUpdate.UTC().Format(time.RFC3339))
	}
	return nil
}

// readLimited reads at most max bytes from r, failing with ErrCRLTooLarge
// when there is more. size is how many bytes r is expected to hold (a
// file's size, a Content-Length), or -1 when unknown.
//
// io.ReadAll grows its buffer in steps and copies the steps into a final
// slice, so it holds about twice the CRL for a moment (about 94 MiB for a
// million-entry CRL). With a size, the buffer is allocated once, with one
// spare byte in which the read that ends the input sees EOF; a source that
// holds more than it said (a file that grew) still reads correctly, only
// with the buffer growing. max bounds the input either way.
func readLimited(r io.Reader, max, size int64) ([]byte, error) {
	if size > max {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrCRLTooLarge, size, max)
	}
	lr := io.LimitReader(r, max+1)
	var b []byte
	if size < 0 {
		var err error
		if b, err = io.ReadAll(lr); err != nil {
			return nil, err
		}
	} else {
		b = make([]byte, 0, size+1)
		for {
			n, err := lr.Read(b[len(b):cap(b)])
			b = b[:len(b)+n]
			if err == io.EOF {
				break
			}
			if err != nil {
				return nil, err
			}
			if len(b) == cap(b) {
				b = append(b, 0)[:len(b)] // more than size: let append grow it
			}
		}
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%w: more than %d bytes", ErrCRLTooLarge, max)
	}
	return b, nil
}
