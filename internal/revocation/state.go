package revocation

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"runtime/debug"
	"slices"
	"time"

	"github.com/agentauthz/agentauthz/internal/identity"
)

// Source kinds, also the "source" metric label.
const (
	kindFile  = "file"
	kindURL   = "url"
	kindWatch = "watch"
	kindState = "state" // writing the high-water marks
)

type sourceState struct {
	kind   string
	where  string // path or URL, for logs only
	loaded bool   // delivered a verified CRL at least once
	tried  bool   // answered at least once, with data or an error
	// lastErr is the last refusal or failure, "" after a success; for
	// Status.
	lastErr string
	// pending are the CRLs of this source whose issuer is no CA of the
	// tenant's configuration (an issuing CA under a root-only bundle):
	// held unverified until a verified chain shows that CA (learn).
	pending []*CRL
}

// heldKey is what CRLs are held and ordered by: the CA that signed them
// and their scope (RFC 5280: CRL numbers increase per issuer and scope).
type heldKey struct {
	ca    identity.CAKey
	scope string // Scope.raw
}

// tenantState is the mutable per-tenant state behind the snapshot; guarded by
// Checker.mu.
type tenantState struct {
	name    string
	cfg     TenantConfig
	sources []*sourceState
	held    map[heldKey]*CRL // newest verified CRL per CA and scope
	// learned are CA certificates outside cfg.CAs that verified a pending
	// CRL, seen in a chain that identity verified up to this tenant's
	// anchors; tried remembers every CA tried, so each is tried once.
	learned []*x509.Certificate
	tried   map[identity.CAKey]bool
	floors  map[string]floor // high-water marks, also persisted (see hwm.go)
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
	// pushRestored: the state in force was saved before a restart
	// (pushstate.go) and no event has replaced it yet; pushSaved is
	// what the state file holds.
	pushRestored bool
	pushSaved    pushSaveKey

	snap *tenantSnap // cached; nil after a change
}

func newTenantState(name string, tc TenantConfig) *tenantState {
	t := &tenantState{name: name, cfg: tc, held: map[heldKey]*CRL{}, tried: map[identity.CAKey]bool{},
		floors: map[string]floor{}, errs: map[string]uint64{}, pushRefused: map[string]uint64{}}
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

// cas is every CA whose CRLs the tenant verifies: the configured ones,
// then the learned ones.
func (t *tenantState) cas() []*x509.Certificate {
	return slices.Concat(t.cfg.CAs, t.learned)
}

func (t *tenantState) snapLocked() *tenantSnap {
	if t.snap != nil {
		return t.snap
	}
	s := &tenantSnap{ready: true, agents: t.agents, issuers: map[identity.CAKey][]*scopedCRL{}, tried: maps.Clone(t.tried)}
	for _, src := range t.sources {
		if !src.loaded {
			s.ready = false
		}
		for _, crl := range src.pending {
			if s.pending == nil {
				s.pending = map[string]struct{}{}
			}
			s.pending[crl.issuerName] = struct{}{}
		}
	}
	first := true
	for k, crl := range t.held {
		stale := crl.NextUpdate.Add(t.cfg.Grace)
		s.issuers[k.ca] = append(s.issuers[k.ca], &scopedCRL{serials: crl.Serials, scope: crl.Scope, staleAfter: stale})
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
// none is older than what is held (or was ever seen) for its CA and scope,
// makes them current. A file is applied whole or not at all. A CRL whose
// issuer is no CA of the tenant is kept pending (see sourceState.pending).
func (c *Checker) apply(tenant string, src int, data []byte) error {
	t := c.tenants[tenant]
	c.mu.Lock()
	cas := t.cas()
	c.mu.Unlock()
	// Parse and verify outside the lock: a large CRL takes a while, and
	// metrics scrapes and other sources should not wait for it.
	crls, err := parseCRLs(data, cas, c.maxBytes, true)
	c.mu.Lock()
	defer c.mu.Unlock()
	s := t.sources[src]
	var verified, pending []*CRL
	for _, crl := range crls {
		if err != nil {
			break
		}
		if crl.pending != nil {
			pending = append(pending, crl)
			continue
		}
		// SetCAs may have run meanwhile: the verifying CA must still be
		// one of the tenant's.
		ca := cas[crl.CA]
		if !slices.ContainsFunc(t.cas(), ca.Equal) {
			err = ErrCRLSignature
		}
		crl.issuer = ca
		verified = append(verified, crl)
	}
	s.tried = true
	if err != nil {
		t.errs[s.kind]++
		s.lastErr = err.Error()
		c.log.Error("revocation: refused crl", "tenant", tenant, "source", s.kind, "from", s.where, "error", err)
		return err
	}
	for _, crl := range verified {
		if err := c.newerLocked(t, crl); err != nil {
			// The source works and its data verified; it is only behind.
			t.errs[s.kind]++
			s.lastErr = err.Error()
			c.log.Warn("revocation: refused crl", "tenant", tenant, "source", s.kind, "from", s.where,
				"issuer", crl.Issuer(), "error", err)
			if !s.loaded {
				s.loaded = true
				t.snap = nil
				c.publishLocked()
			}
			return err
		}
	}
	t.lastRefresh = c.now()
	s.lastErr = ""
	changed, entries := false, 0
	for _, crl := range verified {
		entries += crl.Serials.Len()
		if c.holdLocked(t, s, crl) {
			changed = true
		}
	}
	if !slices.EqualFunc(pending, s.pending, func(a, b *CRL) bool { return a.Digest == b.Digest }) {
		for _, crl := range pending {
			c.log.Warn("revocation: crl from a CA outside the trust bundle held unverified until an agent's verified chain shows that CA",
				"tenant", tenant, "source", s.kind, "from", s.where, "issuer", crl.Issuer())
			crl.Raw = nil
		}
		s.pending = pending
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

// newerLocked reports whether crl may replace what is held for its CA and
// scope, and is not below the high-water mark seen for them before (which
// survives restarts).
func (c *Checker) newerLocked(t *tenantState, crl *CRL) error {
	k := heldKey{identity.CAKeyOf(crl.issuer), crl.Scope.raw}
	if err := crl.newerThan(t.held[k]); err != nil {
		return err
	}
	if f, ok := t.floors[k.String()]; ok {
		return crl.newerThan(&CRL{Number: f.Number, ThisUpdate: f.ThisUpdate})
	}
	return nil
}

// holdLocked makes crl (verified, not older) the one held for its CA and
// scope, raising and persisting the high-water mark, and reports whether
// anything changed.
func (c *Checker) holdLocked(t *tenantState, s *sourceState, crl *CRL) bool {
	k := heldKey{identity.CAKeyOf(crl.issuer), crl.Scope.raw}
	if held := t.held[k]; held != nil && held.Digest == crl.Digest {
		return false
	}
	c.log.Info("revocation: crl applied", "tenant", t.name, "source", s.kind, "from", s.where,
		"issuer", crl.Issuer(), "number", crl.Number, "revoked", crl.Serials.Len(),
		"next_update", crl.NextUpdate.UTC().Format(time.RFC3339))
	kept := *crl
	kept.Raw = nil // compared by Digest from now on
	t.held[k] = &kept
	c.raiseFloorLocked(t, k, crl)
	return true
}

// learn is the slow path of Check for a certificate whose issuer holds no
// CRL but has the name of a pending CRL's issuer: issuer is in a chain that
// identity verified up to this tenant's anchors, so a pending CRL whose
// signature it verifies is that CA's CRL. Each CA is tried once per trust
// bundle; it returns the issuer's CRLs in the new snapshot.
func (c *Checker) learn(tenant string, issuer *x509.Certificate) []*scopedCRL {
	key := identity.CAKeyOf(issuer)
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.tenants[tenant]
	if t.tried[key] || len(t.tried) >= maxLearnedCAs {
		return t.snapLocked().issuers[key]
	}
	t.tried[key] = true
	found := false
	for _, s := range t.sources {
		kept := s.pending[:0]
		for _, crl := range s.pending {
			if crl.issuerName != string(issuer.RawSubject) {
				kept = append(kept, crl)
				continue
			}
			if err := crl.pending.CheckSignatureFrom(issuer); err != nil {
				t.errs[s.kind]++
				c.log.Error("revocation: refused crl: not signed by the CA of that name in an agent's verified chain",
					"tenant", tenant, "source", s.kind, "from", s.where, "issuer", crl.Issuer(), "error", err)
				kept = append(kept, crl)
				continue
			}
			crl.pending, crl.issuer = nil, issuer
			if err := c.newerLocked(t, crl); err != nil {
				t.errs[s.kind]++
				c.log.Warn("revocation: refused crl", "tenant", tenant, "source", s.kind, "from", s.where,
					"issuer", crl.Issuer(), "error", err)
				continue
			}
			c.log.Info("revocation: crl of a CA outside the trust bundle verified with an agent's chain",
				"tenant", tenant, "source", s.kind, "from", s.where, "issuer", crl.Issuer())
			c.holdLocked(t, s, crl)
			found = true
		}
		s.pending = kept
	}
	if found {
		t.learned = append(t.learned, issuer)
	}
	t.snap = nil
	c.publishLocked()
	return t.snapLocked().issuers[key]
}

// maxLearnedCAs bounds the CAs learn tries per tenant and trust bundle.
const maxLearnedCAs = 256

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
	var refused refusedError
	if errors.Is(err, errCanceled) || errors.As(err, &refused) {
		return // a refused CRL was logged and counted by apply
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.tenants[tenant]
	s := t.sources[src]
	t.errs[s.kind]++
	s.lastErr = err.Error()
	s.tried = true
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

// SetCAs replaces the CA certificates that verify CRLs, for a trust bundle
// reload: cas maps each tenant to its bundle's CAs. Every tenant is checked
// before any is changed, so on error nothing has changed. CRLs held from a
// CA that is still listed, or learned from agents' chains, stay in force;
// those of a removed CA are dropped, so if no CRL is left the tenant
// answers revocation_status_unknown until a source delivers one from a
// listed CA (CRL files and URLs within their poll interval; a watch stream
// on its next event or reconnect). A tenant that is not checked
// (revocation disabled, or not configured) is ignored: it cannot gain
// sources here.
func (c *Checker) SetCAs(cas map[string][]*x509.Certificate) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(cas)) {
		if _, ok := c.tenants[name]; ok && (len(cas[name]) == 0 || slices.Contains(cas[name], nil)) {
			errs = append(errs, fmt.Errorf("revocation: tenant %q: no CA certificate to verify CRLs", name))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	for name, list := range cas {
		t, ok := c.tenants[name]
		if !ok {
			continue
		}
		// CRLs of learned CAs stay: such a CRL only ever counts for a
		// certificate whose chain, verified against the bundle in force,
		// has that CA as its issuer; dropping it would leave the CA's
		// agents without data until its CRL file changes.
		keep := map[identity.CAKey]bool{}
		for _, ca := range slices.Concat(list, t.learned) {
			if slices.ContainsFunc(t.cfg.CAs, ca.Equal) || slices.ContainsFunc(t.learned, ca.Equal) {
				keep[identity.CAKeyOf(ca)] = true
			}
		}
		for k := range t.held {
			if !keep[k.ca] {
				delete(t.held, k)
			}
		}
		t.cfg.CAs = slices.Clone(list)
		t.snap = nil
	}
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

// pushApplied records an applied event (raw: its data as received), saves
// it for a restart and hands its restrictions on.
func (c *Checker) pushApplied(tenant string, raw []byte, ev *WatchEvent) {
	c.mu.Lock()
	t := c.tenants[tenant]
	t.pushGen, t.pushExpires, t.pushAt, t.pushRestored = ev.Generation, time.Unix(ev.Expires, 0), c.now(), false
	c.savePushLocked(t, raw, ev)
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
	// Restored: the state in force was saved before a restart and no
	// event of the control plane has replaced it yet.
	Restored bool
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
		out = append(out, PushStatus{Tenant: name, Connected: t.pushConnected, Applied: t.pushAt, Expires: t.pushExpires, Restored: t.pushRestored})
	}
	return out
}
