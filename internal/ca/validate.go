package ca

import (
	"errors"
	"fmt"
	"math/big"
	"sort"
	"strings"
	"time"
	"unicode/utf8"
)

// Input limits. They keep subjects small and make every field safe to use in
// a file name, a SPIFFE ID or an OU without escaping.
const (
	maxAgentIDLen     = 63
	maxTrustDomainLen = 255
	maxScopePartLen   = 63
	maxScopes         = 32
	maxOwnerLen       = 128
	maxOperatorLen    = 128
	maxOrgLen         = 128
	maxCRLURLLen      = 1024
	maxInputFileSize  = 64 << 10 // CSRs, certificates, keys
)

// ErrInvalid marks invalid input: nothing was changed.
var ErrInvalid = errors.New("invalid input")

// InputError is ErrInvalid with the input field at fault ("agent_id",
// "trust", "scope", "owner", "ttl", "csr", "serial", "reason", …), so that a
// front end can point at the right flag.
type InputError struct {
	Field string
	Msg   string
}

func (e *InputError) Error() string { return e.Msg }
func (e *InputError) Unwrap() error { return ErrInvalid }

func fieldf(field, format string, args ...any) error {
	return &InputError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// ValidateAgentID checks an agent id against [a-z0-9][a-z0-9._-]{0,62}.
func ValidateAgentID(id string) error {
	if id == "" {
		return fieldf("agent_id", "agent id is empty")
	}
	if len(id) > maxAgentIDLen {
		return fieldf("agent_id", "agent id %.70q is longer than %d characters", id, maxAgentIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		ok := isLowerAlnum(c) || (i > 0 && (c == '.' || c == '_' || c == '-'))
		if !ok {
			return fieldf("agent_id", "agent id %q must match [a-z0-9][a-z0-9._-]{0,62}", id)
		}
	}
	return nil
}

// ValidateTrustDomain checks a SPIFFE trust domain name: lowercase letters,
// digits, '.', '-' and '_', at most 255 characters.
func ValidateTrustDomain(td string) error {
	if td == "" {
		return fieldf("trust_domain", "trust domain is empty")
	}
	if len(td) > maxTrustDomainLen {
		return fieldf("trust_domain", "trust domain is longer than %d characters", maxTrustDomainLen)
	}
	for i := 0; i < len(td); i++ {
		c := td[i]
		if !isLowerAlnum(c) && c != '.' && c != '-' && c != '_' {
			return fieldf("trust_domain", "trust domain %q may contain only a-z, 0-9, '.', '-' and '_'", td)
		}
	}
	if td[0] == '.' || td[len(td)-1] == '.' || strings.Contains(td, "..") {
		return fieldf("trust_domain", "trust domain %q has an empty label", td)
	}
	return nil
}

// ParseTrust parses a trust level "L0".."L4" (also "0".."4") into 0..4.
func ParseTrust(s string) (int, error) {
	t := strings.TrimPrefix(strings.TrimPrefix(s, "L"), "l")
	if len(t) != 1 || t[0] < '0' || t[0] > '4' {
		return 0, fieldf("trust", "trust level %.20q must be one of L0, L1, L2, L3, L4", s)
	}
	return int(t[0] - '0'), nil
}

// TrustLabel formats a trust level as "L<n>".
func TrustLabel(level int) string { return fmt.Sprintf("L%d", level) }

// ValidateScope checks a scope "<resource>:<action>" where each part matches
// [a-z0-9][a-z0-9._-]{0,62}. Exactly one ':' separates them.
func ValidateScope(s string) error {
	if s == "" {
		return fieldf("scope", "scope is empty")
	}
	res, act, ok := strings.Cut(s, ":")
	if !ok || strings.Contains(act, ":") {
		return fieldf("scope", "scope %.140q must have the form <resource>:<action>", s)
	}
	for _, p := range []string{res, act} {
		if p == "" || len(p) > maxScopePartLen {
			return fieldf("scope", "scope %.140q: resource and action must be 1..%d characters", s, maxScopePartLen)
		}
		for i := 0; i < len(p); i++ {
			c := p[i]
			if !isLowerAlnum(c) && (i == 0 || (c != '.' && c != '_' && c != '-')) {
				return fieldf("scope", "scope %.140q: resource and action must match [a-z0-9][a-z0-9._-]*", s)
			}
		}
	}
	return nil
}

// NormalizeScopes validates scopes and returns them sorted and de-duplicated.
// At least one scope is required.
func NormalizeScopes(scopes []string) ([]string, error) {
	if len(scopes) == 0 {
		return nil, fieldf("scope", "at least one scope is required")
	}
	seen := make(map[string]bool, len(scopes))
	out := make([]string, 0, len(scopes))
	for _, s := range scopes {
		if err := ValidateScope(s); err != nil {
			return nil, err
		}
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	if len(out) > maxScopes {
		return nil, fieldf("scope", "at most %d scopes per certificate", maxScopes)
	}
	sort.Strings(out)
	return out, nil
}

// ValidateOwner checks an owner id (a person's e-mail or a team name): it may
// be empty; otherwise [A-Za-z0-9][A-Za-z0-9._@+-]{0,127}.
func ValidateOwner(o string) error {
	if len(o) > maxOwnerLen {
		return fieldf("owner", "owner is longer than %d characters", maxOwnerLen)
	}
	for i := 0; i < len(o); i++ {
		c := o[i]
		ok := isLowerAlnum(c) || (c >= 'A' && c <= 'Z') ||
			(i > 0 && (c == '.' || c == '_' || c == '@' || c == '+' || c == '-'))
		if !ok {
			return fieldf("owner", "owner %q must match [A-Za-z0-9][A-Za-z0-9._@+-]{0,127}", o)
		}
	}
	return nil
}

func validateText(what, s string, max int) error {
	if len(s) > max {
		return fieldf(what, "%s is longer than %d characters", what, max)
	}
	if !utf8.ValidString(s) {
		return fieldf(what, "%s is not valid UTF-8", what)
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return fieldf(what, "%s contains a control character", what)
		}
	}
	return nil
}

// Reason is an RFC 5280 CRLReason code.
type Reason int

// RFC 5280 section 5.3.1 reason codes supported for revocation. certificateHold
// and removeFromCRL are not offered: a revocation here is final.
const (
	ReasonUnspecified          Reason = 0
	ReasonKeyCompromise        Reason = 1
	ReasonCACompromise         Reason = 2
	ReasonAffiliationChanged   Reason = 3
	ReasonSuperseded           Reason = 4
	ReasonCessationOfOperation Reason = 5
	ReasonPrivilegeWithdrawn   Reason = 9
)

var reasonNames = map[Reason]string{
	ReasonUnspecified:          "unspecified",
	ReasonKeyCompromise:        "keyCompromise",
	ReasonCACompromise:         "cACompromise",
	ReasonAffiliationChanged:   "affiliationChanged",
	ReasonSuperseded:           "superseded",
	ReasonCessationOfOperation: "cessationOfOperation",
	ReasonPrivilegeWithdrawn:   "privilegeWithdrawn",
}

// String is the RFC 5280 name, e.g. "keyCompromise".
func (r Reason) String() string {
	if n, ok := reasonNames[r]; ok {
		return n
	}
	return fmt.Sprintf("reason(%d)", int(r))
}

// ReasonNames lists the accepted reason names.
func ReasonNames() []string {
	out := make([]string, 0, len(reasonNames))
	for _, r := range []Reason{0, 1, 2, 3, 4, 5, 9} {
		out = append(out, reasonNames[r])
	}
	return out
}

// ParseReason parses an RFC 5280 reason name (case-insensitive, '-' and '_'
// ignored, so "key-compromise" works). Empty means unspecified.
func ParseReason(s string) (Reason, error) {
	if s == "" {
		return ReasonUnspecified, nil
	}
	norm := strings.NewReplacer("-", "", "_", "").Replace(strings.ToLower(s))
	for r, n := range reasonNames {
		if strings.ToLower(n) == norm {
			return r, nil
		}
	}
	return 0, fieldf("reason", "unknown revocation reason %.40q (one of %s)", s, strings.Join(ReasonNames(), ", "))
}

// ParseSerial normalises a certificate serial given as hex (optionally with
// ':' separators or a 0x prefix, any case) into lowercase hex without leading
// zeros, the form used in the inventory and identity.Agent.Serial.
func ParseSerial(s string) (string, error) {
	t := strings.TrimPrefix(strings.TrimPrefix(strings.TrimSpace(s), "0x"), "0X")
	t = strings.ReplaceAll(t, ":", "")
	if t == "" || len(t) > 64 {
		return "", fieldf("serial", "serial %.80q must be 1..64 hex digits", s)
	}
	n, ok := new(big.Int).SetString(t, 16)
	if !ok || n.Sign() <= 0 {
		return "", fieldf("serial", "serial %.80q is not a positive hex number", s)
	}
	return n.Text(16), nil
}

// serialString is the inventory form of a serial.
func serialString(n *big.Int) string { return n.Text(16) }

func isLowerAlnum(c byte) bool { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') }

// Default limits of a trust domain.
const (
	DefaultMaxTTL      = 720 * time.Hour
	DefaultCRLValidity = 24 * time.Hour
	caValidity         = 10 * 365 * 24 * time.Hour
	backdate           = time.Minute // tolerate small clock skew between issuer and verifier
)
