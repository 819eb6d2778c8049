package revocation

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
)

// Store is the CA inventory as the publisher needs it (ca.Authority
// implements it). Every method may be called from several goroutines.
type Store interface {
	// CurrentCRL returns the tenant's current signed CRL (DER), re-signed
	// when revocation state changed or nextUpdate approaches. An unknown
	// tenant is an error wrapping ca.ErrNotFound.
	CurrentCRL(tenant string) ([]byte, error)
	// RevokedAgents lists agent ids under an agent-level revocation.
	RevokedAgents(tenant string) ([]string, error)
	// RevocationGeneration changes on every committed revocation, by any
	// process; cheap enough to poll every 100 ms.
	RevocationGeneration() (int64, error)
	// PushRestrictions returns the tenant's restrictions in force as a JSON
	// object by agent id (data.agentauthz.restrictions); a change bumps
	// RevocationGeneration too.
	PushRestrictions(tenant string) ([]byte, error)
	// SignPush signs msg (a PushMessage) with the tenant's CA key.
	SignPush(tenant string, msg []byte) ([]byte, error)
}

// Publisher defaults.
const (
	DefaultGenerationPoll  = 100 * time.Millisecond
	DefaultHeartbeat       = 15 * time.Second
	DefaultRefreshInterval = 30 * time.Second
	DefaultInlineCRLLimit  = 1 << 20
	maxPublishedTenants    = 4096
	watchWriteTimeout      = 30 * time.Second
)

// PublisherConfig configures a Publisher.
type PublisherConfig struct {
	Store  Store
	Logger hclog.Logger
	// Registerer receives agentauthz_revocation_publisher_* metrics; nil
	// registers nothing.
	Registerer prometheus.Registerer
	// GenerationPoll is how often RevocationGeneration is read; a
	// revocation reaches watchers within about this long.
	GenerationPoll time.Duration
	// Heartbeat is the interval of ": ping" comments on watch streams, so
	// replicas can tell a silent stream from a dead one.
	Heartbeat time.Duration
	// RefreshInterval re-reads every tenant's CRL even without a new
	// generation, to pick up a CRL re-signed before its nextUpdate.
	RefreshInterval time.Duration
	// InlineCRLLimit is the largest CRL sent inside a watch event; larger
	// ones are announced by ETag and fetched from the CRL endpoint, so a
	// million-entry CRL is not copied into every event.
	// DefaultInlineCRLLimit when zero.
	InlineCRLLimit int
	// NotFound is the store's "unknown tenant" sentinel (ca.ErrNotFound);
	// such requests get 404 instead of 503.
	NotFound error
}

// Publisher serves each tenant's current CRL and a watch stream of
// revocation changes (see WatchEvent). Tenants are loaded on first request.
type Publisher struct {
	store                          Store
	notFound                       error
	log                            hclog.Logger
	genPoll, heartbeat, refreshInt time.Duration
	inlineLimit                    int
	watchers                       prometheus.Gauge
	events                         prometheus.Counter

	closing chan struct{} // closed when Run returns: watch streams end

	mu      sync.Mutex
	tenants map[string]*pubTenant
}

// pubState is one tenant's published state; replaced (never mutated) on
// change, and changed is closed to wake every watcher.
type pubState struct {
	event   []byte // one complete SSE event
	crl     []byte
	agents  []string
	restr   []byte
	expires time.Time
	etag    string
	modTime time.Time
	changed chan struct{}
}

type pubTenant struct {
	name  string
	state *pubState // guarded by Publisher.mu
}

// NewPublisher returns a Publisher over cfg.Store.
func NewPublisher(cfg PublisherConfig) (*Publisher, error) {
	if cfg.Store == nil {
		return nil, errors.New("revocation: publisher needs a store")
	}
	p := &Publisher{
		store:       cfg.Store,
		notFound:    cfg.NotFound,
		log:         cfg.Logger,
		genPoll:     cfg.GenerationPoll,
		heartbeat:   cfg.Heartbeat,
		refreshInt:  cfg.RefreshInterval,
		inlineLimit: cfg.InlineCRLLimit,
		closing:     make(chan struct{}),
		tenants:     map[string]*pubTenant{},
		watchers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "agentauthz_revocation_publisher_watchers", Help: "Open watch streams."}),
		events: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "agentauthz_revocation_publisher_events_total", Help: "State changes published to watchers."}),
	}
	if p.log == nil {
		p.log = hclog.NewNullLogger()
	}
	if p.genPoll <= 0 {
		p.genPoll = DefaultGenerationPoll
	}
	if p.heartbeat <= 0 {
		p.heartbeat = DefaultHeartbeat
	}
	if p.inlineLimit <= 0 {
		p.inlineLimit = DefaultInlineCRLLimit
	}
	if p.refreshInt <= 0 {
		p.refreshInt = DefaultRefreshInterval
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{p.watchers, p.events} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("revocation: register metrics: %w", err)
			}
		}
	}
	return p, nil
}

// Run polls the store's revocation generation and republishes every known
// tenant when it changes (and every RefreshInterval). It returns when ctx is
// done, ending every watch stream so an http.Server can shut down.
func (p *Publisher) Run(ctx context.Context) error {
	defer close(p.closing)
	last, err := p.store.RevocationGeneration()
	if err != nil {
		p.log.Warn("revocation: read generation", "error", err)
	}
	tick := time.NewTicker(p.genPoll)
	defer tick.Stop()
	lastRefresh := time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		gen, err := p.store.RevocationGeneration()
		if err != nil {
			p.log.Warn("revocation: read generation", "error", err)
			continue
		}
		if gen == last && time.Since(lastRefresh) < p.refreshInt {
			continue
		}
		last, lastRefresh = gen, time.Now()
		p.mu.Lock()
		names := make([]string, 0, len(p.tenants))
		for n := range p.tenants {
			names = append(names, n)
		}
		p.mu.Unlock()
		for _, n := range names {
			if _, err := p.refresh(n); err != nil {
				p.log.Warn("revocation: refresh tenant", "tenant", n, "error", err)
			}
		}
	}
}

// tenantRE is what a trust domain may look like here; it keeps request
// paths from reaching the store with anything unexpected.
var tenantRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,254}$`)

// state returns the tenant's published state, loading it on first use.
func (p *Publisher) state(tenant string) (*pubState, error) {
	p.mu.Lock()
	t := p.tenants[tenant]
	var st *pubState
	if t != nil {
		st = t.state
	}
	p.mu.Unlock()
	if st != nil {
		return st, nil
	}
	return p.refresh(tenant)
}

// refresh reads the tenant from the store and publishes it if it changed.
func (p *Publisher) refresh(tenant string) (*pubState, error) {
	// Generation first: state read after it is at least as new, so a
	// revocation committed in between is seen by the next poll.
	gen, err := p.store.RevocationGeneration()
	if err != nil {
		return nil, err
	}
	crl, err := p.store.CurrentCRL(tenant)
	if err != nil {
		return nil, err
	}
	agents, err := p.store.RevokedAgents(tenant)
	if err != nil {
		return nil, err
	}
	agents = slices.Sorted(slices.Values(agents)) // a copy, in a stable order
	if agents == nil {
		agents = []string{}
	}
	restr, err := p.store.PushRestrictions(tenant)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(crl)
	etag := `"` + hex.EncodeToString(sum[:16]) + `"`
	p.mu.Lock()
	if t := p.tenants[tenant]; t != nil && t.state != nil && bytes.Equal(t.state.crl, crl) && slices.Equal(t.state.agents, agents) &&
		bytes.Equal(t.state.restr, restr) && time.Until(t.state.expires) > PushValidity/2 {
		st := t.state
		p.mu.Unlock()
		return st, nil // unchanged, and its signature is still fresh
	}
	p.mu.Unlock()
	expires := time.Now().Add(PushValidity).Truncate(time.Second)
	ev := WatchEvent{Generation: gen, Tenant: tenant, CRL: crl, RevokedAgents: agents, Restrictions: restr, Expires: expires.Unix()}
	if len(crl) > p.inlineLimit {
		ev.CRL, ev.CRLETag = nil, etag
	}
	if ev.Signature, err = p.store.SignPush(tenant, PushMessage(&ev)); err != nil {
		return nil, fmt.Errorf("sign watch event: %w", err)
	}
	data, err := json.Marshal(ev)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	t := p.tenants[tenant]
	if t == nil {
		if len(p.tenants) >= maxPublishedTenants {
			return nil, errors.New("too many tenants")
		}
		t = &pubTenant{name: tenant}
		p.tenants[tenant] = t
	}
	old := t.state
	if old != nil && old.expires.After(expires) {
		return old, nil // a concurrent refresh published newer state
	}
	var sse bytes.Buffer
	fmt.Fprintf(&sse, "event: revocation\nid: %d\ndata: %s\n\n", gen, data)
	st := &pubState{
		event:   sse.Bytes(),
		crl:     crl,
		agents:  agents,
		restr:   restr,
		expires: expires,
		etag:    etag,
		modTime: time.Now(),
		changed: make(chan struct{}),
	}
	if old != nil && bytes.Equal(old.crl, crl) {
		st.modTime = old.modTime
	} else if old != nil && !st.modTime.Truncate(time.Second).After(old.modTime.Truncate(time.Second)) {
		// Last-Modified has one-second resolution: a client holding only
		// If-Modified-Since must still see a CRL that changed within the
		// same second.
		st.modTime = old.modTime.Truncate(time.Second).Add(time.Second)
	}
	t.state = st
	if old != nil {
		close(old.changed)
		p.events.Inc()
	}
	return st, nil
}

// Handler serves GET /v1/crl/<tenant>, GET /v1/watch?tenant=<tenant> and
// GET /healthz.
func (p *Publisher) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+CRLPath+"{tenant}", p.serveCRL)
	mux.HandleFunc("GET "+WatchPath, p.serveWatch)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	return mux
}

func (p *Publisher) lookup(w http.ResponseWriter, tenant string) *pubState {
	if !tenantRE.MatchString(tenant) {
		http.Error(w, "bad tenant", http.StatusBadRequest)
		return nil
	}
	st, err := p.state(tenant)
	if err != nil {
		if p.notFound != nil && errors.Is(err, p.notFound) {
			http.Error(w, "unknown tenant", http.StatusNotFound)
			return nil
		}
		p.log.Error("revocation: load tenant", "tenant", tenant, "error", err)
		http.Error(w, "revocation data unavailable", http.StatusServiceUnavailable)
		return nil
	}
	return st
}

func (p *Publisher) serveCRL(w http.ResponseWriter, r *http.Request) {
	st := p.lookup(w, r.PathValue("tenant"))
	if st == nil {
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/pkix-crl")
	h.Set("ETag", st.etag)
	h.Set("Cache-Control", "no-cache")
	// ServeContent answers If-None-Match / If-Modified-Since with 304.
	http.ServeContent(w, r, "", st.modTime, bytes.NewReader(st.crl))
}

func (p *Publisher) serveWatch(w http.ResponseWriter, r *http.Request) {
	st := p.lookup(w, r.URL.Query().Get("tenant"))
	if st == nil {
		return
	}
	tenant := r.URL.Query().Get("tenant")
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	p.watchers.Inc()
	defer p.watchers.Dec()
	// A watcher that stops reading must not pin this goroutine forever.
	write := func(b []byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(watchWriteTimeout))
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	beat := time.NewTicker(p.heartbeat)
	defer beat.Stop()
	for {
		// Slow watchers skip straight to the latest state: each event is
		// the full state, so nothing is lost.
		if !write(st.event) {
			return
		}
	wait:
		for {
			select {
			case <-r.Context().Done():
				return
			case <-p.closing:
				return
			case <-beat.C:
				if !write([]byte(": ping\n\n")) {
					return
				}
			case <-st.changed:
				p.mu.Lock()
				st = p.tenants[tenant].state
				p.mu.Unlock()
				break wait
			}
		}
	}
}
