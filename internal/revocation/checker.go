package revocation

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentauthz/agentauthz/internal/identity"
	"github.com/agentauthz/agentauthz/internal/reason"
)

// Defaults applied to zero values.
const (
	DefaultPollInterval = 30 * time.Second
	DefaultGrace        = time.Hour
)

// Config configures a Checker. Tenants maps a trust domain to its sources.
// Every tenant must list a source or opt out explicitly (Disabled); a trust
// domain absent from the map is not checked (it has no trust bundle).
type Config struct {
	Tenants map[string]TenantConfig
	// Logger receives refusals, source errors and push-channel state
	// changes. Defaults to a null logger.
	Logger hclog.Logger
	// Registerer receives the agentauthz_revocation_* metrics; nil
	// registers nothing.
	Registerer prometheus.Registerer
	// Now is the clock; defaults to time.Now.
	Now func() time.Time
	// HTTPClient fetches CRL URLs and holds the watch stream open. It must
	// not have an overall Timeout (the watch is long-lived); defaults to a
	// client with connect and header timeouts only.
	HTTPClient *http.Client
	// MaxCRLBytes bounds one CRL; DefaultMaxCRLBytes when zero.
	MaxCRLBytes int64
	// StateDir keeps each tenant's CRL high-water marks (see hwm.go) so a
	// restart does not accept an older CRL; usually <data dir>/revocation.
	// Empty keeps them in memory only.
	StateDir string
	// OnRestrictions receives each tenant's restrictions (a JSON object by
	// agent id) from every verified, applied watch event; nil ignores them.
	// It is called from the watch goroutine and must not block for long.
	OnRestrictions func(tenant string, restrictions json.RawMessage)
}

// TenantConfig lists one tenant's revocation sources.
type TenantConfig struct {
	// CAs verify every CRL of this tenant; a CRL signed by anything else is
	// refused. Usually the tenant's trust bundle.
	CAs []*x509.Certificate
	// CRLFiles are local CRL files (DER or PEM), watched for changes and
	// re-read every PollInterval.
	CRLFiles []string
	// CRLURLs are polled every PollInterval with If-None-Match and
	// If-Modified-Since.
	CRLURLs []string
	// WatchURL is the `agentauthz ca serve` watch endpoint, e.g.
	// http://127.0.0.1:9193/v1/watch?tenant=example.test (the tenant
	// parameter is added when missing). While the stream is down the
	// tenant's CRL on the same server (/v1/crl/<tenant>) is polled instead.
	WatchURL string
	// PollInterval is the re-read / poll period; DefaultPollInterval when
	// zero.
	PollInterval time.Duration
	// Grace is how long past a CRL's nextUpdate its data is still used;
	// DefaultGrace when zero.
	Grace time.Duration
	// Disabled turns revocation checking off for the tenant: its revoked
	// certificates are accepted. It must be said explicitly, with no
	// source listed; New logs it, and Status and the
	// agentauthz_revocation_disabled metric show it.
	Disabled bool
}

func (t TenantConfig) hasSources() bool {
	return len(t.CRLFiles) > 0 || len(t.CRLURLs) > 0 || t.WatchURL != ""
}

// Checker answers revocation questions on the decision path.
type Checker struct {
	now      func() time.Time
	log      hclog.Logger
	client   *http.Client
	maxBytes int64
	stateDir string
	metrics  *metrics
	onRestr  func(string, json.RawMessage)
	// idleTimeout drops a watch stream that sent nothing (not even a
	// heartbeat) for this long; a field so tests can shorten it.
	idleTimeout time.Duration

	snap    atomic.Pointer[snapshot]
	running atomic.Bool

	mu       sync.Mutex // guards tenants and serialises snapshot rebuilds
	tenants  map[string]*tenantState
	order    []string // sorted tenant names, for deterministic loops
	disabled []string // sorted tenants with revocation off (opt-out)
}

// snapshot is immutable once published.
type snapshot struct {
	tenants map[string]*tenantSnap
}

type tenantSnap struct {
	// ready is false until every configured source delivered a CRL once;
	// Check then fails closed.
	ready bool
	// staleAfter is the earliest nextUpdate+grace over the held CRLs. A
	// time.Time, not Unix nanoseconds: a CA's final CRL has nextUpdate
	// 9999-12-31, past what int64 nanoseconds can hold (2262).
	staleAfter time.Time
	// issuers holds the CRLs of each CA, keyed by the CA (RFC 5280 scopes
	// a CRL entry to its issuer): usually one complete CRL per CA, more
	// when an issuingDistributionPoint partitions them. A lookup is one
	// map access per certificate of the chain, whatever the number of
	// CAs and revoked serials.
	issuers map[identity.CAKey][]*scopedCRL
	// pending holds the issuer names (DER) of CRLs held unverified (see
	// sourceState.pending); nil when there are none.
	pending map[string]struct{}
	tried   map[identity.CAKey]bool // CAs learn tried already
	agents  map[string]struct{}
}

// scopedCRL is one held CRL as Check needs it.
type scopedCRL struct {
	serials    *SerialSet
	scope      Scope
	staleAfter time.Time // nextUpdate + grace
}

// New validates cfg and returns a Checker whose configured tenants answer
// revocation_status_unknown until Run has loaded their sources.
func New(cfg Config) (*Checker, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	c := &Checker{
		now:      cfg.Now,
		log:      cfg.Logger,
		client:   cfg.HTTPClient,
		maxBytes: cfg.MaxCRLBytes,
		stateDir: cfg.StateDir,
		onRestr:  cfg.OnRestrictions,
		tenants:  map[string]*tenantState{},

		idleTimeout: watchIdleTimeout,
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.log == nil {
		c.log = hclog.NewNullLogger()
	}
	if c.client == nil {
		c.client = defaultHTTPClient()
	}
	if c.maxBytes <= 0 {
		c.maxBytes = DefaultMaxCRLBytes
	}
	for name, tc := range cfg.Tenants {
		if tc.Disabled {
			c.disabled = append(c.disabled, name)
			continue
		}
		if tc.PollInterval <= 0 {
			tc.PollInterval = DefaultPollInterval
		}
		if tc.Grace <= 0 {
			tc.Grace = DefaultGrace
		}
		t := newTenantState(name, tc)
		if err := c.loadFloors(t); err != nil {
			return nil, err
		}
		c.tenants[name] = t
		c.order = append(c.order, name)
	}
	sort.Strings(c.order)
	sort.Strings(c.disabled)
	for _, name := range c.disabled {
		c.log.Warn("revocation: checking is OFF for this tenant (revocation.disabled); its revoked certificates are accepted",
			"tenant", name)
	}
	c.metrics = newMetrics(c)
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(c.metrics); err != nil {
			return nil, fmt.Errorf("revocation: register metrics: %w", err)
		}
	}
	c.mu.Lock()
	c.publishLocked()
	c.mu.Unlock()
	for _, name := range c.order {
		c.restorePush(name)
	}
	return c, nil
}

func (cfg Config) validate() error {
	var errs []error
	for name, tc := range cfg.Tenants {
		if !identity.ValidTrustDomain(name) {
			errs = append(errs, fmt.Errorf("revocation: tenant %q is not a valid trust domain", name))
		}
		if tc.Disabled {
			if tc.hasSources() {
				errs = append(errs, fmt.Errorf("revocation: tenant %q: revocation is disabled but sources are listed; remove one or the other", name))
			}
			continue
		}
		if !tc.hasSources() {
			errs = append(errs, &NoSourceError{Tenant: name})
			continue
		}
		if len(tc.CAs) == 0 {
			errs = append(errs, fmt.Errorf("revocation: tenant %q: sources configured but no CA certificate to verify CRLs", name))
		}
		for i, ca := range tc.CAs {
			if ca == nil {
				errs = append(errs, fmt.Errorf("revocation: tenant %q: CA %d is nil", name, i))
			}
		}
		for _, u := range tc.CRLURLs {
			if err := checkHTTPURL(u); err != nil {
				errs = append(errs, fmt.Errorf("revocation: tenant %q: crl url: %w", name, err))
			}
		}
		if tc.WatchURL != "" {
			if err := checkHTTPURL(tc.WatchURL); err != nil {
				errs = append(errs, fmt.Errorf("revocation: tenant %q: watch url: %w", name, err))
			}
		}
		for _, f := range tc.CRLFiles {
			if f == "" {
				errs = append(errs, fmt.Errorf("revocation: tenant %q: empty crl file path", name))
			}
		}
		if tc.PollInterval < 0 || tc.Grace < 0 {
			errs = append(errs, fmt.Errorf("revocation: tenant %q: negative poll interval or grace", name))
		}
	}
	if cfg.MaxCRLBytes < 0 {
		errs = append(errs, errors.New("revocation: negative max crl bytes"))
	}
	return errors.Join(errs...)
}

// NoSourceError is a tenant configured with no revocation source and no
// opt-out.
type NoSourceError struct{ Tenant string }

func (e *NoSourceError) Error() string {
	return fmt.Sprintf("revocation: tenant %q has no revocation source: list crl_files, crl_urls or watch_url, or set revocation.disabled to accept its revoked certificates", e.Tenant)
}

func checkHTTPURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q: want an http or https url", s)
	}
	return nil
}

// Check answers whether the agent agentID of tenant, whose certificate has
// the verified chain (identity.Agent.Chain: leaf first, trust anchor
// excluded), may be used: "" when it may, or reason.CertificateRevoked,
// reason.AgentRevoked or reason.RevocationStatusUnknown. As `openssl verify
// -crl_check_all` does, every certificate of the chain is checked against
// the CRLs of the CA that issued it, and one without a fresh CRL of its
// issuer covering it is revocation_status_unknown. A tenant with no
// configured sources needs no revocation data and always answers "". Check
// must run on every request, after any identity cache, so that no cached
// identity outlives its revocation. It does not allocate.
func (c *Checker) Check(tenant string, chain []identity.ChainCert, agentID string) reason.Code {
	t, ok := c.snap.Load().tenants[tenant]
	if !ok {
		return ""
	}
	// What is known to be revoked is reported as such even when the rest of
	// the data is stale, and before the clock is read (time.Now is a good
	// part of a Check's cost). The CRLs found are kept on the stack for the
	// second pass (chains are short; a longer one looks them up again).
	var found [4][]*scopedCRL
	for i := range chain {
		crls := c.crlsFor(t, tenant, &chain[i])
		if i < len(found) {
			found[i] = crls
		}
		for _, crl := range crls {
			if crl.scope.covers(&chain[i]) && crl.serials.Contains(chain[i].Serial) {
				return reason.CertificateRevoked
			}
		}
	}
	if agentID != "" {
		if _, revoked := t.agents[agentID]; revoked {
			return reason.AgentRevoked
		}
	}
	if !t.ready {
		return reason.RevocationStatusUnknown
	}
	now := c.now()
	if len(chain) == 0 && now.After(t.staleAfter) {
		return reason.RevocationStatusUnknown
	}
	for i := range chain {
		var crls []*scopedCRL
		if i < len(found) {
			crls = found[i]
		} else {
			crls = c.crlsFor(t, tenant, &chain[i])
		}
		covered := false
		for _, crl := range crls {
			if crl.scope.covers(&chain[i]) && !now.After(crl.staleAfter) {
				covered = true
				break
			}
		}
		if !covered {
			return reason.RevocationStatusUnknown
		}
	}
	return ""
}

// crlsFor returns the CRLs of the CA that issued cc. A CA outside the
// tenant's configuration whose name a pending CRL carries is tried once
// (learn, the slow path).
func (c *Checker) crlsFor(t *tenantSnap, tenant string, cc *identity.ChainCert) []*scopedCRL {
	crls, ok := t.issuers[cc.IssuerKey]
	if !ok && t.pending != nil && cc.Issuer != nil && !t.tried[cc.IssuerKey] {
		if _, ok := t.pending[string(cc.Issuer.RawSubject)]; ok {
			crls = c.learn(tenant, cc.Issuer)
		}
	}
	return crls
}

// Ready reports whether the Checker can serve (for /readyz): every source
// of every tenant has been tried at least once, and at least one tenant
// holds verified data (or there is no tenant to check). A tenant whose
// data could not be loaded, a bad CRL say, does not hold the others back:
// its checks answer revocation_status_unknown, and the log, Status and
// agentauthz_revocation_sources_ready{tenant} say so.
func (c *Checker) Ready() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	anyReady := len(c.order) == 0
	for _, name := range c.order {
		t := c.tenants[name]
		for _, s := range t.sources {
			if !s.tried {
				return false
			}
		}
		anyReady = anyReady || t.snapLocked().ready
	}
	return anyReady
}

// TenantStatus is one tenant's revocation state.
type TenantStatus struct {
	// Ready: every source has delivered verified data once.
	Ready bool
	// Disabled: revocation checking is off by explicit opt-out.
	Disabled bool
	// Detail says why the tenant is not ready (the last error of each
	// source that has one), or that it is disabled.
	Detail string
}

// Status returns every configured tenant's state, by trust domain.
func (c *Checker) Status() map[string]TenantStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]TenantStatus, len(c.order)+len(c.disabled))
	for _, name := range c.disabled {
		out[name] = TenantStatus{Disabled: true, Detail: "revocation checking disabled (opt-out): revoked certificates are accepted"}
	}
	for _, name := range c.order {
		t := c.tenants[name]
		st := TenantStatus{Ready: t.snapLocked().ready}
		if !st.Ready {
			var why []string
			for _, s := range t.sources {
				switch {
				case s.lastErr != "":
					why = append(why, fmt.Sprintf("%s %s: %s", s.kind, s.where, s.lastErr))
				case !s.tried:
					why = append(why, fmt.Sprintf("%s %s: not loaded yet", s.kind, s.where))
				}
			}
			if len(why) == 0 {
				why = append(why, "no verified CRL from a CA of the tenant")
			}
			st.Detail = strings.Join(why, "; ")
		}
		out[name] = st
	}
	return out
}

// publishLocked rebuilds the snapshot from tenant state. Only the outer map
// and changed tenants are rebuilt; serial sets are shared, never copied.
func (c *Checker) publishLocked() {
	s := &snapshot{tenants: make(map[string]*tenantSnap, len(c.tenants))}
	for name, t := range c.tenants {
		s.tenants[name] = t.snapLocked()
	}
	c.snap.Store(s)
}
