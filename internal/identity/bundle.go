package identity

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"

	"github.com/agentauthz/agentauthz/internal/durable"
)

// Input limits for certificates.
const (
	MaxBundleBytes      = 1 << 20  // one trust bundle file
	MaxBundleCerts      = 256      // CA certificates in one bundle
	MaxCertificateBytes = 64 << 10 // one forwarded (URL-encoded) certificate or chain
	MaxChainCerts       = 8        // certificates in an XFCC Chain=
)

// ErrMalformedCertificate is wrapped by every certificate decoding error.
var ErrMalformedCertificate = errors.New("malformed client certificate")

// Bundle is the trust bundle of one tenant: the CA certificates of one trust
// domain and the certificate profile its agents follow.
type Bundle struct {
	TrustDomain string
	Profile     Profile
	// Roots are the trust anchors. Empty only for ProfileSPIFFE used with
	// the spiffe_id source alone (no certificate is then verified).
	Roots []*x509.Certificate
}

// ParseProfile maps a configuration string to a Profile; "" is native.
func ParseProfile(s string) (Profile, error) {
	switch Profile(s) {
	case "", ProfileNative:
		return ProfileNative, nil
	case ProfileAgentPass, ProfileSPIFFE:
		return Profile(s), nil
	}
	return "", fmt.Errorf("profile %q is not one of native, agentpass, spiffe", s)
}

// ParseSource maps a configuration string to a Source.
func ParseSource(s string) (Source, error) {
	switch Source(s) {
	case SourcePeerCertificate, SourceXFCC, SourceSPIFFEID:
		return Source(s), nil
	}
	return "", fmt.Errorf("identity source %q is not one of peer_certificate, xfcc, spiffe_id", s)
}

// LoadBundle reads the PEM file of CA certificates for trustDomain. pemPath
// may be empty only for ProfileSPIFFE.
func LoadBundle(trustDomain, pemPath string, profile Profile) (Bundle, error) {
	if pemPath == "" {
		return NewBundle(trustDomain, profile, nil)
	}
	data, err := durable.ReadFile(pemPath, MaxBundleBytes)
	if err != nil {
		return Bundle{}, fmt.Errorf("trust bundle for %s: %w", trustDomain, err)
	}
	b, err := ParseBundle(trustDomain, data, profile)
	if err != nil {
		return Bundle{}, fmt.Errorf("%s: %w", pemPath, err)
	}
	return b, nil
}

// ParseBundle parses PEM data holding the CA certificates for trustDomain.
// Every block must be a CERTIFICATE of a CA (basicConstraints CA:TRUE).
func ParseBundle(trustDomain string, pemData []byte, profile Profile) (Bundle, error) {
	var roots []*x509.Certificate
	rest := pemData
	for n := 1; ; n++ {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return Bundle{}, fmt.Errorf("trust bundle for %s: PEM block %d is %q, not CERTIFICATE", trustDomain, n, block.Type)
		}
		if len(roots) == MaxBundleCerts {
			return Bundle{}, fmt.Errorf("trust bundle for %s: more than %d certificates", trustDomain, MaxBundleCerts)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return Bundle{}, fmt.Errorf("trust bundle for %s: certificate %d: %w", trustDomain, n, err)
		}
		if !c.BasicConstraintsValid || !c.IsCA {
			return Bundle{}, fmt.Errorf("trust bundle for %s: certificate %d (%s) is not a CA certificate", trustDomain, n, c.Subject)
		}
		roots = append(roots, c)
	}
	// Text around blocks is allowed (bundles often carry comments), but a
	// BEGIN line that did not decode is a truncated or corrupted file.
	if bytes.Contains(rest, []byte("-----BEGIN")) {
		return Bundle{}, fmt.Errorf("trust bundle for %s: truncated or corrupt PEM block after certificate %d", trustDomain, len(roots))
	}
	if len(roots) == 0 && len(pemData) > 0 {
		return Bundle{}, fmt.Errorf("trust bundle for %s: no PEM CERTIFICATE blocks found", trustDomain)
	}
	return NewBundle(trustDomain, profile, roots)
}

// NewBundle checks and builds a Bundle from parsed CA certificates.
func NewBundle(trustDomain string, profile Profile, roots []*x509.Certificate) (Bundle, error) {
	if !ValidTrustDomain(trustDomain) {
		return Bundle{}, fmt.Errorf("trust domain %q is not valid (a-z, 0-9, '.', '-', '_')", trustDomain)
	}
	p, err := ParseProfile(string(profile))
	if err != nil {
		return Bundle{}, fmt.Errorf("trust bundle for %s: %w", trustDomain, err)
	}
	if len(roots) == 0 && p != ProfileSPIFFE {
		return Bundle{}, fmt.Errorf("trust bundle for %s: profile %s needs at least one CA certificate", trustDomain, p)
	}
	return Bundle{TrustDomain: trustDomain, Profile: p, Roots: roots}, nil
}

// decodeCerts URL-decodes (url.QueryUnescape: '+' is a space, as in Go's
// QueryEscape; Envoy writes %2B for '+') and PEM-decodes forwarded
// certificates. Only CERTIFICATE blocks without headers and whitespace
// around them are accepted; at most max certificates.
func decodeCerts(urlEncoded string, max int) ([]*x509.Certificate, error) {
	if len(urlEncoded) > MaxCertificateBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrMalformedCertificate, len(urlEncoded), MaxCertificateBytes)
	}
	p, err := url.QueryUnescape(urlEncoded)
	if err != nil {
		return nil, fmt.Errorf("%w: bad URL encoding: %w", ErrMalformedCertificate, err)
	}
	rest := bytes.TrimLeft([]byte(p), " \t\r\n")
	var out []*x509.Certificate
	for len(rest) > 0 {
		if !bytes.HasPrefix(rest, []byte("-----BEGIN ")) {
			return nil, fmt.Errorf("%w: data that is not PEM", ErrMalformedCertificate)
		}
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, fmt.Errorf("%w: bad PEM", ErrMalformedCertificate)
		}
		if block.Type != "CERTIFICATE" || len(block.Headers) != 0 {
			return nil, fmt.Errorf("%w: PEM block %.40q is not a plain CERTIFICATE", ErrMalformedCertificate, block.Type)
		}
		if len(out) == max {
			return nil, fmt.Errorf("%w: more than %d certificates", ErrMalformedCertificate, max)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrMalformedCertificate, err)
		}
		out = append(out, c)
		rest = bytes.TrimLeft(rest, " \t\r\n")
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no certificate", ErrMalformedCertificate)
	}
	return out, nil
}
