package anomaly

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strings"
	"time"
)

// State is everything the detectors learned, saved and loaded as JSON so
// that baselines survive a restart.
type State struct {
	Version   int                    `json:"version"`
	Clock     time.Time              `json:"clock"` // the latest record time seen
	SweptHour time.Time              `json:"swept_hour"`
	Agents    map[string]*agentState `json:"agents"`
	Certs     map[string]*certUse    `json:"certs"`
	Failures  map[string]*window     `json:"identity_failures"`
	Quiet     map[string]time.Time   `json:"cooldowns"`
	Sprays    map[string]*spray      `json:"identity_sprays,omitempty"` // by log
	Caps      map[string]*ruleCap    `json:"rule_caps,omitempty"`
	SeenIDs   []string               `json:"seen_decision_ids"` // ring of recent decision ids (duplicates)
	SeenNext  int                    `json:"seen_next"`

	seenSet map[string]struct{}
}

const (
	stateVersion = 1
	maxSeen      = 1 << 16
	maxDays      = 21
	maxHours     = 48
)

func newState() *State {
	return &State{Version: stateVersion, Agents: map[string]*agentState{}, Certs: map[string]*certUse{},
		Failures: map[string]*window{}, Quiet: map[string]time.Time{}, Sprays: map[string]*spray{}, Caps: map[string]*ruleCap{},
		seenSet: map[string]struct{}{}}
}

// seen reports whether id was seen among the last maxSeen ids, and records it.
func (s *State) seen(id string) bool {
	if _, ok := s.seenSet[id]; ok {
		return true
	}
	if len(s.SeenIDs) < maxSeen {
		s.SeenIDs = append(s.SeenIDs, id)
	} else {
		delete(s.seenSet, s.SeenIDs[s.SeenNext])
		s.SeenIDs[s.SeenNext] = id
		s.SeenNext = (s.SeenNext + 1) % maxSeen
	}
	s.seenSet[id] = struct{}{}
	return false
}

// Save writes the state as JSON.
func (s *State) Save(w io.Writer) error {
	return json.NewEncoder(w).Encode(s)
}

// maxStateBytes bounds a state file read by Load.
const maxStateBytes = 1 << 30

// Load reads a state written by Save.
func Load(r io.Reader) (*State, error) {
	s := &State{seenSet: map[string]struct{}{}}
	dec := json.NewDecoder(io.LimitReader(r, maxStateBytes))
	if err := dec.Decode(s); err != nil {
		return nil, fmt.Errorf("anomaly state: %w", err)
	}
	if s.Version != stateVersion {
		return nil, fmt.Errorf("anomaly state: version %d, want %d", s.Version, stateVersion)
	}
	if s.Agents == nil || s.Certs == nil || s.Failures == nil || s.Quiet == nil {
		return nil, errors.New("anomaly state: missing sections")
	}
	if s.Sprays == nil { // a state saved before sprays and caps were counted
		s.Sprays = map[string]*spray{}
	}
	if s.Caps == nil {
		s.Caps = map[string]*ruleCap{}
	}
	for k, sp := range s.Sprays {
		if sp == nil || sp.Reasons == nil {
			return nil, fmt.Errorf("anomaly state: spray %q is incomplete", k)
		}
	}
	for k, c := range s.Caps {
		if c == nil {
			return nil, fmt.Errorf("anomaly state: cap %q is incomplete", k)
		}
	}
	if len(s.SeenIDs) > maxSeen || s.SeenNext < 0 || s.SeenNext >= max(len(s.SeenIDs), 1) {
		return nil, errors.New("anomaly state: bad decision id ring")
	}
	for _, id := range s.SeenIDs {
		s.seenSet[id] = struct{}{}
	}
	for k, a := range s.Agents {
		if a == nil || a.Ops.Values == nil || a.Routes.Values == nil || a.Networks.Values == nil || a.OpStates == nil || a.Daily == nil ||
			slices.Contains(slices.Collect(maps.Values(a.OpStates)), nil) || slices.Contains(slices.Collect(maps.Values(a.Daily)), nil) {
			return nil, fmt.Errorf("anomaly state: agent %q is incomplete", k)
		}
	}
	if slices.Contains(slices.Collect(maps.Values(s.Certs)), nil) || slices.Contains(slices.Collect(maps.Values(s.Failures)), nil) {
		return nil, errors.New("anomaly state: an empty certificate or identity-failure entry")
	}
	return s, nil
}

// agentState is one agent's baseline and windows.
type agentState struct {
	Agent     string    `json:"agent"`
	AgentID   string    `json:"agent_id"`
	Tenant    string    `json:"tenant"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	Events    int       `json:"events"`

	MinuteStart time.Time `json:"minute_start"`
	MinuteCount int       `json:"minute_count"`
	MinuteIDs   []string  `json:"minute_ids"`

	HourStart time.Time `json:"hour_start"`
	HourCount int       `json:"hour_count"`
	Hours     []int     `json:"hours"` // the last finished hours' counts, oldest first
	Rate      rate      `json:"rate"`

	DayStart   time.Time           `json:"day_start"`
	Days       int                 `json:"days"`        // finished days observed
	ActiveDays [24]int             `json:"active_days"` // per UTC hour: days with work in it
	DayHours   [24]bool            `json:"day_hours"`   // today: hours with work
	Tainted    [24]bool            `json:"tainted"`     // today: hours that raised off-hours alerts (not learned)
	OffCount   int                 `json:"off_count"`
	OffIDs     []string            `json:"off_ids"`
	Daily      map[string]*counter `json:"daily"` // per operation and per "deny:<reason>": daily counts

	Ops      valueSet            `json:"operations"`
	Routes   valueSet            `json:"routes"`
	Networks valueSet            `json:"networks"`
	OpStates map[string]*opState `json:"operation_rates"`
	Probes   []probe             `json:"probes"`
}

type opState struct {
	Rate        rate `json:"rate"`
	MinuteCount int  `json:"minute_count"`
	HourCount   int  `json:"hour_count"`
}

type counter struct {
	Days []int `json:"days"` // finished days, oldest first
	Cur  int   `json:"current"`
}

type probe struct {
	At  time.Time `json:"at"`
	Key string    `json:"key"`
	ID  string    `json:"id"`
}

type certUse struct {
	Network string    `json:"network"`
	At      time.Time `json:"at"`
	ID      string    `json:"id"`
}

type window struct {
	Start time.Time `json:"start"`
	Last  time.Time `json:"last"`
	Count int       `json:"count"`
	IDs   []string  `json:"ids"`
	Spray time.Time `json:"spray,omitzero"` // the replica's spray it was last counted in (its start)
}

func (w *window) add(t time.Time, id string, span time.Duration) {
	if t.Sub(w.Start) > span {
		w.Start, w.Count, w.IDs = t, 0, w.IDs[:0]
	}
	w.Count++
	if t.After(w.Last) {
		w.Last = t
	}
	w.IDs = appendID(w.IDs, id)
}

func newAgent(e Event) *agentState {
	return &agentState{Agent: e.Agent, AgentID: e.AgentID, Tenant: e.Tenant, FirstSeen: e.Time,
		Ops: newSet(), Routes: newSet(), Networks: newSet(), OpStates: map[string]*opState{}, Daily: map[string]*counter{}}
}

func (a *agentState) baselined(c *Config, now time.Time) bool {
	return now.Sub(a.FirstSeen) >= time.Duration(c.WarmupDays)*24*time.Hour && a.Events >= c.WarmupEvents
}

func (a *agentState) op(name string, maxValues int) *opState {
	if name == "" {
		return nil
	}
	o := a.OpStates[name]
	if o == nil {
		if len(a.OpStates) >= maxValues {
			return nil
		}
		o = &opState{}
		a.OpStates[name] = o
	}
	return o
}

// count adds e to the agent's hour and day.
func (a *agentState) count(e Event) {
	a.Events++
	a.HourCount++
	if o := a.OpStates[e.Operation]; o != nil {
		o.HourCount++
	}
	a.daily(e.Operation)
	if !e.Allowed {
		a.daily("deny:" + e.Reason)
	}
}

func (a *agentState) daily(key string) {
	if key == "" {
		return
	}
	c := a.Daily[key]
	if c == nil {
		if len(a.Daily) >= 2*128 {
			return
		}
		c = &counter{}
		a.Daily[key] = c
	}
	c.Cur++
}

// roll moves the agent's minute, hour and day windows up to t, learning
// from the ones that finished.
func (a *agentState) roll(d *Detector, t time.Time) {
	if m := t.Truncate(time.Minute); m.After(a.MinuteStart) {
		a.MinuteStart, a.MinuteCount, a.MinuteIDs = m, 0, a.MinuteIDs[:0]
		for _, o := range a.OpStates {
			o.MinuteCount = 0
		}
	}
	if h := t.Truncate(time.Hour); h.After(a.HourStart) {
		if !a.HourStart.IsZero() {
			a.finishHour(h)
		}
		a.HourStart, a.HourCount, a.OffCount, a.OffIDs = h, 0, 0, a.OffIDs[:0]
	}
	if day := t.Truncate(24 * time.Hour); day.After(a.DayStart) {
		if !a.DayStart.IsZero() {
			a.finishDays(d, t, day)
		}
		a.DayStart = day
	}
}

// finishHour learns the hour that ended and the empty hours up to next.
func (a *agentState) finishHour(next time.Time) {
	h := a.HourStart
	n := a.HourCount
	for i := 0; h.Before(next) && i < maxDays*24; i++ {
		a.Rate.update(slotOf(h), n)
		for _, o := range a.OpStates {
			o.Rate.update(slotOf(h), o.HourCount)
			o.HourCount = 0
		}
		if n > 0 && h.Truncate(24*time.Hour).Equal(a.DayStart) {
			a.DayHours[h.UTC().Hour()] = true
		}
		a.Hours = append(a.Hours, n)
		if len(a.Hours) > maxHours {
			a.Hours = a.Hours[len(a.Hours)-maxHours:]
		}
		h, n = h.Add(time.Hour), 0
	}
}

// finishDays learns the day(s) that ended before day and checks each daily
// count for drift.
func (a *agentState) finishDays(d *Detector, t, day time.Time) {
	for h := range 24 {
		if a.DayHours[h] && !a.Tainted[h] {
			a.ActiveDays[h]++
		}
	}
	a.DayHours, a.Tainted = [24]bool{}, [24]bool{}
	gap := int(day.Sub(a.DayStart) / (24 * time.Hour))
	a.Days += gap
	for _, key := range slices.Sorted(maps.Keys(a.Daily)) {
		c := a.Daily[key]
		d.drift(a, key, c, t)
		for i := 0; i < gap && i < maxDays; i++ {
			c.Days = append(c.Days, c.Cur)
			c.Cur = 0
		}
		if len(c.Days) > maxDays {
			c.Days = c.Days[len(c.Days)-maxDays:]
		}
	}
}

// drift compares the day that just ended with the median of the same
// counter a week and more before (days d-10 … d-4), so that a change spread
// over days is not learned before it is seen.
func (d *Detector) drift(a *agentState, key string, c *counter, now time.Time) {
	if !a.baselined(&d.cfg, now) {
		return
	}
	n := len(c.Days)
	lo, hi := max(n-10, 0), n-3
	if hi-lo < 4 {
		return
	}
	ref := slices.Clone(c.Days[lo:hi])
	slices.Sort(ref)
	med := float64(ref[len(ref)/2])
	cur := float64(c.Cur)
	if cur < driftRatio*math.Max(med, 1) || cur-med < driftFloor {
		return
	}
	what := "requests for " + key
	if strings.HasPrefix(key, "deny:") {
		what = "denials for " + strings.TrimPrefix(key, "deny:")
	}
	d.raise(Alert{Rule: RuleDrift, Time: now, Since: a.DayStart, Agent: a.Agent, AgentID: a.AgentID, Tenant: a.Tenant, Key: key,
		Baseline:  fmt.Sprintf("median %.0f %s a day, 4–10 days earlier", med, what),
		Observed:  fmt.Sprintf("%.0f %s on %s", cur, what, a.DayStart.Format(time.DateOnly)),
		Deviation: fmt.Sprintf("%.1f× the median (threshold %.1f×)", cur/math.Max(med, 1), driftRatio),
		Score:     cur / math.Max(med, 1)})
}

func (a *agentState) activeHours() string {
	var parts []string
	for h := 0; h < 24; h++ {
		if a.ActiveDays[h] == 0 {
			continue
		}
		start := h
		for h+1 < 24 && a.ActiveDays[h+1] > 0 {
			h++
		}
		parts = append(parts, fmt.Sprintf("%02d–%02d", start, h+1))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// rate is an agent's requests per hour for each hour of the week, as 48
// slots (weekday and weekend × 24 UTC hours), each an EWMA over the hours it
// covered.
type rate struct {
	Slots [48]slotRate `json:"slots"`
}

type slotRate struct {
	Mean float64 `json:"mean"`
	Min  int     `json:"min"` // the quietest hour the slot has seen
	N    int     `json:"n"`
}

func (r *rate) update(slot, count int) {
	s := &r.Slots[slot]
	if s.N == 0 {
		s.Mean, s.Min = float64(count), count
	} else {
		s.Mean = slotAlpha*float64(count) + (1-slotAlpha)*s.Mean
		s.Min = min(s.Min, count)
	}
	s.N++
}

// always is the fewest requests the slot has had in any of its hours, once
// it has three or more behind it.
func (r *rate) always(slot int) (int, bool) {
	s := r.Slots[slot]
	return s.Min, s.N >= 3
}

// perHour is the slot's rate once it has two or more hours behind it.
func (r *rate) perHour(slot int) (float64, bool) {
	s := r.Slots[slot]
	return s.Mean, s.N >= 2
}

// perMinute is the slot's rate per minute; a slot with fewer than two hours
// behind it takes the busiest learned slot, so that an unlearned hour of
// the week does not read as a burst.
func (r *rate) perMinute(slot int) (float64, bool) {
	if m, ok := r.perHour(slot); ok {
		return m / 60, true
	}
	best, ok := 0.0, false
	for _, s := range r.Slots {
		if s.N >= 1 && s.Mean >= best {
			best, ok = s.Mean, true
		}
	}
	return best / 60, ok
}

func slotOf(t time.Time) int {
	t = t.UTC()
	s := t.Hour()
	if wd := t.Weekday(); wd == time.Saturday || wd == time.Sunday {
		s += 24
	}
	return s
}

func slotName(slot int) string {
	kind := "weekdays"
	if slot >= 24 {
		kind = "weekends"
	}
	return fmt.Sprintf("%s %02d:00–%02d:59 UTC", kind, slot%24, slot%24)
}

// valueSet is a bounded set of strings.
type valueSet struct {
	Values map[string]bool `json:"values"`
}

func newSet() valueSet                      { return valueSet{Values: map[string]bool{}} }
func (s *valueSet) has(v string) bool       { return s.Values[v] }
func (s *valueSet) len() int                { return len(s.Values) }
func (s *valueSet) full(maxValues int) bool { return len(s.Values) >= maxValues }
func (s *valueSet) add(v string, maxValues int) {
	if len(s.Values) < maxValues {
		s.Values[v] = true
	}
}

func (s *valueSet) summary(n int) string {
	vs := slices.Sorted(maps.Keys(s.Values))
	if len(vs) > n {
		return strings.Join(vs[:n], ", ") + fmt.Sprintf(" and %d more", len(vs)-n)
	}
	if len(vs) == 0 {
		return "none"
	}
	return strings.Join(vs, ", ")
}
