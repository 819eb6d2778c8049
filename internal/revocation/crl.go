package revocation

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
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
	// CA is the index into the tenant's CA list of the certificate that
	// verified the signature; CRLs are ordered per CA.
	CA int
	// Serials holds every revoked serial; it is never nil in a CRL returned
	// by ParseCRL.
	Serials *SerialSet
	// Raw is the DER the CRL was parsed from. The checker drops it once the
	// CRL is held (a million-entry CRL is 40 MB) and compares Digest.
	Raw []byte
	// Digest is the SHA-256 of Raw.
	Digest [sha256.Size]byte
}

// ParseCRL decodes a CRL (DER, or PEM "X509 CRL"), checks it is a complete
// CRL with a nextUpdate, and verifies that one of cas signed it. maxBytes
// bounds the input (DefaultMaxCRLBytes when <= 0). It refuses what
// crypto/x509 refuses and, unlike x509, bytes RFC 5280 does not allow after
// the CRL, its signature, its crlExtensions or an entry's extensions; it
// needs memory for the DER and the SerialSet only, not x509's 1.2 KB per
// entry (see parseRevocationList).
func ParseCRL(data []byte, cas []*x509.Certificate, maxBytes int64) (*CRL, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxCRLBytes
	}
	if int64(len(data)) > maxBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrCRLTooLarge, len(data), maxBytes)
	}
	der := data
	if bytes.HasPrefix(bytes.TrimLeft(data, " \t\r\n"), []byte("-----BEGIN")) {
		block, _ := pem.Decode(data)
		if block == nil || block.Type != "X509 CRL" {
			return nil, fmt.Errorf("%w: pem input without an X509 CRL block", ErrCRLInvalid)
		}
		der = block.Bytes
	}
	rl, entries, err := parseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCRLInvalid, err)
	}
	// Signature first: nothing about an unverified CRL is worth reporting.
	verifiedBy := -1
	for i, ca := range cas {
		if ca == nil || !bytes.Equal(rl.RawIssuer, ca.RawSubject) {
			continue
		}
		if rl.CheckSignatureFrom(ca) == nil {
			verifiedBy = i
			break
		}
	}
	if verifiedBy < 0 {
		return nil, ErrCRLSignature
	}
	if rl.NextUpdate.IsZero() {
		// Without nextUpdate there is no way to tell stale data from fresh.
		return nil, fmt.Errorf("%w: no nextUpdate", ErrCRLInvalid)
	}
	if rl.NextUpdate.Before(rl.ThisUpdate) {
		return nil, fmt.Errorf("%w: nextUpdate before thisUpdate", ErrCRLInvalid)
	}
	// A critical extension we do not understand (delta CRL indicator,
	// issuing distribution point restricting scope, indirect CRL entries)
	// changes what the CRL means; treating it as a complete CRL would be
	// wrong, so refuse it.
	for _, ext := range rl.Extensions {
		if ext.Critical {
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
	return &CRL{
		Number:     rl.Number,
		ThisUpdate: rl.ThisUpdate,
		NextUpdate: rl.NextUpdate,
		CA:         verifiedBy,
		Serials:    serials,
		Raw:        der,
		Digest:     sha256.Sum256(der),
	}, nil
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
