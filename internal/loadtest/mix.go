package loadtest

import (
	"fmt"
	"math/big"
	"sort"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/agentauthz/agentauthz/internal/checkreq"
)

// Kind is one kind of request in the mix.
type Kind string

// The request kinds. Each has the HTTP status the real service must answer.
const (
	// PeerAllow: an L3 agent initiates a payment; certificate in
	// source.certificate (include_peer_certificate). Allowed.
	PeerAllow Kind = "peer-allow"
	// XFCCAllow: an L1 agent reads a payment; certificate in the rightmost
	// x-forwarded-client-cert element. Allowed.
	XFCCAllow Kind = "xfcc-allow"
	// PolicyDeny: the L1 agent tries to initiate a payment. 403.
	PolicyDeny Kind = "policy-deny"
	// Revoked: an agent whose serial is in the CRL. 401 (a revoked
	// certificate no longer authenticates; reason.IsIdentity).
	Revoked Kind = "revoked"
	// NoIdentity: no certificate anywhere. 401.
	NoIdentity Kind = "no-identity"
	// Untrusted: a certificate from a CA that is not trusted. 401. Never
	// cached, so every one costs a full chain verification.
	Untrusted Kind = "untrusted"
	// BadXFCC: a malformed x-forwarded-client-cert header. 401.
	BadXFCC Kind = "bad-xfcc"
)

// Kinds lists every kind in report order.
var allKinds = []Kind{PeerAllow, XFCCAllow, PolicyDeny, Revoked, NoIdentity, Untrusted, BadXFCC}

// DefaultMix is mostly allowed traffic with some denials and identity
// failures, roughly what a mesh sees.
const DefaultMix = "peer-allow=50,xfcc-allow=20,policy-deny=16,revoked=4,no-identity=4,untrusted=2,bad-xfcc=4"

// Mix is a weight per kind.
type Mix map[Kind]int

// ParseMix parses "kind=weight,kind=weight".
func ParseMix(s string) (Mix, error) {
	m := Mix{}
	total := 0
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, w, ok := strings.Cut(part, "=")
		if !ok {
			return nil, fmt.Errorf("mix %q: want kind=weight", part)
		}
		kind := Kind(strings.TrimSpace(k))
		if !knownKind(kind) {
			return nil, fmt.Errorf("mix: unknown kind %q (known: %s)", kind, kindNames())
		}
		n, err := strconv.Atoi(strings.TrimSpace(w))
		if err != nil || n < 0 || n > 1000 {
			return nil, fmt.Errorf("mix %q: weight must be 0..1000", part)
		}
		m[kind] = n
		total += n
	}
	if total == 0 {
		return nil, fmt.Errorf("mix %q: all weights are zero", s)
	}
	return m, nil
}

func knownKind(k Kind) bool {
	for _, x := range allKinds {
		if x == k {
			return true
		}
	}
	return false
}

func kindNames() string {
	s := make([]string, len(allKinds))
	for i, k := range allKinds {
		s[i] = string(k)
	}
	return strings.Join(s, ", ")
}

// String is the canonical form, in report order.
func (m Mix) String() string {
	var parts []string
	for _, k := range allKinds {
		if w := m[k]; w > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", k, w))
		}
	}
	return strings.Join(parts, ",")
}

// gRPC status codes a Check answer carries (google.rpc.Status.code).
const (
	codeOK               = 0
	codePermissionDenied = 7
	codeUnauthenticated  = 16
)

// expectedCode is the google.rpc code mode must answer for kind. The naive
// path has no revocation, so it allows revoked agents; the no-op server
// allows everything.
func expectedCode(mode Mode, k Kind) int32 {
	switch {
	case mode == ModeNoop:
		return codeOK
	case k == PeerAllow || k == XFCCAllow:
		return codeOK
	case k == Revoked && mode == ModeNaive:
		return codeOK
	case k == PolicyDeny:
		return codePermissionDenied
	default:
		return codeUnauthenticated
	}
}

// request is one pre-marshalled CheckRequest.
type request struct {
	kind Kind
	raw  []byte
}

// buildRequests generates agents and a request pool following the mix: the
// pool repeats each kind in proportion to its weight and cycles through
// several agents per kind, so the identity cache holds more than one entry.
// It returns the pool and the serials that must be in the CRL.
func buildRequests(p *pki, mix Mix) ([]request, []*big.Int, error) {
	type agentSet struct{ certs []*agentCert }
	issue := func(prefix string, trust int, scopes []string, untrusted bool) (agentSet, error) {
		var s agentSet
		for i := range agentsPerKind {
			c, err := p.issue(fmt.Sprintf("%s-%02d", prefix, i), trust, scopes, untrusted)
			if err != nil {
				return s, err
			}
			s.certs = append(s.certs, c)
		}
		return s, nil
	}
	payers, err := issue("payments-bot", 3, []string{"payments:initiate", "payments:read"}, false)
	if err != nil {
		return nil, nil, err
	}
	readers, err := issue("payments-reader", 1, []string{"payments:read"}, false)
	if err != nil {
		return nil, nil, err
	}
	revoked, err := issue("revoked-bot", 3, []string{"payments:initiate"}, false)
	if err != nil {
		return nil, nil, err
	}
	strangers, err := issue("stranger-bot", 3, []string{"payments:initiate"}, true)
	if err != nil {
		return nil, nil, err
	}
	var serials []*big.Int
	for _, c := range revoked.certs {
		serials = append(serials, c.serial)
	}

	now := time.Now()
	one := func(k Kind, i int) (checkreq.Request, error) {
		r := checkreq.Request{RequestID: fmt.Sprintf("bench-%s-%d", k, i), Now: now,
			Headers: map[string]string{"content-type": "application/json"}}
		pick := func(s agentSet) []byte { return s.certs[i%len(s.certs)].certPEM }
		switch k {
		case PeerAllow:
			r.Method, r.Path, r.Via, r.CertPEM = "POST", "/v1/payments", checkreq.ViaPeer, pick(payers)
		case XFCCAllow:
			r.Method, r.Path, r.Via, r.CertPEM = "GET", fmt.Sprintf("/v1/payments/p-%d", i), checkreq.ViaXFCC, pick(readers)
		case PolicyDeny:
			r.Method, r.Path, r.Via, r.CertPEM = "POST", "/v1/payments", checkreq.ViaPeer, pick(readers)
		case Revoked:
			r.Method, r.Path, r.Via, r.CertPEM = "POST", "/v1/payments", checkreq.ViaPeer, pick(revoked)
		case NoIdentity:
			r.Method, r.Path, r.Via = "GET", "/v1/payments", checkreq.ViaNone
		case Untrusted:
			r.Method, r.Path, r.Via, r.CertPEM = "POST", "/v1/payments", checkreq.ViaPeer, pick(strangers)
		case BadXFCC:
			r.Method, r.Path, r.Via = "GET", "/v1/payments", checkreq.ViaNone
			r.Headers["x-forwarded-client-cert"] = `By=spiffe://x;Cert="unterminated`
		default:
			return r, fmt.Errorf("unknown kind %q", k)
		}
		return r, nil
	}
	kinds := make([]Kind, 0, len(mix))
	for k := range mix {
		kinds = append(kinds, k)
	}
	sort.Slice(kinds, func(i, j int) bool { return kinds[i] < kinds[j] })
	// Interleave kinds so that any window of the pool follows the mix.
	var pool []request
	counters := map[Kind]int{}
	const rounds = 4
	for range rounds {
		for _, k := range kinds {
			for range mix[k] {
				i := counters[k]
				counters[k]++
				cr, err := one(k, i)
				if err != nil {
					return nil, nil, err
				}
				req, err := checkreq.Build(cr)
				if err != nil {
					return nil, nil, fmt.Errorf("%s: %w", k, err)
				}
				raw, err := proto.Marshal(req)
				if err != nil {
					return nil, nil, err
				}
				pool = append(pool, request{kind: k, raw: raw})
			}
		}
	}
	shuffle(pool)
	return pool, serials, nil
}

// shuffle is a deterministic permutation, so runs are comparable.
func shuffle(p []request) {
	x := uint64(0x9e3779b97f4a7c15)
	for i := len(p) - 1; i > 0; i-- {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		j := int(x % uint64(i+1))
		p[i], p[j] = p[j], p[i]
	}
}
