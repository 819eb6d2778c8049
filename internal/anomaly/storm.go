package anomaly

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Alert storms. Cooldowns bound the alerts per agent, rule and key; two more
// bounds hold overall. Identity failures of certificates the CA did not
// issue (and of requests without one) are also counted per replica, and
// once several different ones fail there they are a spray: one alert when
// it is seen and one with its totals when it ends, instead of one per
// certificate. And each rule raises at most MaxAlertsPerRule alerts an hour
// of record time; the ones over it are counted and reported in
// alerts_suppressed markers, never dropped silently.

const (
	// RuleSuppressed marks alerts held back by the per-rule cap: one when
	// the cap is reached, one with the count when the hour ends.
	RuleSuppressed = "alerts_suppressed"

	sprayDistinct  = 5                // different failing certificates (or networks) on one replica
	sprayEpisode   = 30 * time.Minute // a longer spray is reported in episodes of this length
	maxFailureKeys = 10_000           // per-certificate windows of certificates the CA did not issue
	maxSprays      = 1_000            // replicas with a spray in progress
	maxSample      = 8                // certificates (agents) named in an alert
	maxNetworks    = 4
	capWindow      = time.Hour
)

// spray is one replica's identity failures of unknown certificates, from
// the first: an episode that ends sprayEpisode after it began or once
// identityWindow passes without another failure.
type spray struct {
	Agent    string         `json:"agent"` // "replica:<log>"
	Start    time.Time      `json:"start"`
	Last     time.Time      `json:"last"`
	Failures int            `json:"failures"`
	Distinct int            `json:"distinct"` // different certificates, or networks without one
	Untold   int            `json:"untold"`   // failures not told apart (the per-certificate windows were full)
	Repeated int            `json:"repeated"` // certificates that failed identityCount times within identityWindow
	Reasons  map[string]int `json:"reasons"`
	Networks []string       `json:"networks"`
	Sample   []string       `json:"sample"`
	IDs      []string       `json:"ids"`
	Alerted  bool           `json:"alerted"`
	Reported int            `json:"reported"` // Failures when the spray was alerted
}

func (s *spray) over(t time.Time) bool {
	if !s.Alerted {
		return t.Sub(s.Start) > identityWindow
	}
	return t.Sub(s.Last) > identityWindow || t.Sub(s.Start) >= sprayEpisode
}

// ruleCap counts one rule's alerts in the current hour of record time.
type ruleCap struct {
	Window     time.Time `json:"window"`
	Raised     int       `json:"raised"`
	Suppressed int       `json:"suppressed"`
	First      time.Time `json:"first,omitempty"`
	Last       time.Time `json:"last,omitempty"`
	Agents     []string  `json:"agents,omitempty"` // a sample of the suppressed alerts' agents
	IDs        []string  `json:"ids,omitempty"`    // the last suppressed alerts' decisions
}

// known reports whether the CA issued the certificate behind a failure.
func (d *Detector) known(e *Event) bool {
	return e.CertSHA256 != "" && d.cfg.KnownCertificate != nil && d.cfg.KnownCertificate(e.CertSHA256)
}

// failureWindow is key's identity-failure window; nil when the windows of
// unknown certificates are full (a spray of more than maxFailureKeys within
// identityWindow: the spray still counts them).
func (d *Detector) failureWindow(key string, known bool) *window {
	w := d.st.Failures[key]
	if w == nil {
		if !known && len(d.st.Failures) >= maxFailureKeys {
			return nil
		}
		w = &window{}
		d.st.Failures[key] = w
	}
	return w
}

// sprayOf returns e's replica's spray, ending one that is over first.
func (d *Detector) sprayOf(e *Event) *spray {
	name := cmp.Or(e.Log, "-")
	sp := d.st.Sprays[name]
	if sp == nil && len(d.st.Sprays) >= maxSprays {
		name = "*"
		sp = d.st.Sprays[name]
	}
	if sp != nil && sp.over(e.Time) {
		d.endSpray(name, sp)
		sp = nil
	}
	if sp == nil {
		sp = &spray{Agent: "replica:" + name, Start: e.Time, Reasons: map[string]int{}}
		d.st.Sprays[name] = sp
	}
	return sp
}

// countSpray adds a failure to sp; fresh says its certificate (or network)
// is new in the spray, told whether it could be told apart at all. It
// returns true when the spray takes the failure over from the
// per-certificate rule.
func (d *Detector) countSpray(sp *spray, e *Event, key string, w *window) bool {
	fresh := w == nil || !w.Spray.Equal(sp.Start)
	sp.Failures++
	if t := e.Time; t.After(sp.Last) {
		sp.Last = t
	}
	if len(sp.Reasons) < 16 || sp.Reasons[e.Reason] > 0 {
		sp.Reasons[e.Reason]++
	}
	sp.IDs = appendID(sp.IDs, e.DecisionID)
	switch {
	case w == nil:
		sp.Untold++
	case fresh:
		w.Spray = sp.Start
		sp.Distinct++
		if len(sp.Sample) < maxSample {
			sp.Sample = append(sp.Sample, sampleOf(key, e.Issuer))
		}
	}
	if w != nil && w.Count == identityCount {
		sp.Repeated++
	}
	if e.Network != "" && len(sp.Networks) < maxNetworks && !slices.Contains(sp.Networks, e.Network) {
		sp.Networks = append(sp.Networks, e.Network)
	}
	if sp.Alerted {
		return true
	}
	if sp.Distinct+sp.Untold < sprayDistinct {
		return false
	}
	sp.Alerted, sp.Reported = true, sp.Failures
	d.emit(Alert{Rule: RuleIdentityFailures, Time: e.Time, Since: sp.Start, Agent: sp.Agent, Key: "spray",
		Baseline: fmt.Sprintf("fewer than %d different certificates the CA did not issue (or networks without one) failing identity within %v on one replica",
			sprayDistinct, identityWindow),
		Observed: fmt.Sprintf("%d identity failures of %d different certificates or networks within %v (%s); from %s; certificates %s",
			sp.Failures, sp.Distinct+sp.Untold, span(e.Time.Sub(sp.Start)), reasons(sp.Reasons), list(sp.Networks), short(sp.Sample)),
		Deviation:   "a spray: this replica's further failures are counted into one alert when it ends, not raised one by one",
		Score:       float64(sp.Failures),
		Count:       sp.Failures,
		Sample:      sp.Sample,
		DecisionIDs: sp.IDs})
	return true
}

// endSpray reports an alerted spray's totals and forgets it.
func (d *Detector) endSpray(name string, sp *spray) {
	delete(d.st.Sprays, name)
	if !sp.Alerted || sp.Failures == sp.Reported {
		return
	}
	distinct := fmt.Sprint(sp.Distinct)
	if sp.Untold > 0 {
		distinct = fmt.Sprintf("%d or more (%d failures not told apart)", sp.Distinct, sp.Untold)
	}
	d.emit(Alert{Rule: RuleIdentityFailures, Time: sp.Last, Since: sp.Start, Agent: sp.Agent, Key: "spray total",
		Baseline: fmt.Sprintf("fewer than %d different certificates the CA did not issue (or networks without one) failing identity within %v on one replica",
			sprayDistinct, identityWindow),
		Observed: fmt.Sprintf("%d identity failures of %s different certificates or networks from %s to %s (%s), %d of them failing %d times or more; from %s; certificates %s",
			sp.Failures, distinct, sp.Start.Format(time.RFC3339), sp.Last.Format(time.RFC3339), reasons(sp.Reasons), sp.Repeated, identityCount,
			list(sp.Networks), short(sp.Sample)),
		Deviation:   fmt.Sprintf("%d failures after the spray's first alert", sp.Failures-sp.Reported),
		Score:       float64(sp.Failures),
		Count:       sp.Failures,
		Sample:      sp.Sample,
		DecisionIDs: sp.IDs})
}

// minute runs once per minute of record time: it ends the sprays that are
// over and forgets identity-failure windows that can no longer count.
func (d *Detector) minute(now time.Time) {
	for _, name := range slices.Sorted(maps.Keys(d.st.Sprays)) {
		if sp := d.st.Sprays[name]; sp.over(now) {
			d.endSpray(name, sp)
		}
	}
	for k, w := range d.st.Failures {
		if now.Sub(w.Last) > identityWindow {
			delete(d.st.Failures, k)
		}
	}
}

// emit raises al unless its rule reached its cap for the hour, in which
// case it is counted for the rule's alerts_suppressed marker.
func (d *Detector) emit(al Alert) {
	c := d.st.Caps[al.Rule]
	if c == nil {
		c = &ruleCap{}
		d.st.Caps[al.Rule] = c
	}
	if w := al.Time.Truncate(capWindow); w.After(c.Window) {
		d.flushCap(al.Rule, c)
		*c = ruleCap{Window: w}
	}
	if c.Raised < d.cfg.MaxAlertsPerRule {
		c.Raised++
		d.push(al)
		return
	}
	c.Suppressed++
	if c.First.IsZero() || al.Time.Before(c.First) {
		c.First = al.Time
	}
	if al.Time.After(c.Last) {
		c.Last = al.Time
	}
	if len(c.Agents) < maxSample && !slices.Contains(c.Agents, al.Agent) {
		c.Agents = append(c.Agents, al.Agent)
	}
	for _, id := range al.DecisionIDs {
		c.IDs = appendID(c.IDs, id)
	}
	if c.Suppressed == 1 {
		d.push(Alert{Rule: RuleSuppressed, Time: al.Time, Since: c.Window, Agent: "detector", Key: al.Rule,
			Baseline:    fmt.Sprintf("at most %d %s alerts an hour", d.cfg.MaxAlertsPerRule, al.Rule),
			Observed:    fmt.Sprintf("%d %s alerts since %s; the rest of the hour's are counted, not raised", c.Raised, al.Rule, c.Window.Format(time.RFC3339)),
			Deviation:   fmt.Sprintf("cap reached; a second %s alert will say how many were held back", RuleSuppressed),
			Score:       1,
			Count:       1,
			Sample:      []string{al.Agent},
			DecisionIDs: al.DecisionIDs})
	}
}

// flushCap reports how many of a rule's alerts its cap held back in the
// hour that ended.
func (d *Detector) flushCap(rule string, c *ruleCap) {
	if c.Suppressed == 0 {
		return
	}
	d.push(Alert{Rule: RuleSuppressed, Time: c.Last, Since: c.First, Agent: "detector", Key: rule + " total",
		Baseline:    fmt.Sprintf("at most %d %s alerts an hour", d.cfg.MaxAlertsPerRule, rule),
		Observed:    fmt.Sprintf("%d %s alerts held back from %s to %s, about %s", c.Suppressed, rule, c.First.Format(time.RFC3339), c.Last.Format(time.RFC3339), list(c.Agents)),
		Deviation:   fmt.Sprintf("%d over the cap", c.Suppressed),
		Score:       float64(c.Suppressed),
		Count:       c.Suppressed,
		Sample:      c.Agents,
		DecisionIDs: c.IDs})
	c.Suppressed = 0
}

// flushCaps reports the caps of hours before now.
func (d *Detector) flushCaps(now time.Time) {
	for _, r := range Rules {
		if c := d.st.Caps[r]; c != nil && c.Window.Before(now.Truncate(capWindow)) {
			d.flushCap(r, c)
		}
	}
}

// push appends an alert, its slices bounded and its own.
func (d *Detector) push(al Alert) {
	if len(al.DecisionIDs) > maxIDs {
		al.DecisionIDs = al.DecisionIDs[len(al.DecisionIDs)-maxIDs:]
	}
	al.DecisionIDs = slices.Clone(al.DecisionIDs)
	al.Sample = slices.Clone(al.Sample)
	d.alerts = append(d.alerts, al)
}

// sampleOf names a failing certificate (its hash and the issuer it
// claims) or network in an alert's sample.
func sampleOf(key, issuer string) string {
	if issuer == "" || strings.HasPrefix(key, "net:") {
		return key
	}
	return key + " (" + fitRunes(issuer, 64) + ")"
}

// short is a sample as an alert's explanation lists it: hashes cut to 12
// digits.
func short(sample []string) string {
	out := make([]string, len(sample))
	for i, s := range sample {
		h, rest, _ := strings.Cut(s, " ")
		if len(h) > 12 && !strings.HasPrefix(h, "net:") {
			h = h[:12] + "…"
		}
		out[i] = strings.TrimSpace(h + " " + rest)
	}
	return list(out)
}

// span is a duration as an explanation gives it.
func span(d time.Duration) string {
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

func reasons(m map[string]int) string {
	parts := make([]string, 0, len(m))
	for _, r := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %d", r, m[r]))
	}
	return strings.Join(parts, ", ")
}

func list(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// fitRunes shortens s to at most n bytes on a rune boundary.
func fitRunes(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && s[n]&0xc0 == 0x80 {
		n--
	}
	return s[:n] + "…"
}
