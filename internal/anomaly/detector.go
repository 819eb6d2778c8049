package anomaly

import (
	"fmt"
	"math"
	"sort"
	"time"
)

// Rules, as they appear in alerts and metrics.
const (
	RuleRateBurst        = "rate_burst"
	RuleRateDrop         = "rate_drop"
	RuleNewOperation     = "new_operation"
	RuleNewRoute         = "new_route"
	RuleNewNetwork       = "new_source_network"
	RuleScopeProbing     = "scope_probing"
	RuleOffHours         = "off_hours"
	RuleTwoPlaces        = "certificate_two_places"
	RuleIdentityFailures = "identity_failures"
	RuleDrift            = "slow_drift"
)

// Rules lists every rule.
var Rules = []string{RuleRateBurst, RuleRateDrop, RuleNewOperation, RuleNewRoute, RuleNewNetwork, RuleScopeProbing,
	RuleOffHours, RuleTwoPlaces, RuleIdentityFailures, RuleDrift, RuleSuppressed}

// Alert is one detection, explained: which baseline, what was observed, how
// far off, and the records that triggered it.
type Alert struct {
	Rule        string    `json:"rule"`
	Time        time.Time `json:"time"`  // record time of the record that raised it
	Since       time.Time `json:"since"` // record time of the first record behind it
	Agent       string    `json:"agent"` // SPIFFE ID or agent id; for identity failures the certificate
	AgentID     string    `json:"agent_id,omitempty"`
	Tenant      string    `json:"tenant,omitempty"`
	Key         string    `json:"key,omitempty"` // the operation, route, network … the alert is about
	Baseline    string    `json:"baseline"`
	Observed    string    `json:"observed"`
	Deviation   string    `json:"deviation"`
	Score       float64   `json:"score"` // how far off: a ratio or a count over the threshold
	DecisionIDs []string  `json:"decision_ids"`
	// Count and Sample, on alerts that stand for many records or alerts
	// (an identity-failure spray, alerts held back by a rule's cap): how
	// many, and a few of the certificates, networks or agents involved.
	Count  int      `json:"count,omitempty"`
	Sample []string `json:"sample,omitempty"`
}

// Config tunes the detectors. The zero value takes the defaults below, which
// docs/anomaly.md evaluates.
type Config struct {
	// WarmupDays and WarmupEvents: an agent is unbaselined until it has been
	// seen for this long and this often; until then only the rules that need
	// no baseline (probing, two places, identity failures) fire.
	WarmupDays   int
	WarmupEvents int
	// Cooldown is the quiet time per agent, rule and key after an alert.
	Cooldown time.Duration
	// MaxAgents bounds the agents tracked; the least recently seen is
	// forgotten first (its baseline restarts if it comes back).
	MaxAgents int
	// MaxValues bounds each agent's learned set of operations, routes and
	// networks; a full set stops learning (first-use alerts then stop for it).
	MaxValues int
	// KnownCertificate reports whether the organisation's CA issued the
	// certificate with this SHA-256 (the control plane asks its
	// inventory). Identity failures of such certificates are judged per
	// certificate only; those of others (and of requests without one) are
	// also counted per replica, where several different ones make one
	// spray alert instead of one per certificate. nil: none is known.
	KnownCertificate func(certSHA256 string) bool
	// MaxAlertsPerRule bounds each rule's alerts per hour of record time;
	// the ones over it are counted into alerts_suppressed markers.
	MaxAlertsPerRule int
}

func (c *Config) defaults() {
	if c.WarmupDays <= 0 {
		c.WarmupDays = 3
	}
	if c.WarmupEvents <= 0 {
		c.WarmupEvents = 50
	}
	if c.Cooldown <= 0 {
		c.Cooldown = 30 * time.Minute
	}
	if c.MaxAgents <= 0 {
		c.MaxAgents = 100_000
	}
	if c.MaxValues <= 0 {
		c.MaxValues = 128
	}
	if c.MaxAlertsPerRule <= 0 {
		c.MaxAlertsPerRule = 100
	}
}

// Detector runs every rule over a stream of events. It is not safe for
// concurrent use; feed it from one goroutine.
type Detector struct {
	cfg    Config
	st     *State
	alerts []Alert
}

// New returns a detector with empty state, or over st (from Load).
func New(cfg Config, st *State) *Detector {
	cfg.defaults()
	if st == nil {
		st = newState()
	}
	return &Detector{cfg: cfg, st: st}
}

// State returns the detector's state, for Save.
func (d *Detector) State() *State { return d.st }

const (
	burstWindow    = time.Minute
	probeWindow    = 5 * time.Minute
	probeDistinct  = 3
	twoPlacesGap   = time.Minute
	identityWindow = 5 * time.Minute
	identityCount  = 5
	offHoursEvents = 2
	driftRatio     = 2.5
	driftFloor     = 50
	dropMinPerHour = 30
	slotAlpha      = 0.3 // EWMA weight of the newest hour in a slot's rate
	maxIDs         = 10
)

// Observe feeds one event and returns the alerts it raised (valid until the
// next call).
func (d *Detector) Observe(e Event) []Alert {
	d.alerts = d.alerts[:0]
	st := d.st
	if e.DecisionID != "" && st.seen(e.DecisionID) {
		return nil // at-least-once shipping delivers some records twice
	}
	if e.Time.After(st.Clock) {
		d.sweep(e.Time)
		if e.Time.Truncate(time.Minute).After(st.Clock.Truncate(time.Minute)) {
			d.minute(e.Time)
		}
		st.Clock = e.Time
	}
	if e.identityFailure() || e.Agent == "" {
		d.identity(e)
		return d.alerts
	}
	a := d.agent(e)
	a.roll(d, e.Time)
	baselined := a.baselined(&d.cfg, e.Time)
	d.probing(a, e)
	d.twoPlaces(a, e, baselined)
	if e.Time.Before(a.MinuteStart) {
		// Late (clock skew between replicas): it counts towards what the
		// agent uses, not towards windows that have moved on.
		d.firstUse(a, e, baselined)
		a.Events++
		return d.alerts
	}
	d.burst(a, e, baselined)
	d.firstUse(a, e, baselined)
	d.offHours(a, e, baselined)
	a.count(e)
	return d.alerts
}

func (d *Detector) raise(al Alert) {
	k := al.Agent + "\x00" + al.Rule + "\x00" + al.Key
	if until, ok := d.st.Quiet[k]; ok && al.Time.Before(until) {
		return
	}
	d.st.Quiet[k] = al.Time.Add(d.cfg.Cooldown)
	d.emit(al)
}

func (d *Detector) agent(e Event) *agentState {
	a := d.st.Agents[e.Agent]
	if a == nil {
		if len(d.st.Agents) >= d.cfg.MaxAgents {
			d.forgetOldest()
		}
		a = newAgent(e)
		d.st.Agents[e.Agent] = a
	}
	a.LastSeen = e.Time
	return a
}

func (d *Detector) forgetOldest() {
	var oldest string
	var t time.Time
	for k, a := range d.st.Agents {
		if oldest == "" || a.LastSeen.Before(t) {
			oldest, t = k, a.LastSeen
		}
	}
	delete(d.st.Agents, oldest)
}

// burst compares the agent's (and the agent's operation's) count in the
// current minute with its seasonal rate for this hour of the week.
func (d *Detector) burst(a *agentState, e Event, baselined bool) {
	a.MinuteIDs = appendID(a.MinuteIDs, e.DecisionID)
	a.MinuteCount++
	oc := a.op(e.Operation, d.cfg.MaxValues)
	if oc != nil {
		oc.MinuteCount++
	}
	if !baselined {
		return
	}
	check := func(key string, count int, r *rate) {
		lambda, ok := r.perMinute(slotOf(e.Time))
		if !ok {
			return
		}
		limit := 3*lambda + 4*math.Sqrt(lambda) + 6
		if float64(count) <= limit {
			return
		}
		d.raise(Alert{Rule: RuleRateBurst, Time: e.Time, Since: a.MinuteStart, Agent: a.Agent, AgentID: a.AgentID, Tenant: a.Tenant, Key: key,
			Baseline:    fmt.Sprintf("%.2f requests/min on %s", lambda, slotName(slotOf(e.Time))),
			Observed:    fmt.Sprintf("%d requests in the minute from %s", count, a.MinuteStart.Format(time.RFC3339)),
			Deviation:   fmt.Sprintf("%.1f× the baseline (threshold %.1f)", float64(count)/math.Max(lambda, 0.01), limit),
			Score:       float64(count) / math.Max(lambda, 0.01),
			DecisionIDs: a.MinuteIDs})
	}
	check("", a.MinuteCount, &a.Rate)
	if oc != nil && e.Operation != "" {
		check(e.Operation, oc.MinuteCount, &oc.Rate)
	}
}

// firstUse: an operation, route or source network the baselined agent never
// used before. Operations and routes count when they were allowed: a denied
// request took nothing (many denials are the probing rule's), and what it
// asked for stays unlearned, so its first allowed use still raises. A new
// operation is not also reported as a new route.
func (d *Detector) firstUse(a *agentState, e Event, baselined bool) {
	newOp := false
	for _, f := range []struct {
		rule, val, what string
		set             *valueSet
		learn           bool
	}{
		{RuleNewOperation, e.Operation, "operation", &a.Ops, e.Allowed},
		{RuleNewRoute, e.Route, "route", &a.Routes, e.Allowed},
		{RuleNewNetwork, e.Network, "source network", &a.Networks, true},
	} {
		if f.val == "" || !f.learn || f.set.has(f.val) {
			continue
		}
		if baselined && !f.set.full(d.cfg.MaxValues) && !(f.rule == RuleNewRoute && newOp) {
			newOp = newOp || f.rule == RuleNewOperation
			d.raise(Alert{Rule: f.rule, Time: e.Time, Since: e.Time, Agent: a.Agent, AgentID: a.AgentID, Tenant: a.Tenant, Key: f.val,
				Baseline:    fmt.Sprintf("%d %ss seen since %s: %s", f.set.len(), f.what, a.FirstSeen.Format(time.DateOnly), f.set.summary(5)),
				Observed:    fmt.Sprintf("first request with %s %q (%s)", f.what, f.val, outcome(e)),
				Deviation:   "never seen for this agent",
				Score:       1,
				DecisionIDs: []string{e.DecisionID}})
		}
		f.set.add(f.val, d.cfg.MaxValues)
	}
}

// probing: several distinct operations denied for lack of scope or trust in
// a short window.
func (d *Detector) probing(a *agentState, e Event) {
	if !e.probing() {
		return
	}
	key := e.Operation
	if key == "" {
		key = e.Route
	}
	a.Probes = append(a.Probes, probe{At: e.Time, Key: key, ID: e.DecisionID})
	cut := 0
	for cut < len(a.Probes) && e.Time.Sub(a.Probes[cut].At) > probeWindow {
		cut++
	}
	a.Probes = a.Probes[cut:]
	if len(a.Probes) > 64 {
		a.Probes = a.Probes[len(a.Probes)-64:]
	}
	distinct := map[string]bool{}
	var ids []string
	for _, p := range a.Probes {
		distinct[p.Key] = true
		ids = append(ids, p.ID)
	}
	if len(distinct) < probeDistinct {
		return
	}
	keys := make([]string, 0, len(distinct))
	for k := range distinct {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	d.raise(Alert{Rule: RuleScopeProbing, Time: e.Time, Since: a.Probes[0].At, Agent: a.Agent, AgentID: a.AgentID, Tenant: a.Tenant,
		Baseline:    fmt.Sprintf("fewer than %d distinct operations denied for scope or trust within %v", probeDistinct, probeWindow),
		Observed:    fmt.Sprintf("%d distinct operations denied within %v: %v", len(keys), e.Time.Sub(a.Probes[0].At).Round(time.Second), keys),
		Deviation:   fmt.Sprintf("%d over the limit", len(keys)-probeDistinct+1),
		Score:       float64(len(keys)),
		DecisionIDs: ids})
}

// twoPlaces: one certificate presented from two source networks within a
// minute, where the agent has not used both before (an agent behind two
// egress networks uses them side by side).
func (d *Detector) twoPlaces(a *agentState, e Event, baselined bool) {
	if e.CertSHA256 == "" || e.Network == "" {
		return
	}
	u := d.st.Certs[e.CertSHA256]
	if u == nil {
		u = &certUse{}
		d.st.Certs[e.CertSHA256] = u
	}
	if baselined && u.Network != "" && u.Network != e.Network && !e.Time.Before(u.At) && e.Time.Sub(u.At) <= twoPlacesGap &&
		!(a.Networks.has(u.Network) && a.Networks.has(e.Network)) {
		d.raise(Alert{Rule: RuleTwoPlaces, Time: e.Time, Since: u.At, Agent: e.Agent, AgentID: e.AgentID, Tenant: e.Tenant, Key: e.CertSHA256,
			Baseline:    "a certificate is used from one place at a time",
			Observed:    fmt.Sprintf("certificate %.12s… from %s at %s and from %s at %s", e.CertSHA256, u.Network, u.At.Format(time.RFC3339), e.Network, e.Time.Format(time.RFC3339)),
			Deviation:   fmt.Sprintf("two networks %v apart", e.Time.Sub(u.At).Round(time.Second)),
			Score:       2,
			DecisionIDs: []string{u.ID, e.DecisionID}})
	}
	if !e.Time.Before(u.At) {
		u.Network, u.At, u.ID = e.Network, e.Time, e.DecisionID
	}
}

// identity: repeated identity failures per certificate (or, without one, per
// source network). Those of certificates the CA did not issue are also
// counted per replica: once several different ones fail there, the spray
// takes them over (storm.go).
func (d *Detector) identity(e Event) {
	key := e.CertSHA256
	who := "certificate " + key
	if key == "" {
		key, who = "net:"+e.Network, "source network "+e.Network
	}
	known := d.known(&e)
	w := d.failureWindow(key, known)
	if w != nil {
		w.add(e.Time, e.DecisionID, identityWindow)
	}
	if !known && d.countSpray(d.sprayOf(&e), &e, key, w) || w == nil || w.Count < identityCount {
		return
	}
	d.raise(Alert{Rule: RuleIdentityFailures, Time: e.Time, Since: w.Start, Agent: key, Key: e.Reason,
		Baseline:    fmt.Sprintf("fewer than %d identity failures within %v", identityCount, identityWindow),
		Observed:    fmt.Sprintf("%d identity failures (last: %s) from %s", w.Count, e.Reason, who),
		Deviation:   fmt.Sprintf("%d over the limit", w.Count-identityCount+1),
		Score:       float64(w.Count),
		DecisionIDs: w.IDs})
}

// offHours: work in an hour of the day in which the agent has never worked,
// nor in the hours either side.
func (d *Detector) offHours(a *agentState, e Event, baselined bool) {
	if !baselined || a.Days < 5 {
		return
	}
	h := e.Time.UTC().Hour()
	if a.ActiveDays[h] > 0 || a.ActiveDays[(h+23)%24] > 0 || a.ActiveDays[(h+1)%24] > 0 {
		return
	}
	a.OffIDs = appendID(a.OffIDs, e.DecisionID)
	a.OffCount++
	a.Tainted[h] = true
	if a.OffCount < offHoursEvents {
		return
	}
	d.raise(Alert{Rule: RuleOffHours, Time: e.Time, Since: a.HourStart, Agent: a.Agent, AgentID: a.AgentID, Tenant: a.Tenant, Key: fmt.Sprintf("%02d:00", h),
		Baseline:    fmt.Sprintf("active in hours %s UTC over %d days; never %02d:00–%02d:59 nor the hours either side", a.activeHours(), a.Days, h, h),
		Observed:    fmt.Sprintf("%d requests from %s, %s", a.OffCount, a.HourStart.Format(time.RFC3339), outcome(e)),
		Deviation:   "outside every hour the agent has worked",
		Score:       float64(a.OffCount),
		DecisionIDs: a.OffIDs})
}

// sweep runs the rules that look for what did not happen (rate drops) and
// drops state that can no longer matter, once per hour of record time.
func (d *Detector) sweep(now time.Time) {
	st := d.st
	hour := now.Truncate(time.Hour)
	if !hour.After(st.SweptHour) {
		return
	}
	st.SweptHour = hour
	for _, a := range st.Agents {
		d.drop(a, now) // before roll learns the silent hours
		a.roll(d, now)
	}
	for k, until := range st.Quiet {
		if now.After(until) {
			delete(st.Quiet, k)
		}
	}
	for k, u := range st.Certs {
		if now.Sub(u.At) > time.Hour {
			delete(st.Certs, k)
		}
	}
	d.flushCaps(now)
}

// drop: a baselined agent went silent for the last full hour, where that
// hour of the week and the one before have never had fewer than
// dropMinPerHour requests.
func (d *Detector) drop(a *agentState, now time.Time) {
	hour := now.Truncate(time.Hour)
	if !a.baselined(&d.cfg, now) || !a.LastSeen.Before(hour.Add(-time.Hour)) {
		return
	}
	for i := 1; i <= 2; i++ {
		least, ok := a.Rate.always(slotOf(hour.Add(-time.Duration(i) * time.Hour)))
		if !ok || least < dropMinPerHour {
			return
		}
	}
	prev := hour.Add(-time.Hour)
	least, _ := a.Rate.always(slotOf(prev))
	lambda, _ := a.Rate.perHour(slotOf(prev))
	d.raise(Alert{Rule: RuleRateDrop, Time: now, Since: prev.Add(-time.Hour), Agent: a.Agent, AgentID: a.AgentID, Tenant: a.Tenant,
		Baseline:  fmt.Sprintf("%.0f requests/hour on %s, never fewer than %d", lambda, slotName(slotOf(prev)), least),
		Observed:  fmt.Sprintf("no requests since %s", a.LastSeen.Format(time.RFC3339)),
		Deviation: "silent for a full hour in which it always works",
		Score:     lambda})
}

func outcome(e Event) string {
	if e.Allowed {
		return "allowed"
	}
	return "denied " + e.Reason
}

func appendID(ids []string, id string) []string {
	if id == "" {
		return ids
	}
	if len(ids) >= maxIDs {
		copy(ids, ids[1:])
		ids = ids[:maxIDs-1]
	}
	return append(ids, id)
}
