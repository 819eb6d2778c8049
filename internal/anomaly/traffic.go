package anomaly

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// Incident kinds the traffic generator injects.
const (
	IncidentStolenCert  = "stolen_certificate"
	IncidentProbing     = "scope_probing"
	IncidentExfil       = "read_burst"
	IncidentOffHours    = "off_hours_payments"
	IncidentNewOp       = "new_operation"
	IncidentDrift       = "slow_drift"
	IncidentIdentityRun = "identity_failures"
)

// IncidentKinds lists every kind the generator injects.
var IncidentKinds = []string{IncidentStolenCert, IncidentProbing, IncidentExfil, IncidentOffHours, IncidentNewOp, IncidentDrift, IncidentIdentityRun}

// Incident is one injected misbehaviour, for scoring only: the detectors
// never see it.
type Incident struct {
	ID    int
	Kind  string
	Agent string // the agent (SPIFFE ID), or the certificate hash for identity failures
	Start time.Time
	End   time.Time
}

// Traffic is a generated history: events in time order and the incidents in
// it.
type Traffic struct {
	Events    []Event
	Incidents []Incident
	Agents    int
	Days      int
}

// TrafficConfig shapes the generator.
type TrafficConfig struct {
	Seed      uint64
	Agents    int     // default 50
	Days      int     // default 14
	RateScale float64 // multiplies every agent's rate; default 1
	PerKind   int     // incidents of each kind; default 4
}

type simAgent struct {
	spiffe, id, cert string
	kind             int // 0 business hours, 1 around the clock, 2 extended hours every day
	peak             float64
	ops              []string
	weights          []float64
	lacks            []string // operations it has no scope for
	spare            string   // an operation it may do but never does
	nets             []string
}

var (
	simOps = []string{"payments:read", "payments:initiate", "sanctions:screen", "merchants:onboard", "loans:repay",
		"reports:read", "refunds:issue", "accounts:read", "accounts:close", "limits:raise"}
	simRoutes = map[string][2]string{
		"payments:read": {"GET", "/v1/payments/%d"}, "payments:initiate": {"POST", "/v1/payments"},
		"sanctions:screen": {"POST", "/v1/sanctions/screenings"}, "merchants:onboard": {"POST", "/v1/merchants"},
		"loans:repay": {"POST", "/v1/loans/%d/repayments"}, "reports:read": {"GET", "/v1/reports/%d"},
		"refunds:issue": {"POST", "/v1/refunds"}, "accounts:read": {"GET", "/v1/accounts/%d"},
		"accounts:close": {"DELETE", "/v1/accounts/%d"}, "limits:raise": {"PUT", "/v1/limits/%d"},
	}
)

// epoch is a Monday.
var epoch = time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC)

// Generate makes a seeded history with daily and weekly patterns and labelled
// incidents. The same config always gives the same history.
func Generate(c TrafficConfig) *Traffic {
	if c.Agents <= 0 {
		c.Agents = 50
	}
	if c.Days <= 0 {
		c.Days = 14
	}
	if c.RateScale <= 0 {
		c.RateScale = 1
	}
	if c.PerKind <= 0 {
		c.PerKind = 4
	}
	rng := rand.New(rand.NewPCG(c.Seed, c.Seed^0x9e3779b97f4a7c15)) //nolint:gosec // a seeded, repeatable simulation
	agents := make([]*simAgent, c.Agents)
	for i := range agents {
		a := &simAgent{id: fmt.Sprintf("agent-%02d", i), kind: i % 3}
		a.spiffe = "spiffe://acme.example/agent/" + a.id
		a.cert = fmt.Sprintf("%064x", rng.Uint64()+uint64(i)<<40)
		a.peak = []float64{0.3, 0.6, 1, 2, 4}[rng.IntN(5)] * c.RateScale
		perm := rng.Perm(len(simOps))
		nops := 1 + rng.IntN(3)
		for _, p := range perm[:nops] {
			a.ops = append(a.ops, simOps[p])
			a.weights = append(a.weights, 0.2+rng.Float64())
		}
		a.spare = simOps[perm[nops]]
		for _, p := range perm[nops+1 : nops+6] {
			a.lacks = append(a.lacks, simOps[p])
		}
		for range 1 + rng.IntN(2) {
			a.nets = append(a.nets, fmt.Sprintf("10.%d.%d", 1+rng.IntN(200), rng.IntN(250)))
		}
		agents[i] = a
	}
	t := &Traffic{Agents: c.Agents, Days: c.Days}
	var seq int
	emit := func(e Event) {
		seq++
		e.DecisionID = fmt.Sprintf("sim-%08d", seq)
		e.Log = "sim"
		t.Events = append(t.Events, e)
	}
	request := func(a *simAgent, at time.Time, op, net string, allowed bool, reason string) {
		r := simRoutes[op]
		path := r[1]
		if strings.Contains(path, "%") {
			path = fmt.Sprintf(path, 1000+rng.IntN(9000))
		}
		emit(Event{Time: at, Agent: a.spiffe, AgentID: a.id, Tenant: "acme.example", CertSHA256: a.cert, Source: "peer_certificate",
			Operation: op, Route: Route(r[0], path), Host: "api.acme.example", Network: net + ".0/24", Allowed: allowed, Reason: reason})
	}

	// Clean traffic: a Poisson count per agent-minute from the agent's
	// daily and weekly shape, with a day-to-day factor.
	for day := range c.Days {
		date := epoch.AddDate(0, 0, day)
		weekend := date.Weekday() == time.Saturday || date.Weekday() == time.Sunday
		for _, a := range agents {
			dayFactor := 0.8 + 0.4*rng.Float64()
			if date.Weekday() == time.Monday {
				dayFactor *= 1.3
			}
			endHour := 17.0 + rng.Float64()*1.5 // business agents stop between 17:00 and 18:30
			for m := range 24 * 60 {
				hour := float64(m) / 60
				var shape float64
				switch a.kind {
				case 0:
					if !weekend && hour >= 9 && hour < endHour {
						shape = 0.6 + 0.4*math.Sin(math.Pi*(hour-9)/8)
					}
				case 1:
					shape = 0.5 + 0.3*math.Sin(2*math.Pi*(hour-6)/24)
					if weekend {
						shape *= 0.6
					}
				default:
					if hour >= 7 && hour < 22 {
						shape = 0.7 + 0.3*math.Sin(math.Pi*(hour-7)/15)
					}
					if weekend {
						shape *= 0.5
					}
				}
				n := poisson(rng, a.peak*shape*dayFactor)
				for range n {
					at := date.Add(time.Duration(m)*time.Minute + time.Duration(rng.IntN(60000))*time.Millisecond)
					if rng.IntN(500) == 0 {
						// Now and then a misconfigured client asks for the
						// one operation it lacks the scope for.
						request(a, at, a.lacks[0], a.nets[0], false, "scope_missing")
						continue
					}
					request(a, at, a.pick(rng), a.nets[rng.IntN(len(a.nets))], true, "allowed")
				}
			}
		}
	}

	// Incidents, on distinct agents where the kind needs it, after the
	// first five days (warm-up and a baseline to compare against).
	id := 0
	used := map[string]bool{}
	pickAgent := func(kind int) *simAgent {
		for range 1000 {
			a := agents[rng.IntN(len(agents))]
			if (kind < 0 || a.kind == kind) && !used[a.id] {
				used[a.id] = true
				return a
			}
		}
		panic("anomaly: not enough agents for the incidents")
	}
	// workTime is a time the agent works on day, or on the weekday before.
	workTime := func(a *simAgent, day int) time.Time {
		for {
			d := epoch.AddDate(0, 0, day)
			if a.kind != 0 || (d.Weekday() != time.Saturday && d.Weekday() != time.Sunday) {
				return d.Add(time.Duration(10+rng.IntN(5))*time.Hour + time.Duration(rng.IntN(60))*time.Minute)
			}
			day--
		}
	}
	incidentDay := func() int { return 5 + rng.IntN(c.Days-6) }
	add := func(kind, agent string, start, end time.Time) {
		id++
		t.Incidents = append(t.Incidents, Incident{ID: id, Kind: kind, Agent: agent, Start: start, End: end})
	}
	for range c.PerKind {
		// A stolen certificate used from a new network while the agent works.
		a := pickAgent(-1)
		start := workTime(a, incidentDay())
		net := fmt.Sprintf("203.0.%d", rng.IntN(250))
		for i := range 30 {
			request(a, start.Add(time.Duration(i)*time.Minute+time.Duration(rng.IntN(50))*time.Second), a.pick(rng), net, true, "allowed")
		}
		add(IncidentStolenCert, a.spiffe, start, start.Add(30*time.Minute))

		// Scope probing: operations it may not do, one after another.
		a = pickAgent(-1)
		start = workTime(a, incidentDay())
		for i, op := range a.lacks {
			request(a, start.Add(time.Duration(i*20+rng.IntN(15))*time.Second), op, a.nets[0], false, "scope_missing")
		}
		add(IncidentProbing, a.spiffe, start, start.Add(3*time.Minute))

		// A read burst, as data exfiltration looks.
		a = pickAgent(-1)
		start = workTime(a, incidentDay())
		op := a.ops[0]
		n := int(math.Max(30, 20*a.peak)) * 15
		for i := range n {
			request(a, start.Add(time.Duration(i)*15*time.Minute/time.Duration(n)), op, a.nets[0], true, "allowed")
		}
		add(IncidentExfil, a.spiffe, start, start.Add(15*time.Minute))

		// Payments at night by an agent that works office hours.
		a = pickAgent(0)
		d := epoch.AddDate(0, 0, incidentDay())
		start = d.Add(time.Duration(1+rng.IntN(3))*time.Hour + time.Duration(rng.IntN(30))*time.Minute)
		for i := range 5 {
			request(a, start.Add(time.Duration(i*4+rng.IntN(3))*time.Minute), "payments:initiate", a.nets[0], true, "allowed")
		}
		add(IncidentOffHours, a.spiffe, start, start.Add(25*time.Minute))

		// An operation it may do but never did.
		a = pickAgent(-1)
		start = workTime(a, incidentDay())
		for i := range 10 {
			request(a, start.Add(time.Duration(i*6+rng.IntN(5))*time.Minute), a.spare, a.nets[0], true, "allowed")
		}
		add(IncidentNewOp, a.spiffe, start, start.Add(time.Hour))

		// Repeated identity failures with one certificate (expired, then
		// forged XFCC), as someone trying a stolen key would.
		cert := fmt.Sprintf("%064x", rng.Uint64())
		day := incidentDay()
		start = epoch.AddDate(0, 0, day).Add(time.Duration(rng.IntN(24*60)) * time.Minute)
		for i := range 8 {
			emit(Event{Time: start.Add(time.Duration(i*20+rng.IntN(10)) * time.Second), CertSHA256: cert,
				Network: fmt.Sprintf("198.51.%d.0/24", rng.IntN(250)), Reason: []string{"certificate_expired", "untrusted_issuer"}[i%2],
				Route: "POST /v1/payments"})
		}
		add(IncidentIdentityRun, cert, start, start.Add(3*time.Minute))
	}
	// Slow drift: a compromised agent's main operation grows 45 % a day
	// from day 6 on, spread over its usual hours.
	for range c.PerKind {
		a := pickAgent(-1)
		start := epoch.AddDate(0, 0, 6)
		op := a.ops[0]
		for day := 6; day < c.Days; day++ {
			extra := a.peak * 300 * (math.Pow(1.45, float64(day-5)) - 1)
			for range poisson(rng, extra) {
				at := workTime(a, day).Add(time.Duration(rng.IntN(4*3600)) * time.Second)
				if at.Before(epoch.AddDate(0, 0, c.Days)) {
					request(a, at, op, a.nets[0], true, "allowed")
				}
			}
		}
		add(IncidentDrift, a.spiffe, start, epoch.AddDate(0, 0, c.Days))
	}
	slices.SortStableFunc(t.Events, func(x, y Event) int { return x.Time.Compare(y.Time) })
	return t
}

func (a *simAgent) pick(rng *rand.Rand) string {
	total := 0.0
	for _, w := range a.weights {
		total += w
	}
	x := rng.Float64() * total
	for i, w := range a.weights {
		if x < w {
			return a.ops[i]
		}
		x -= w
	}
	return a.ops[len(a.ops)-1]
}

// poisson draws from a Poisson distribution (Knuth for small means, a
// rounded normal for large ones).
func poisson(rng *rand.Rand, mean float64) int {
	if mean <= 0 {
		return 0
	}
	if mean > 30 {
		return max(0, int(math.Round(mean+math.Sqrt(mean)*rng.NormFloat64())))
	}
	l, k, p := math.Exp(-mean), 0, 1.0
	for {
		p *= rng.Float64()
		if p <= l {
			return k
		}
		k++
	}
}
