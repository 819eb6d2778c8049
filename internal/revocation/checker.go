package revocation

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentauthz/agentauthz/internal/reason"
)

// Defaults applied to zero values.
const (
	DefaultPollInterval = 30 * time.Second
	DefaultGrace        = time.Hour
)

// Config configures a Checker. Tenants maps a trust domain to its sources; a
// trust domain absent from the map (or with no sources) needs no revocation
// data and is never denied on revocation grounds.
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
	metrics  *metrics
	onRestr  func(string, json.RawMessage)
	// idleTimeout drops a watch stream that sent nothing (not even a
	// heartbeat) for this long; a field so tests can shorten it.
	idleTimeout time.Duration

	snap    atomic.Pointer[snapshot]
	running atomic.Bool

	mu      sync.Mutex // guards tenants and serialises snapshot rebuilds
	tenants map[string]*tenantState
	order   []string // sorted tenant names, for deterministic loops
}

// snapshot is immutable once published.
type snapshot struct {
	tenants map[string]*tenantSnap
}

type tenantSnap struct {
	// ready is false until every configured source delivered a verified
	// CRL once; Check then fails closed.
	ready bool
	// staleAfter is the earliest nextUpdate+grace over the held CRLs. A
	// time.Time, not Unix nanoseconds: a CA's final CRL has nextUpdate
	// 9999-12-31, past what int64 nanoseconds can hold (2262).
	staleAfter time.Time
	// serials has one set per CA that published a CRL: usually one, two
	// during a CA rotation, so lookups stay O(1).
	serials []*SerialSet
	agents  map[string]struct{}
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
		if !tc.hasSources() {
			continue
		}
		if tc.PollInterval <= 0 {
			tc.PollInterval = DefaultPollInterval
		}
		if tc.Grace <= 0 {
			tc.Grace = DefaultGrace
		}
		c.tenants[name] = newTenantState(name, tc)
		c.order = append(c.order, name)
	}
	sort.Strings(c.order)
	c.metrics = newMetrics(c)
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(c.metrics); err != nil {
			return nil, fmt.Errorf("revocation: register metrics: %w", err)
		}
	}
	c.mu.Lock()
	c.publishLocked()
	c.mu.Unlock()
	return c, nil
}

func (cfg Config) validate() error {
	var errs []error
	for name, tc := range cfg.Tenants {
		if name == "" {
			errs = append(errs, errors.New("revocation: empty tenant name"))
		}
		if !tc.hasSources() {
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

// Check answers whether the certificate with serial (lowercase hex without
// leading zeros, as identity.Agent.Serial) held by agentID in tenant may be
// used: "" when it may, or reason.CertificateRevoked, reason.AgentRevoked or
// reason.RevocationStatusUnknown. A tenant with no configured sources needs no
// revocation data and always answers "". Check must run on every request,
// after any identity cache, so that no cached identity outlives its
// revocation. It does not allocate.
func (c *Checker) Check(tenant, serial, agentID string) reason.Code {
	t, ok := c.snap.Load().tenants[tenant]
	if !ok {
		return ""
	}
	// What is known to be revoked is reported as such even when the rest of
	// the data is stale.
	if serial != "" {
		for _, set := range t.serials {
			if set.Contains(serial) {
				return reason.CertificateRevoked
			}
		}
	}
	if agentID != "" {
		if _, revoked := t.agents[agentID]; revoked {
			return reason.AgentRevoked
		}
	}
	if !t.ready || c.now().After(t.staleAfter) {
		return reason.RevocationStatusUnknown
	}
	return ""
}

// Ready reports whether every configured source of every tenant has loaded
// verified data at least once. /readyz should stay false until it does.
func (c *Checker) Ready() bool {
	for _, t := range c.snap.Load().tenants {
		if !t.ready {
			return false
		}
	}
	return true
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
