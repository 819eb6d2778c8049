package identity

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Profile limits. A certificate beyond them is invalid_agent_profile: the
// attributes end up in every decision record, header and policy input.
const (
	MaxScopes          = 64
	MaxScopeBytes      = 128
	MaxOwnerBytes      = 128
	MaxAgentIDBytes    = 63
	MaxSPIFFEIDBytes   = 2048
	MaxTrustDomain     = 255
	MaxSerialBytes     = 20 // RFC 5280 4.1.2.2
	maxAgentPassExtLen = 4096
	maxAgentPassText   = 256
)

// ErrInvalidProfile is wrapped by every certificate profile violation.
var ErrInvalidProfile = errors.New("certificate violates its agent profile")

// AgentPass extension OIDs (see docs/design.md "Agent certificate profiles").
func oidAgentPassTrust() asn1.ObjectIdentifier {
	return asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1, 1}
}
func oidAgentPassScopes() asn1.ObjectIdentifier {
	return asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1, 2}
}
func oidAgentPassIssuer() asn1.ObjectIdentifier {
	return asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1, 3}
}

// oidCommonName is the X.520 commonName attribute.
func oidCommonName() asn1.ObjectIdentifier { return asn1.ObjectIdentifier{2, 5, 4, 3} }

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidProfile}, args...)...)
}

// ValidAgentID reports whether id matches [a-z0-9][a-z0-9._-]{0,62}.
func ValidAgentID(id string) bool {
	if id == "" || len(id) > MaxAgentIDBytes {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !isLowerAlnum(c) && (i == 0 || (c != '.' && c != '_' && c != '-')) {
			return false
		}
	}
	return true
}

// ValidScope reports whether s is a native scope "<resource>:<action>", each
// part matching [a-z0-9][a-z0-9._-]*, at most MaxScopeBytes in all. It is the
// same syntax the CA enforces at issuance.
func ValidScope(s string) bool {
	if len(s) > MaxScopeBytes {
		return false
	}
	res, act, ok := strings.Cut(s, ":")
	return ok && validToken(res) && validToken(act)
}

// validAgentPassScope accepts the AgentPass CA's scope tokens, which may be a
// bare resource ("payments") as well as "<resource>:<action>".
func validAgentPassScope(s string) bool {
	if s == "" || len(s) > MaxScopeBytes {
		return false
	}
	for _, part := range strings.Split(s, ":") {
		if !validToken(part) {
			return false
		}
	}
	return true
}

func validToken(p string) bool {
	if p == "" {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if !isLowerAlnum(c) && (i == 0 || (c != '.' && c != '_' && c != '-')) {
			return false
		}
	}
	return true
}

// ValidOwner reports whether o matches [A-Za-z0-9][A-Za-z0-9._@+-]{0,127},
// the syntax the CA enforces for owner ids (an e-mail address or team name).
func ValidOwner(o string) bool {
	if o == "" || len(o) > MaxOwnerBytes {
		return false
	}
	for i := 0; i < len(o); i++ {
		c := o[i]
		alnum := isLowerAlnum(c) || (c >= 'A' && c <= 'Z')
		if !alnum && (i == 0 || (c != '.' && c != '_' && c != '@' && c != '+' && c != '-')) {
			return false
		}
	}
	return true
}

// ValidTrustDomain reports whether td is a SPIFFE trust domain name: a-z, 0-9,
// '.', '-' and '_', no empty label, at most 255 bytes.
func ValidTrustDomain(td string) bool {
	if td == "" || len(td) > MaxTrustDomain || td[0] == '.' || td[len(td)-1] == '.' || strings.Contains(td, "..") {
		return false
	}
	for i := 0; i < len(td); i++ {
		c := td[i]
		if !isLowerAlnum(c) && c != '.' && c != '-' && c != '_' {
			return false
		}
	}
	return true
}

// ParseTrustLevel parses exactly "L0".."L4".
func ParseTrustLevel(s string) (int, error) {
	if len(s) != 2 || s[0] != 'L' || s[1] < '0' || s[1] > '4' {
		return 0, invalid("trust level %.20q is not one of L0..L4", s)
	}
	return int(s[1] - '0'), nil
}

// ParseSPIFFEID splits a SPIFFE ID "spiffe://<trust-domain>/<path>" and
// checks it against the SPIFFE ID specification: a valid trust domain, a
// non-empty path of non-empty segments of [A-Za-z0-9._-] that are not "." or
// "..", no query, fragment, port or user info.
func ParseSPIFFEID(id string) (trustDomain, path string, err error) {
	if len(id) > MaxSPIFFEIDBytes {
		return "", "", invalid("SPIFFE ID longer than %d bytes", MaxSPIFFEIDBytes)
	}
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return "", "", invalid("%.80q is not a spiffe:// URI", id)
	}
	slash := strings.IndexByte(rest, '/')
	if slash < 0 {
		return "", "", invalid("SPIFFE ID %.80q has no path", id)
	}
	trustDomain, path = rest[:slash], rest[slash:]
	if !ValidTrustDomain(trustDomain) {
		return "", "", invalid("SPIFFE ID %.80q: bad trust domain", id)
	}
	for _, seg := range strings.Split(path[1:], "/") {
		if seg == "" || seg == "." || seg == ".." {
			return "", "", invalid("SPIFFE ID %.80q: empty, '.' or '..' path segment", id)
		}
		for i := 0; i < len(seg); i++ {
			c := seg[i]
			if !isLowerAlnum(c) && !(c >= 'A' && c <= 'Z') && c != '.' && c != '-' && c != '_' {
				return "", "", invalid("SPIFFE ID %.80q: path may contain only A-Z, a-z, 0-9, '.', '-', '_'", id)
			}
		}
	}
	return trustDomain, path, nil
}

// ParseNative checks cert against the native profile for trustDomain and
// returns the agent it names (Source is left empty for the caller). It checks
// the certificate alone, not its chain or validity window. Every violation
// wraps ErrInvalidProfile. The CA uses it to check what it issues.
func ParseNative(cert *x509.Certificate, trustDomain string) (*Agent, error) {
	if err := checkCommon(cert, trustDomain); err != nil {
		return nil, err
	}
	if err := checkKey(cert); err != nil {
		return nil, err
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return nil, invalid("key usage lacks digitalSignature")
	}
	id, err := singleCN(cert)
	if err != nil {
		return nil, err
	}
	if !ValidAgentID(id) {
		return nil, invalid("subject CN %.80q is not an agent id [a-z0-9][a-z0-9._-]{0,62}", id)
	}
	if len(cert.URIs) != 1 {
		return nil, invalid("%d URI SANs, want exactly one", len(cert.URIs))
	}
	want := "spiffe://" + trustDomain + "/agent/" + id
	if got := cert.URIs[0].String(); got != want {
		return nil, invalid("URI SAN %.120q does not match CN: want %q", got, want)
	}
	a := baseAgent(cert, trustDomain, ProfileNative)
	a.ID, a.SPIFFEID = id, want
	trust := -1
	var scopes []string
	for _, ou := range cert.Subject.OrganizationalUnit {
		k, v, _ := strings.Cut(ou, ":")
		switch k {
		case "trust":
			if trust >= 0 {
				return nil, invalid("more than one trust OU")
			}
			if trust, err = ParseTrustLevel(v); err != nil {
				return nil, err
			}
		case "scope":
			if len(scopes) == MaxScopes {
				return nil, invalid("more than %d scope OUs", MaxScopes)
			}
			if !ValidScope(v) {
				return nil, invalid("scope OU %.140q is not <resource>:<action>", v)
			}
			scopes = append(scopes, v)
		case "owner":
			if a.Owner != "" {
				return nil, invalid("more than one owner OU")
			}
			if !ValidOwner(v) {
				return nil, invalid("owner OU %.140q is not [A-Za-z0-9][A-Za-z0-9._@+-]{0,127}", v)
			}
			a.Owner = v
		default:
			// Unknown OUs are refused so that a typo ("scopes:…", "Trust:L4")
			// is found at issuance instead of silently changing rights.
			return nil, invalid("unknown subject OU %.80q (want trust:, scope: or owner:)", ou)
		}
	}
	if trust < 0 {
		return nil, invalid("no trust:L<n> OU")
	}
	a.TrustLevel = trust
	a.Scopes = normScopes(scopes)
	return a, nil
}

// ParseAgentPass checks cert against the AgentPass profile and returns the
// agent it names. The three extensions 1.3.6.1.4.1.99999.1.{1,2,3} must each be
// present and non-critical, each value being a DER OCTET STRING that wraps a
// DER UTF8String (so the extnValue holds 04 len 0c len text, as the AgentPass
// CA writes it). The agent id is the parenthesised suffix of the CN
// "<name> (<id>)". The SPIFFE ID is synthesised as
// spiffe://<trustDomain>/agent/<id> so that policies key on one form.
func ParseAgentPass(cert *x509.Certificate, trustDomain string) (*Agent, error) {
	if err := checkCommon(cert, trustDomain); err != nil {
		return nil, err
	}
	if cert.SignatureAlgorithm != x509.ECDSAWithSHA256 {
		return nil, invalid("signature algorithm %s, AgentPass requires ECDSA with SHA-256", cert.SignatureAlgorithm)
	}
	cn, err := singleCN(cert)
	if err != nil {
		return nil, err
	}
	_, id, err := splitAgentPassCN(cn)
	if err != nil {
		return nil, err
	}
	var trust, scopes, issuer *string
	for _, ext := range cert.Extensions {
		var dst **string
		switch {
		case ext.Id.Equal(oidAgentPassTrust()):
			dst = &trust
		case ext.Id.Equal(oidAgentPassScopes()):
			dst = &scopes
		case ext.Id.Equal(oidAgentPassIssuer()):
			dst = &issuer
		default:
			continue
		}
		if ext.Critical {
			return nil, invalid("AgentPass extension %s is marked critical", ext.Id)
		}
		if *dst != nil {
			return nil, invalid("AgentPass extension %s repeated", ext.Id)
		}
		s, err := decodeWrappedUTF8(ext.Value)
		if err != nil {
			return nil, invalid("AgentPass extension %s: %v", ext.Id, err)
		}
		*dst = &s
	}
	switch {
	case trust == nil:
		return nil, invalid("AgentPass trust level extension %s missing", oidAgentPassTrust())
	case scopes == nil:
		return nil, invalid("AgentPass scopes extension %s missing", oidAgentPassScopes())
	case issuer == nil:
		return nil, invalid("AgentPass issuer id extension %s missing", oidAgentPassIssuer())
	}
	a := baseAgent(cert, trustDomain, ProfileAgentPass)
	a.ID, a.SPIFFEID = id, "spiffe://"+trustDomain+"/agent/"+id
	if a.TrustLevel, err = ParseTrustLevel(*trust); err != nil {
		return nil, err
	}
	if !validText(*issuer, maxAgentPassText) || *issuer == "" {
		return nil, invalid("AgentPass issuer id %.80q is empty, too long or has control characters", *issuer)
	}
	a.IssuerID = *issuer
	var list []string
	for _, s := range strings.Split(*scopes, ",") {
		// The AgentPass verifier trims and skips empty tokens; so do we.
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if len(list) == MaxScopes {
			return nil, invalid("more than %d scopes", MaxScopes)
		}
		if !validAgentPassScope(s) {
			return nil, invalid("AgentPass scope %.140q is not a scope", s)
		}
		list = append(list, s)
	}
	a.Scopes = normScopes(list)
	return a, nil
}

// parseSPIFFECert checks a certificate under the spiffe profile (an X.509
// SVID): exactly one URI SAN, a SPIFFE ID in trustDomain. Trust level and
// scopes come from the registry at request time, so they are left zero.
func parseSPIFFECert(cert *x509.Certificate, trustDomain string) (*Agent, error) {
	if err := checkCommon(cert, trustDomain); err != nil {
		return nil, err
	}
	if len(cert.URIs) != 1 {
		return nil, invalid("%d URI SANs, want exactly one SPIFFE ID", len(cert.URIs))
	}
	id := cert.URIs[0].String()
	td, _, err := ParseSPIFFEID(id)
	if err != nil {
		return nil, err
	}
	if td != trustDomain {
		return nil, invalid("SPIFFE ID %.120q is not in trust domain %q", id, trustDomain)
	}
	a := baseAgent(cert, trustDomain, ProfileSPIFFE)
	a.SPIFFEID = id
	return a, nil
}

// checkCommon holds the rules every certificate profile shares.
func checkCommon(cert *x509.Certificate, trustDomain string) error {
	if cert == nil {
		return invalid("no certificate")
	}
	if !ValidTrustDomain(trustDomain) {
		return invalid("trust domain %.80q is not valid", trustDomain)
	}
	if cert.IsCA {
		return invalid("a CA certificate cannot be an agent certificate")
	}
	if !hasClientAuth(cert) {
		return invalid("extended key usage lacks clientAuth")
	}
	if cert.SerialNumber == nil || cert.SerialNumber.Sign() < 0 || len(cert.SerialNumber.Bytes()) > MaxSerialBytes {
		return invalid("serial number is negative or longer than %d bytes", MaxSerialBytes)
	}
	return nil
}

func hasClientAuth(cert *x509.Certificate) bool {
	for _, u := range cert.ExtKeyUsage {
		if u == x509.ExtKeyUsageClientAuth {
			return true
		}
	}
	return false
}

func checkKey(cert *x509.Certificate) error {
	switch k := cert.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() {
			return nil
		}
	case ed25519.PublicKey:
		return nil
	}
	return invalid("public key %s is not ECDSA P-256 or Ed25519", cert.PublicKeyAlgorithm)
}

// singleCN returns the one subject commonName; several CNs would make the
// identity depend on which one a reader picks.
func singleCN(cert *x509.Certificate) (string, error) {
	n := 0
	for _, atv := range cert.Subject.Names {
		if atv.Type.Equal(oidCommonName()) {
			n++
		}
	}
	if n != 1 {
		return "", invalid("%d subject CNs, want exactly one", n)
	}
	return cert.Subject.CommonName, nil
}

// splitAgentPassCN splits "<name> (<id>)".
func splitAgentPassCN(cn string) (name, id string, err error) {
	open := strings.LastIndex(cn, " (")
	if open <= 0 || !strings.HasSuffix(cn, ")") {
		return "", "", invalid("CN %.80q is not \"<name> (<agent-id>)\"", cn)
	}
	name, id = strings.TrimSpace(cn[:open]), cn[open+2:len(cn)-1]
	if name == "" || !validText(name, maxAgentPassText) {
		return "", "", invalid("CN %.80q: name is empty or has control characters", cn)
	}
	if !ValidAgentID(id) {
		return "", "", invalid("CN %.80q: agent id %.70q is not [a-z0-9][a-z0-9._-]{0,62}", cn, id)
	}
	return name, id, nil
}

// decodeWrappedUTF8 decodes DER OCTET STRING { UTF8String } with nothing
// after either, in strict DER (definite, minimal lengths).
func decodeWrappedUTF8(b []byte) (string, error) {
	if len(b) > maxAgentPassExtLen {
		return "", fmt.Errorf("value longer than %d bytes", maxAgentPassExtLen)
	}
	tag, inner, rest, err := readTLV(b)
	if err != nil {
		return "", err
	}
	if tag != 0x04 || len(rest) != 0 {
		if tag == 0x0c {
			return "", errors.New("bare UTF8String; AgentPass wraps it in an OCTET STRING")
		}
		return "", errors.New("want one OCTET STRING")
	}
	tag, text, rest, err := readTLV(inner)
	if err != nil {
		return "", err
	}
	if tag != 0x0c || len(rest) != 0 {
		return "", errors.New("OCTET STRING does not hold exactly one UTF8String")
	}
	if !utf8.Valid(text) {
		return "", errors.New("UTF8String is not valid UTF-8")
	}
	return string(text), nil
}

// readTLV reads one DER tag-length-value with a single-byte tag.
func readTLV(b []byte) (tag byte, val, rest []byte, err error) {
	if len(b) < 2 {
		return 0, nil, nil, errors.New("truncated DER")
	}
	tag, l := b[0], int(b[1])
	b = b[2:]
	if l >= 0x80 {
		n := l & 0x7f
		if n == 0 || n > 2 || len(b) < n {
			return 0, nil, nil, errors.New("bad DER length")
		}
		l = 0
		for i := 0; i < n; i++ {
			l = l<<8 | int(b[i])
		}
		if b[0] == 0 || l < 0x80 {
			return 0, nil, nil, errors.New("non-minimal DER length")
		}
		b = b[n:]
	}
	if l > len(b) {
		return 0, nil, nil, errors.New("truncated DER")
	}
	return tag, b[:l], b[l:], nil
}

func validText(s string, max int) bool {
	if len(s) > max || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if unicode.IsControl(r) || r == utf8.RuneError {
			return false
		}
	}
	return true
}

// baseAgent fills what every certificate profile shares.
func baseAgent(cert *x509.Certificate, trustDomain string, p Profile) *Agent {
	sum := sha256.Sum256(cert.Raw)
	return &Agent{
		Tenant:     trustDomain,
		Serial:     cert.SerialNumber.Text(16),
		CertSHA256: hex.EncodeToString(sum[:]),
		Issuer:     cert.Issuer.String(),
		NotBefore:  cert.NotBefore,
		NotAfter:   cert.NotAfter,
		Profile:    p,
	}
}

// normScopes sorts and de-duplicates in place; nil stays nil so that an agent
// without scopes has Scopes == nil.
func normScopes(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	sort.Strings(s)
	out := s[:1]
	for _, v := range s[1:] {
		if v != out[len(out)-1] {
			out = append(out, v)
		}
	}
	return out
}

func isLowerAlnum(c byte) bool { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') }
