package revocation

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"time"
)

// Source kinds, also the "source" metric label.
const (
	kindFile  = "file"
	kindURL   = "url"
	kindWatch = "watch"
)

type sourceState struct {
	kind   string
	where  string // path or URL, for logs only
	loaded bool   // delivered a verified CRL at least once
}

// tenantState is the mutable per-tenant state behind the snapshot; guarded by
// Checker.mu.
type tenantState struct {
	name    string
	cfg     TenantConfig
	sources []*sourceState
	held    []*CRL // newest verified CRL per CA index
	agents  map[string]struct{}

	lastRefresh   time.Time
	pushConnected bool
	fallback      bool // watch channel down, polling its CRL instead
	errs          map[string]uint64
	// Push channel: the generation and expiry of the last applied signed
	// event, when it was applied, and refusals by reason.
	pushGen     int64
	pushExpires time.Time
	pushAt      time.Time
	pushRefused map[string]uint64

	snap *tenantSnap // cached; nil after a change
}

func newTenantState(name string, tc TenantConfig) *tenantState {
	t := &tenantState{name: name, cfg: tc, held: make([]*CRL, len(tc.CAs)), errs: map[string]uint64{}, pushRefused: map[string]uint64{}}
	for _, f := range tc.CRLFiles {
		t.sources = append(t.sources, &sourceState{kind: kindFile, where: f})
	}
	for _, u := range tc.CRLURLs {
		t.sources = append(t.sources, &sourceState{kind: kindURL, where: u})
	}
	if tc.WatchURL != "" {
		t.sources = append(t.sources, &sourceState{kind: kindWatch, where: tc.WatchURL})
	}
	return t
}

func (t *tenantState) snapLocked() *tenantSnap {
	if t.snap != nil {
		return t.snap
	}
	s := &tenantSnap{ready: true, agents: t.agents}
	for _, src := range t.sources {
		if !src.loaded {
			s.ready = false
		}
	}
	first := true
	for _, crl := range t.held {
		if crl == nil {
			continue
		}
		s.serials = append(s.serials, crl.Serials)
		stale := crl.NextUpdate.Add(t.cfg.Grace)
		if first || stale.Before(s.staleAfter) {
			s.staleAfter, first = stale, false
		}
	}
	if first {
		s.ready = false
	}
	t.snap = s
	return s
}

// apply verifies data as the CRLs of tenant delivered by source src (one,
// or several in a PEM file: see ParseCRLs) and, when every one is valid and
// none is older than what is held for its CA, makes them current. A file
// is applied whole or not at all.
func (c *Checker) apply(tenant string, src int, data []byte) error {
	t := c.tenants[tenant]
	c.mu.Lock()
	cas := t.cfg.CAs
	c.mu.Unlock()
	// Parse and verify outside the lock: a large CRL takes a while, and
	// metrics scrapes and other sources should not wait for it.
	crls, err := ParseCRLs(data, cas, c.maxBytes)
	c.mu.Lock()
	defer c.mu.Unlock()
	s := t.sources[src]
	for _, crl := range crls {
		if err != nil {
			break
		}
		// SetCAs may have run meanwhile: find the verifying CA again.
		ca := cas[crl.CA]
		crl.CA = slices.IndexFunc(t.cfg.CAs, func(c *x509.Certificate) bool { return c.Equal(ca) })
		if crl.CA < 0 {
			err = ErrCRLSignature
		}
	}
	if err != nil {
		t.errs[s.kind]++
		c.log.Error("revocation: refused crl", "tenant", tenant, "source", s.kind, "from", s.where, "error", err)
		return err
	}
	for _, crl := range crls {
		if err := crl.newerThan(t.held[crl.CA]); err != nil {
			// The source works and its data verified; it is only behind.
			t.errs[s.kind]++
			c.log.Warn("revocation: refused crl", "tenant", tenant, "source", s.kind, "from", s.where,
				"issuer", caName(t.cfg.CAs[crl.CA]), "error", err)
			if !s.loaded {
				s.loaded = true
				t.snap = nil
				c.publishLocked()
			}
			return err
		}
	}
	t.lastRefresh = c.now()
	changed, entries := false, 0
	for _, crl := range crls {
		entries += crl.Serials.Len()
		if held := t.held[crl.CA]; held != nil && held.Digest == crl.Digest {
			continue
		}
		c.log.Info("revocation: crl applied", "tenant", tenant, "source", s.kind, "from", s.where,
			"issuer", caName(t.cfg.CAs[crl.CA]), "number", crl.Number, "revoked", crl.Serials.Len(),
			"next_update", crl.NextUpdate.UTC().Format(time.RFC3339))
		kept := *crl
		kept.Raw = nil // compared by Digest from now on
		t.held[crl.CA] = &kept
		changed = true
	}
	if !changed && s.loaded {
		return nil
	}
	s.loaded = true
	t.snap = nil
	c.publishLocked()
	if entries >= bigCRL {
		// A large CRL leaves its DER behind as garbage (47 MiB for a
		// million entries, more than twice its SerialSet); without this
		// the heap only shrinks once it has doubled again, which can
		// take hours.
		go debug.FreeOSMemory()
	}
	return nil
}

// bigCRL is the number of entries from which a CRL's parse garbage is
// returned to the operating system right away.
const bigCRL = 100_000

// touch records that src answered "unchanged" (HTTP 304).
func (c *Checker) touch(tenant string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tenants[tenant].lastRefresh = c.now()
}

// sourceFailed counts and logs a failed refresh; the previous data stays.
func (c *Checker) sourceFailed(tenant string, src int, err error) {
	if errors.Is(err, errCanceled) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.tenants[tenant]
	s := t.sources[src]
	t.errs[s.kind]++
	c.log.Warn("revocation: refresh failed; keeping previous data", "tenant", tenant, "source", s.kind, "from", s.where, "error", err)
}

// setAgents replaces the tenant's agent-level revocations (from the push
// channel).
func (c *Checker) setAgents(tenant string, ids []string) {
	m := make(map[string]struct{}, len(ids))
	for _, id := range ids {
		m[id] = struct{}{}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.tenants[tenant]
	if sameSet(t.agents, m) {
		return
	}
	t.agents = m
	t.snap = nil
	c.publishLocked()
}

func sameSet(a, b map[string]struct{}) bool {
	if len(a) != len(b) || (a == nil) != (b == nil) {
		return false
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			return false
		}
	}
	return true
}

// setPush records the push channel's state and logs transitions.
func (c *Checker) setPush(tenant string, connected bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.tenants[tenant]
	if t.pushConnected == connected && t.fallback == !connected {
		return
	}
	t.pushConnected, t.fallback = connected, !connected
	if connected {
		c.log.Info("revocation: push channel connected", "tenant", tenant, "url", t.cfg.WatchURL)
	} else {
		c.log.Warn("revocation: push channel lost; falling back to polling the crl", "tenant", tenant,
			"url", t.cfg.WatchURL, "interval", t.cfg.PollInterval)
	}
}

// SetCAs replaces the CA certificates that verify tenant's CRLs, for a trust
// bundle reload. CRLs held from a CA that is still listed stay in force;
// those of a removed CA are dropped, so if no CRL is left the tenant answers
// revocation_status_unknown until a source delivers one from a listed CA
// (CRL files and URLs within their poll interval; a watch stream on its next
// event or reconnect). A tenant that had no sources cannot gain any here.
func (c *Checker) SetCAs(tenant string, cas []*x509.Certificate) error {
	if len(cas) == 0 || slices.Contains(cas, nil) {
		return fmt.Errorf("revocation: tenant %q: no CA certificate to verify CRLs", tenant)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.tenants[tenant]
	if !ok {
		return nil
	}
	held := make([]*CRL, len(cas))
	for i, ca := range cas {
		for j, old := range t.cfg.CAs {
			if ca.Equal(old) && t.held[j] != nil {
				crl := *t.held[j]
				crl.CA = i
				held[i] = &crl
			}
		}
	}
	t.cfg.CAs = slices.Clone(cas)
	t.held = held
	t.snap = nil
	c.publishLocked()
	return nil
}

// checkPush verifies a watch event before any of it is applied: signed by
// a CA of the tenant, not expired, not older than the last one applied.
func (c *Checker) checkPush(tenant string, ev *WatchEvent) error {
	c.mu.Lock()
	t := c.tenants[tenant]
	cas, last := t.cfg.CAs, t.pushGen
	c.mu.Unlock()
	err := VerifyPush(cas, ev, c.now())
	if err == nil && ev.Generation < last {
		err = &PushError{PushOlder, fmt.Errorf("generation %d is older than %d, applied before", ev.Generation, last)}
	}
	if err != nil {
		var pe *PushError
		reason := PushBadSignature
		if errors.As(err, &pe) {
			reason = pe.Reason
		}
		c.mu.Lock()
		t.pushRefused[reason]++
		c.mu.Unlock()
		c.log.Error("revocation: watch event refused; keeping previous state", "tenant", tenant, "reason", reason, "error", err)
	}
	return err
}

// pushApplied records an applied event and hands its restrictions on.
func (c *Checker) pushApplied(tenant string, ev *WatchEvent) {
	c.mu.Lock()
	t := c.tenants[tenant]
	t.pushGen, t.pushExpires, t.pushAt = ev.Generation, time.Unix(ev.Expires, 0), c.now()
	c.mu.Unlock()
	if c.onRestr != nil {
		r := ev.Restrictions
		if len(r) == 0 {
			r = json.RawMessage("{}")
		}
		c.onRestr(tenant, r)
	}
}

// PushStatus is the state of one tenant's push channel.
type PushStatus struct {
	Tenant    string
	Connected bool
	// Applied is when the last signed event was applied (zero: never);
	// Expires is when its signature stops being fresh.
	Applied, Expires time.Time
}

// PushStatuses lists the tenants that have a watch source.
func (c *Checker) PushStatuses() []PushStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []PushStatus
	for _, name := range c.order {
		t := c.tenants[name]
		if t.cfg.WatchURL == "" {
			continue
		}
		out = append(out, PushStatus{Tenant: name, Connected: t.pushConnected, Applied: t.pushAt, Expires: t.pushExpires})
	}
	return out
}
