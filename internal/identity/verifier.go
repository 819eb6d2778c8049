package identity

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentauthz/agentauthz/internal/reason"
)

// DefaultCacheSize is the number of verified identities kept when
// Config.CacheSize is zero.
const DefaultCacheSize = 10000

// xfccHeaderName is the header Envoy writes; ext_authz lowercases names.
const xfccHeaderName = "x-forwarded-client-cert"

// DefaultSources is the source order used when Config.Sources is empty.
// SPIFFE-only (SourceSPIFFEID) is off unless listed.
func DefaultSources() []Source { return []Source{SourcePeerCertificate, SourceXFCC} }

// Registry supplies trust level, scopes and owner for SPIFFE-only identities
// (profile spiffe), which carry nothing but a SPIFFE ID. The policy engine
// implements it from policy data. LookupAgent runs on every such request: it
// must be safe for concurrent use and must not block. An unknown SPIFFE ID
// (ok == false) gets trust L0 and no scopes.
type Registry interface {
	LookupAgent(spiffeID string) (entry RegistryEntry, ok bool)
}

// RegistryEntry is what the registry knows about one SPIFFE ID. The entry is
// validated like a certificate: trust 0..4, native scope syntax, owner syntax;
// a bad entry is invalid_agent_profile.
type RegistryEntry struct {
	ID         string // agent id; empty means derived from a /agent/<id> path, else the SPIFFE ID itself
	TrustLevel int
	Scopes     []string
	Owner      string
}

// Config configures a Verifier.
type Config struct {
	// Sources is the order in which identity sources are tried; the first
	// present one decides (a present but invalid source is a denial, never a
	// fall-through). Empty means DefaultSources().
	Sources []Source
	// Bundles are the tenants' trust bundles, at most one per trust domain.
	Bundles []Bundle
	// Registry supplies attributes for profile spiffe; nil means every
	// SPIFFE ID is unknown (L0, no scopes).
	Registry Registry
	// CacheSize bounds the verified-identity cache; 0 means DefaultCacheSize.
	CacheSize int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Registerer receives the cache hit/miss counters; nil registers nothing.
	Registerer prometheus.Registerer
}

// Verifier turns what Envoy forwards into a verified Agent. It is safe for
// concurrent use; SetBundles swaps trust bundles atomically.
type Verifier struct {
	sources   []Source
	registry  Registry
	now       func() time.Time
	cacheSize int
	state     atomic.Pointer[trustState]
	hits      prometheus.Counter
	misses    prometheus.Counter
}

// trustState is one generation of trust bundles with its own cache, so that
// a cached identity can never outlive the bundle that verified it: an
// in-flight verification against old bundles lands in the old, discarded
// cache.
type trustState struct {
	bundles []*trustBundle
	byTD    map[string]*trustBundle
	cache   *idCache
}

type trustBundle struct {
	Bundle
	pool *x509.CertPool // the anchors; nil when the bundle has no roots
	// inters are the bundle's certificates issued by another of its
	// certificates: chains run through them up to the anchor (as openssl
	// verify builds them), so that their own revocation is checked.
	inters []*x509.Certificate
}

// NewVerifier checks cfg and builds a Verifier.
func NewVerifier(cfg Config) (*Verifier, error) {
	v := &Verifier{
		sources:   cfg.Sources,
		registry:  cfg.Registry,
		now:       cfg.Now,
		cacheSize: cfg.CacheSize,
		hits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "agentauthz_identity_cache_hits_total",
			Help: "Identity lookups answered from the verified-identity cache.",
		}),
		misses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "agentauthz_identity_cache_misses_total",
			Help: "Identity lookups that had to decode and verify a certificate.",
		}),
	}
	if len(v.sources) == 0 {
		v.sources = DefaultSources()
	}
	seen := map[Source]bool{}
	for _, s := range v.sources {
		if _, err := ParseSource(string(s)); err != nil {
			return nil, err
		}
		if seen[s] {
			return nil, fmt.Errorf("identity source %q listed twice", s)
		}
		seen[s] = true
	}
	v.sources = append([]Source(nil), v.sources...)
	if v.cacheSize < 0 {
		return nil, fmt.Errorf("identity cache size %d is negative", v.cacheSize)
	}
	if v.cacheSize == 0 {
		v.cacheSize = DefaultCacheSize
	}
	if v.now == nil {
		v.now = time.Now
	}
	if err := v.SetBundles(cfg.Bundles); err != nil {
		return nil, err
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{v.hits, v.misses} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("register identity metrics: %w", err)
			}
		}
	}
	return v, nil
}

// SetBundles replaces every trust bundle at once and empties the cache. On
// error nothing changes: the previous bundles stay in force.
func (v *Verifier) SetBundles(bundles []Bundle) error {
	apply, err := v.PrepareBundles(bundles)
	if err != nil {
		return err
	}
	apply()
	return nil
}

// PrepareBundles checks bundles and builds what verifies against them,
// without applying it: apply swaps them in (emptying the cache) and cannot
// fail. A trust reload prepares everything that depends on the bundles
// before it applies any of it, so a refusal leaves all of it unchanged.
func (v *Verifier) PrepareBundles(bundles []Bundle) (apply func(), err error) {
	st := &trustState{byTD: make(map[string]*trustBundle, len(bundles)), cache: newIDCache(v.cacheSize)}
	for _, b := range bundles {
		nb, err := NewBundle(b.TrustDomain, b.Profile, b.Roots)
		if err != nil {
			return nil, err
		}
		if st.byTD[nb.TrustDomain] != nil {
			return nil, fmt.Errorf("trust domain %s has two trust bundles", nb.TrustDomain)
		}
		tb := &trustBundle{Bundle: nb}
		if len(nb.Roots) > 0 {
			tb.pool = x509.NewCertPool()
			for _, r := range nb.Roots {
				if issuedInBundle(r, nb.Roots) {
					tb.inters = append(tb.inters, r)
				} else {
					tb.pool.AddCert(r)
				}
			}
		}
		st.bundles = append(st.bundles, tb)
		st.byTD[nb.TrustDomain] = tb
	}
	return func() { v.state.Store(st) }, nil
}

// TrustDomains lists the trust domains currently trusted, in configuration
// order (for readiness and diagnostics).
func (v *Verifier) TrustDomains() []string {
	st := v.state.Load()
	out := make([]string, len(st.bundles))
	for i, b := range st.bundles {
		out[i] = b.TrustDomain
	}
	return out
}

// Identify verifies the identity in attrs. Sources are tried in the
// configured order; the first one present decides. It returns either an
// Agent or an Error with a stable reason code, never both. Revocation is not
// checked here.
func (v *Verifier) Identify(attrs *authv3.AttributeContext) (*Agent, *Error) {
	now := v.now()
	st := v.state.Load()
	var x xfccLookup
	for _, src := range v.sources {
		switch src {
		case SourcePeerCertificate:
			if c := attrs.GetSource().GetCertificate(); c != "" {
				return v.identifyCert(st, now, src, c, "")
			}
		case SourceXFCC:
			if err := x.load(attrs); err != nil {
				return nil, &Error{Reason: reason.MalformedXFCC, Err: err}
			}
			if x.ok && x.el.Cert != "" {
				return v.identifyCert(st, now, src, x.el.Cert, x.el.Chain)
			}
		case SourceSPIFFEID:
			id := attrs.GetSource().GetPrincipal()
			if !strings.HasPrefix(id, "spiffe://") {
				// Envoy puts the subject DN in principal when the peer
				// certificate has no URI SAN: that is not a SPIFFE ID.
				id = ""
				if err := x.load(attrs); err != nil {
					return nil, &Error{Reason: reason.MalformedXFCC, Err: err}
				}
				if x.ok {
					switch len(x.el.URI) {
					case 0:
					case 1:
						id = x.el.URI[0]
					default:
						return nil, &Error{Reason: reason.InvalidAgentProfile,
							Err: invalid("XFCC element has %d URI= values, want one SPIFFE ID", len(x.el.URI))}
					}
				}
			}
			if id != "" {
				return v.identifySPIFFEID(st, id)
			}
		}
	}
	return nil, &Error{Reason: reason.NoClientCertificate, Err: errors.New("no client identity in any configured source")}
}

// xfccLookup parses the header at most once per Identify call.
type xfccLookup struct {
	done bool
	ok   bool
	el   XFCCElement
	err  error
}

func (x *xfccLookup) load(attrs *authv3.AttributeContext) error {
	if !x.done {
		x.done = true
		x.el, x.ok, x.err = lastXFCCElement(xfccHeader(attrs))
	}
	return x.err
}

// xfccHeader finds the header in the headers map, or in header_map when
// Envoy sends raw headers; repeated raw headers are joined with ',' as Envoy
// joins them in the map, so the last element stays last.
func xfccHeader(attrs *authv3.AttributeContext) string {
	h := attrs.GetRequest().GetHttp()
	if v, ok := h.GetHeaders()[xfccHeaderName]; ok {
		return v
	}
	var out string
	for _, hv := range h.GetHeaderMap().GetHeaders() {
		if !strings.EqualFold(hv.GetKey(), xfccHeaderName) {
			continue
		}
		val := hv.GetValue()
		if len(hv.GetRawValue()) > 0 {
			val = string(hv.GetRawValue())
		}
		if out != "" {
			out += ","
		}
		out += val
		if len(out) > MaxXFCCBytes {
			break // ParseXFCC rejects it; stop copying
		}
	}
	return out
}

func (v *Verifier) identifyCert(st *trustState, now time.Time, src Source, certStr, chainStr string) (*Agent, *Error) {
	if len(certStr) > MaxCertificateBytes {
		// decodeCerts would refuse it, so it cannot be cached: refuse it
		// before hashing it. (Chain= comes only from XFCC, which is bounded
		// by MaxXFCCBytes.)
		return nil, &Error{Reason: reason.MalformedClientCertificate,
			Err: fmt.Errorf("%w: %d bytes, limit %d", ErrMalformedCertificate, len(certStr), MaxCertificateBytes)}
	}
	key := newCacheKey(src, certStr, chainStr)
	if e, ok := st.cache.get(key, now); ok {
		v.hits.Inc()
		if e.agent.Profile == ProfileSPIFFE {
			return v.withRegistry(e.agent)
		}
		return e.agent, nil
	}
	v.misses.Inc()
	certs, err := decodeCerts(certStr, 1)
	if err != nil {
		return nil, &Error{Reason: reason.MalformedClientCertificate, Err: err}
	}
	leaf := certs[0]
	sum := sha256.Sum256(leaf.Raw)
	fail := func(code reason.Code, err error) (*Agent, *Error) {
		return nil, &Error{Reason: code, CertSHA256: hex.EncodeToString(sum[:]),
			Issuer: leaf.Issuer.String(), Subject: leaf.Subject.String(), Err: err}
	}
	var inters []*x509.Certificate
	if chainStr != "" {
		chain, err := decodeCerts(chainStr, MaxChainCerts)
		if err != nil {
			return fail(reason.MalformedClientCertificate, fmt.Errorf("chain: %w", err))
		}
		for _, c := range chain {
			if !c.Equal(leaf) {
				inters = append(inters, c)
			}
		}
	}
	b, chain, code, err := verifyChain(st, leaf, inters, now)
	if err != nil {
		return fail(code, err)
	}
	var agent *Agent
	switch b.Profile {
	case ProfileAgentPass:
		agent, err = ParseAgentPass(leaf, b.TrustDomain)
	case ProfileSPIFFE:
		agent, err = parseSPIFFECert(leaf, b.TrustDomain)
		if err == nil {
			agent.ID = defaultAgentID(agent.SPIFFEID)
		}
	default:
		agent, err = ParseNative(leaf, b.TrustDomain)
	}
	if err != nil {
		return fail(reason.InvalidAgentProfile, err)
	}
	agent.Source = src
	agent.Chain = chainBelowAnchor(chain)
	// The entry lives only while every certificate of the verified chain is
	// valid.
	e := cacheEntry{agent: agent, notBefore: leaf.NotBefore, notAfter: leaf.NotAfter}
	for _, c := range chain {
		if c.NotAfter.Before(e.notAfter) {
			e.notAfter = c.NotAfter
		}
		if c.NotBefore.After(e.notBefore) {
			e.notBefore = c.NotBefore
		}
	}
	st.cache.put(key, e)
	if agent.Profile == ProfileSPIFFE {
		return v.withRegistry(agent)
	}
	return agent, nil
}

// verifyChain finds the bundle that verifies leaf. A leaf with a SPIFFE URI
// SAN is verified only by the bundle of that trust domain, so a tenant's CA
// cannot speak for another tenant; a leaf without one (AgentPass) is tried
// against every bundle in order. Trust is established before the validity
// window is judged, so that an expired certificate from an unknown CA is
// untrusted_issuer, not certificate_expired; for the same reason a CA
// certificate of the bundle outside its window is reported only once the
// chain is shown to be signed up to the bundle (see staleCA). inters are the
// forwarded intermediates.
func verifyChain(st *trustState, leaf *x509.Certificate, inters []*x509.Certificate, now time.Time) (*trustBundle, []*x509.Certificate, reason.Code, error) {
	cands := candidates(st, leaf)
	if len(cands) == 0 {
		return nil, nil, reason.UntrustedIssuer, errors.New("no trust bundle for the certificate's trust domain")
	}
	vt := now
	var timeCode reason.Code
	var timeErr error
	switch {
	case now.Before(leaf.NotBefore):
		timeCode, vt = reason.CertificateNotYetValid, leaf.NotBefore
		timeErr = fmt.Errorf("certificate is not valid before %s", leaf.NotBefore.UTC().Format(time.RFC3339))
	case now.After(leaf.NotAfter):
		timeCode, vt = reason.CertificateExpired, leaf.NotAfter
		timeErr = fmt.Errorf("certificate expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	opts := x509.VerifyOptions{
		CurrentTime: vt,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	var profileErr, caErr, lastErr error
	var caCode reason.Code
	for _, b := range cands {
		if b.pool == nil {
			continue
		}
		opts.Roots = b.pool
		opts.Intermediates = nil
		if len(inters)+len(b.inters) > 0 {
			opts.Intermediates = x509.NewCertPool()
			for _, c := range slices.Concat(inters, b.inters) {
				opts.Intermediates.AddCert(c)
			}
		}
		chains, err := leaf.Verify(opts)
		if err == nil {
			if timeErr != nil {
				return b, nil, timeCode, timeErr
			}
			return b, chains[0], "", nil
		}
		if trustedButUnusable(leaf, opts, err) {
			profileErr = fmt.Errorf("%w: trusted by %s but: %w", ErrInvalidProfile, b.TrustDomain, err)
			continue
		}
		if caErr == nil {
			caCode, caErr = staleCA(b, leaf, inters, opts)
		}
		lastErr = err
	}
	// Every branch below is a denial; they only choose its reason. A
	// validity problem, the leaf's first, outranks a profile problem.
	switch {
	case timeErr != nil && (caErr != nil || profileErr != nil):
		return nil, nil, timeCode, timeErr
	case caErr != nil:
		return nil, nil, caCode, caErr
	case profileErr != nil:
		return nil, nil, reason.InvalidAgentProfile, profileErr
	}
	if lastErr == nil {
		lastErr = errors.New("no CA certificates for the certificate's trust domain")
	}
	return nil, nil, reason.UntrustedIssuer, lastErr
}

// issuedInBundle reports whether another certificate of bundle issued c
// (names chain and its signature verifies): c is then an intermediate, not
// a trust anchor. A self-signed certificate is always an anchor (a bundle
// may hold a root and the same key cross-signed by an older root).
func issuedInBundle(c *x509.Certificate, bundle []*x509.Certificate) bool {
	if bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil {
		return false
	}
	for _, p := range bundle {
		if p != c && !p.Equal(c) && bytes.Equal(p.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(p) == nil {
			return true
		}
	}
	return false
}

// chainBelowAnchor returns what revocation checks of a verified chain
// (leaf first, anchor last): every certificate but the anchor, each with
// the certificate that issued it.
func chainBelowAnchor(chain []*x509.Certificate) []ChainCert {
	if len(chain) < 2 {
		return nil
	}
	out := make([]ChainCert, len(chain)-1)
	for i, c := range chain[:len(chain)-1] {
		out[i] = ChainCert{
			Serial:                c.SerialNumber.Text(16),
			Issuer:                chain[i+1],
			IssuerKey:             CAKeyOf(chain[i+1]),
			IsCA:                  c.IsCA,
			CRLDistributionPoints: c.CRLDistributionPoints,
		}
	}
	return out
}

// trustedButUnusable reports whether err says the chain is trusted but the
// leaf may not be used as an agent certificate: a wrong extended key usage,
// or an unknown critical extension (checked again without it, so an unknown
// CA still reads as untrusted).
func trustedButUnusable(leaf *x509.Certificate, opts x509.VerifyOptions, err error) bool {
	var cie x509.CertificateInvalidError
	if errors.As(err, &cie) && cie.Reason == x509.IncompatibleUsage {
		return true
	}
	var uce x509.UnhandledCriticalExtension
	if errors.As(err, &uce) {
		c := *leaf
		c.UnhandledCriticalExtensions = nil
		_, err2 := c.Verify(opts)
		return err2 == nil || (errors.As(err2, &cie) && cie.Reason == x509.IncompatibleUsage)
	}
	return false
}

// staleCA explains a failure to verify leaf against b that is due only to CA
// certificates of b outside their validity window at opts.CurrentTime. Go's
// chain builder skips such a CA and reports an unknown authority, which would
// read as untrusted_issuer and send an auditor after the wrong problem. It
// returns certificate_expired or certificate_not_yet_valid naming the CA
// nearest the leaf, or a nil error when that is not the explanation.
//
// It runs on the failure path only, and verifies a second time only when the
// leaf's issuer name leads (directly or through the forwarded intermediates)
// to an out-of-window certificate of b, so a leaf from an unrelated CA costs a
// scan of b, not a second verification. The second verification widens those
// certificates' windows to include the verification time and checks neither
// extended key usages nor the leaf's critical extensions (profile problems,
// which rank below validity), so it succeeds only if the signatures hold from
// the leaf up to a certificate of b. Its chain is never used to accept
// anything: the caller denies either way.
func staleCA(b *trustBundle, leaf *x509.Certificate, inters []*x509.Certificate, opts x509.VerifyOptions) (reason.Code, error) {
	t := opts.CurrentTime
	if !slices.ContainsFunc(b.Roots, func(c *x509.Certificate) bool { return !validAt(c, t) }) {
		return "", nil // the common case: nothing in b is out of its window
	}
	issuers := issuersInBundle(leaf, inters, b.Roots)
	var stale []*x509.Certificate
	for _, c := range issuers {
		if !validAt(c, t) {
			stale = append(stale, c)
		}
	}
	if len(stale) == 0 {
		return "", nil
	}
	roots := x509.NewCertPool()
	for _, c := range issuers {
		if validAt(c, t) {
			roots.AddCert(c)
			continue
		}
		widened := *c
		widened.NotBefore = minTime(widened.NotBefore, t)
		widened.NotAfter = maxTime(widened.NotAfter, t)
		roots.AddCert(&widened)
	}
	l := *leaf
	l.UnhandledCriticalExtensions = nil
	opts.Roots = roots
	opts.KeyUsages = []x509.ExtKeyUsage{x509.ExtKeyUsageAny}
	chains, err := l.Verify(opts)
	if err != nil {
		return "", nil
	}
	for _, c := range chains[0][1:] {
		for _, s := range stale {
			if bytes.Equal(c.Raw, s.Raw) {
				return caValidityError(s, b.TrustDomain, t)
			}
		}
	}
	return "", nil // unreachable: the first verification would have succeeded
}

// issuersInBundle returns the certificates of roots that a chain from leaf
// can run through: those reached from leaf's issuer name by following issuer
// names through inters and roots, which is how Go's chain builder finds
// candidate parents. Each certificate is reached at most once, so the walk
// ends after at most len(inters)+len(roots) rounds.
func issuersInBundle(leaf *x509.Certificate, inters, roots []*x509.Certificate) []*x509.Certificate {
	all := slices.Concat(inters, roots)
	reached := make([]bool, len(all))
	names := [][]byte{leaf.RawIssuer}
	var out []*x509.Certificate
	for len(names) > 0 {
		var next [][]byte
		for i, c := range all {
			if reached[i] || !slices.ContainsFunc(names, func(n []byte) bool { return bytes.Equal(n, c.RawSubject) }) {
				continue
			}
			reached[i] = true
			next = append(next, c.RawIssuer)
			if i >= len(inters) {
				out = append(out, c)
			}
		}
		names = next
	}
	return out
}

// caValidityError names a CA certificate of the trust bundle of td that is
// outside its validity window at t.
func caValidityError(c *x509.Certificate, td string, t time.Time) (reason.Code, error) {
	name := c.Subject.CommonName
	if name == "" {
		name = c.Subject.String()
	}
	if t.Before(c.NotBefore) {
		return reason.CertificateNotYetValid, fmt.Errorf("CA certificate %.80q (serial %s) in the trust bundle of %s is not valid before %s",
			name, c.SerialNumber.Text(16), td, c.NotBefore.UTC().Format(time.RFC3339))
	}
	return reason.CertificateExpired, fmt.Errorf("CA certificate %.80q (serial %s) in the trust bundle of %s expired at %s",
		name, c.SerialNumber.Text(16), td, c.NotAfter.UTC().Format(time.RFC3339))
}

// validAt reports whether t is inside c's validity window, bounds included,
// as crypto/x509 judges it.
func validAt(c *x509.Certificate, t time.Time) bool {
	return !t.Before(c.NotBefore) && !t.After(c.NotAfter)
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func candidates(st *trustState, leaf *x509.Certificate) []*trustBundle {
	var out []*trustBundle
	sawSPIFFE := false
	for _, u := range leaf.URIs {
		if u.Scheme != "spiffe" {
			continue
		}
		sawSPIFFE = true
		if b := st.byTD[u.Host]; b != nil && !containsBundle(out, b) {
			out = append(out, b)
		}
	}
	if sawSPIFFE {
		return out
	}
	return st.bundles
}

func containsBundle(l []*trustBundle, b *trustBundle) bool {
	for _, x := range l {
		if x == b {
			return true
		}
	}
	return false
}

// identifySPIFFEID accepts a bare SPIFFE ID (Istio principal or XFCC URI=)
// only for a trust domain whose bundle has profile spiffe: enabling the
// spiffe_id source must not let a bare ID stand in for a native agent's
// certificate.
func (v *Verifier) identifySPIFFEID(st *trustState, id string) (*Agent, *Error) {
	td, _, err := ParseSPIFFEID(id)
	if err != nil {
		return nil, &Error{Reason: reason.InvalidAgentProfile, Subject: truncate(id, 256), Err: err}
	}
	b := st.byTD[td]
	if b == nil || b.Profile != ProfileSPIFFE {
		return nil, &Error{Reason: reason.UntrustedIssuer, Subject: id,
			Err: fmt.Errorf("trust domain %s is not configured with profile spiffe", td)}
	}
	return v.withRegistry(&Agent{ID: defaultAgentID(id), SPIFFEID: id, Tenant: td, Profile: ProfileSPIFFE, Source: SourceSPIFFEID})
}

// withRegistry returns a copy of a SPIFFE-profile agent with the registry's
// attributes. It never mutates tmpl, which may be shared through the cache.
func (v *Verifier) withRegistry(tmpl *Agent) (*Agent, *Error) {
	a := *tmpl
	a.TrustLevel, a.Scopes, a.Owner = 0, nil, ""
	if v.registry == nil {
		return &a, nil
	}
	e, ok := v.registry.LookupAgent(tmpl.SPIFFEID)
	if !ok {
		return &a, nil
	}
	bad := func(format string, args ...any) (*Agent, *Error) {
		return nil, &Error{Reason: reason.InvalidAgentProfile, CertSHA256: a.CertSHA256, Issuer: a.Issuer, Subject: a.SPIFFEID,
			Err: invalid("registry entry for %s: "+format, append([]any{a.SPIFFEID}, args...)...)}
	}
	if e.TrustLevel < 0 || e.TrustLevel > 4 {
		return bad("trust level %d is not 0..4", e.TrustLevel)
	}
	if e.ID != "" {
		if !ValidAgentID(e.ID) {
			return bad("agent id %.70q is not valid", e.ID)
		}
		a.ID = e.ID
	}
	if e.Owner != "" && !ValidOwner(e.Owner) {
		return bad("owner %.140q is not valid", e.Owner)
	}
	if len(e.Scopes) > MaxScopes {
		return bad("more than %d scopes", MaxScopes)
	}
	for _, s := range e.Scopes {
		if !ValidScope(s) {
			return bad("scope %.140q is not <resource>:<action>", s)
		}
	}
	a.TrustLevel, a.Owner = e.TrustLevel, e.Owner
	a.Scopes = normScopes(append([]string(nil), e.Scopes...))
	return &a, nil
}

// defaultAgentID is the agent id of a SPIFFE ID with no registry id: the
// last segment of spiffe://<td>/agent/<id>, else the whole SPIFFE ID.
func defaultAgentID(spiffeID string) string {
	if _, path, err := ParseSPIFFEID(spiffeID); err == nil {
		if id, ok := strings.CutPrefix(path, "/agent/"); ok && ValidAgentID(id) {
			return id
		}
	}
	return spiffeID
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
