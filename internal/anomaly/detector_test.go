package anomaly

import (
	"bytes"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 2, 9, 0, 0, 0, time.UTC) // a Monday

// steady makes n days of one agent working 09:00–17:00 on weekdays, reading
// payments from one network at about one request a minute.
func steady(agent string, days int) []Event {
	var out []Event
	for d := range days {
		day := t0.AddDate(0, 0, d)
		if wd := day.Weekday(); wd == time.Saturday || wd == time.Sunday {
			continue
		}
		for m := range 8 * 60 {
			out = append(out, ev(agent, day.Add(time.Duration(m)*time.Minute+17*time.Second), "payments:read", "10.0.1.7:4000", true, "allowed"))
		}
	}
	return out
}

var seq int

func ev(agent string, at time.Time, op, src string, allowed bool, reason string) Event {
	seq++
	e := Event{Time: at, DecisionID: fmt.Sprintf("d%d", seq), Agent: "spiffe://acme.example/agent/" + agent, AgentID: agent,
		Tenant: "acme.example", CertSHA256: "cert-" + agent, Source: "peer_certificate", Operation: op,
		Route: Route("GET", "/v1/payments/42"), Network: Network(src), Allowed: allowed, Reason: reason}
	return e
}

func feed(d *Detector, es []Event) []Alert {
	var out []Alert
	for _, e := range es {
		out = append(out, d.Observe(e)...)
	}
	return out
}

func rules(as []Alert) []string {
	var out []string
	for _, a := range as {
		if !slices.Contains(out, a.Rule) {
			out = append(out, a.Rule)
		}
	}
	slices.Sort(out)
	return out
}

func TestNewAgentIsUnbaselinedNotAnomalous(t *testing.T) {
	d := New(Config{}, nil)
	// A brand-new agent using a new network and operation on its first day.
	as := feed(d, steady("fresh", 1))
	as = append(as, d.Observe(ev("fresh", t0.Add(3*time.Hour), "payments:initiate", "192.0.2.9:1", true, "allowed"))...)
	if len(as) != 0 {
		t.Fatalf("alerts for an agent in warm-up: %v", rules(as))
	}
}

func TestFirstUseAfterBaseline(t *testing.T) {
	d := New(Config{}, nil)
	if as := feed(d, steady("a", 5)); len(as) != 0 {
		t.Fatalf("clean history raised %v", rules(as))
	}
	at := t0.AddDate(0, 0, 4).Add(2 * time.Hour)
	as := d.Observe(ev("a", at, "payments:initiate", "192.0.2.9:1", true, "allowed"))
	got := rules(as)
	want := []string{RuleNewOperation, RuleNewNetwork}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("rules %v, want %v", got, want)
	}
	for _, a := range as {
		if a.Baseline == "" || a.Observed == "" || a.Deviation == "" || len(a.DecisionIDs) != 1 {
			t.Fatalf("alert not explained: %+v", a)
		}
	}
	// The same again is not a first use.
	if as := d.Observe(ev("a", at.Add(time.Second), "payments:initiate", "192.0.2.9:1", true, "allowed")); len(as) != 0 {
		t.Fatalf("second use raised %v", rules(as))
	}
}

func TestDuplicatesAndLateRecords(t *testing.T) {
	d := New(Config{}, nil)
	feed(d, steady("a", 4)) // Monday to Thursday; the burst is on Friday
	at := t0.AddDate(0, 0, 4).Add(10 * time.Second)
	burst := make([]Event, 0, 40)
	for i := range 40 {
		burst = append(burst, ev("a", at.Add(time.Duration(i)*time.Second), "payments:read", "10.0.1.7:4000", true, "allowed"))
	}
	// Every record delivered twice (at-least-once shipping): one alert, and
	// the duplicates do not double the count it reports.
	var as []Alert
	for _, e := range burst {
		as = append(as, d.Observe(e)...)
		as = append(as, d.Observe(e)...)
	}
	if got := rules(as); !slices.Equal(got, []string{RuleRateBurst}) {
		t.Fatalf("rules %v", got)
	}
	// A record from before the current minute (another replica's clock is
	// behind) neither crashes nor counts into the current window.
	late := ev("a", at.Add(-10*time.Minute), "payments:read", "10.0.1.7:4000", true, "allowed")
	if as := d.Observe(late); len(as) != 0 {
		t.Fatalf("late record raised %v", rules(as))
	}
}

func TestFloodDoesNotHideAnotherAgent(t *testing.T) {
	d := New(Config{}, nil)
	var hist []Event
	hist = append(hist, steady("noisy", 4)...)
	hist = append(hist, steady("quiet", 4)...)
	slices.SortStableFunc(hist, func(x, y Event) int { return x.Time.Compare(y.Time) })
	feed(d, hist)
	at := t0.AddDate(0, 0, 4).Add(10 * time.Second)
	var as []Alert
	for i := range 20000 { // a flood: 20,000 requests in a minute
		as = append(as, d.Observe(ev("noisy", at.Add(time.Duration(i)*3*time.Millisecond), "payments:read", "10.0.1.7:4000", true, "allowed"))...)
	}
	noisy := len(as)
	if noisy == 0 || noisy > 4 {
		t.Fatalf("the flood raised %d alerts, want a few (cooldown)", noisy)
	}
	// The quiet agent's probing in the middle of it is still seen.
	for i, op := range []string{"refunds:issue", "accounts:close", "limits:raise"} {
		as = append(as, d.Observe(ev("quiet", at.Add(time.Duration(10+i)*time.Second), op, "10.0.1.7:4000", false, "scope_missing"))...)
	}
	found := false
	for _, a := range as[noisy:] {
		found = found || a.Rule == RuleScopeProbing && a.AgentID == "quiet"
	}
	if !found {
		t.Fatalf("quiet agent's probing not raised during the flood: %v", rules(as[noisy:]))
	}
}

func TestIdentityFailuresAndUnknownAgents(t *testing.T) {
	d := New(Config{}, nil)
	var as []Alert
	for i := range 6 {
		as = append(as, d.Observe(Event{Time: t0.Add(time.Duration(i) * 10 * time.Second), DecisionID: fmt.Sprintf("f%d", i),
			CertSHA256: "bad", Network: "198.51.100.0/24", Reason: "certificate_expired"})...)
	}
	if got := rules(as); !slices.Equal(got, []string{RuleIdentityFailures}) {
		t.Fatalf("rules %v", got)
	}
	if as[0].Agent != "bad" || len(as[0].DecisionIDs) != 5 {
		t.Fatalf("alert %+v", as[0])
	}
	// A record with nothing known about anybody is not an agent.
	if got := d.Observe(Event{Time: t0.Add(time.Minute), Reason: "no_client_certificate"}); len(got) != 0 {
		t.Fatalf("anonymous record raised %v", rules(got))
	}
	if len(d.State().Agents) != 0 {
		t.Fatalf("identity failures created agents: %v", d.State().Agents)
	}
}

// The state survives a restart: a detector restored from a save raises the
// same alerts as one that never stopped.
func TestStateSurvivesRestart(t *testing.T) {
	tr := Generate(TrafficConfig{Seed: 7, Agents: 12, Days: 9, RateScale: 0.2, PerKind: 1})
	half := len(tr.Events) / 2
	whole := New(Config{}, nil)
	want := feed(whole, tr.Events)

	first := New(Config{}, nil)
	got := feed(first, tr.Events[:half])
	var buf bytes.Buffer
	if err := first.State().Save(&buf); err != nil {
		t.Fatal(err)
	}
	st, err := Load(&buf)
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, feed(New(Config{}, st), tr.Events[half:])...)
	if len(got) != len(want) || len(want) == 0 {
		t.Fatalf("%d alerts after a restart, %d without (want equal and > 0)", len(got), len(want))
	}
	for i := range want {
		if got[i].Rule != want[i].Rule || got[i].Agent != want[i].Agent || !got[i].Time.Equal(want[i].Time) {
			t.Fatalf("alert %d: %s %s %v after restart, %s %s %v without", i, got[i].Rule, got[i].Agent, got[i].Time, want[i].Rule, want[i].Agent, want[i].Time)
		}
	}
	if _, err := Load(bytes.NewBufferString(`{"version": 99}`)); err == nil {
		t.Fatal("a state of another version loaded")
	}
	if _, err := Load(bytes.NewBufferString(`{"version": 1}`)); err == nil {
		t.Fatal("an empty state loaded")
	}
}

func TestRouteAndNetwork(t *testing.T) {
	for _, c := range []struct{ method, path, want string }{
		{"GET", "/v1/payments/12345", "GET /v1/payments/*"},
		{"POST", "/v1/loans/7/repayments", "POST /v1/loans/*/repayments"},
		{"GET", "/a/b/c/d/e/f", "GET /a/b/c/d/…"},
		{"GET", "/v1/" + string(make([]byte, 30)), "GET /v1/*"},
	} {
		if got := Route(c.method, c.path); got != c.want {
			t.Errorf("Route(%s %s) = %q, want %q", c.method, c.path, got, c.want)
		}
	}
	for _, c := range []struct{ in, want string }{
		{"10.1.2.3:443", "10.1.2.0/24"}, {"[2001:db8:1:2::1]:443", "2001:db8:1::/48"}, {"10.1.2.3", "10.1.2.0/24"},
		{"[::ffff:10.1.2.3]:1", "10.1.2.0/24"}, {"", ""}, {"nonsense", ""},
	} {
		if got := Network(c.in); got != c.want {
			t.Errorf("Network(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestRateDrop(t *testing.T) {
	d := New(Config{}, nil)
	var hist []Event
	for day := range 5 { // Monday to Friday, 09:00–17:00, one request every 20 s
		for s := 0; s < 8*3600; s += 20 {
			at := t0.AddDate(0, 0, day).Add(time.Duration(s) * time.Second)
			if day == 4 && at.Hour() >= 11 {
				break // Friday: silent from 11:00
			}
			hist = append(hist, ev("worker", at, "payments:read", "10.0.1.7:4000", true, "allowed"))
		}
	}
	// Another agent keeps the clock moving through Friday.
	for m := 0; m < 8*60; m += 5 {
		hist = append(hist, ev("other", t0.AddDate(0, 0, 4).Add(time.Duration(m)*time.Minute), "payments:read", "10.0.9.9:1", true, "allowed"))
	}
	slices.SortStableFunc(hist, func(x, y Event) int { return x.Time.Compare(y.Time) })
	as := feed(d, hist)
	var drop []Alert
	for _, a := range as {
		if a.Rule == RuleRateDrop {
			drop = append(drop, a)
		}
	}
	if len(drop) != 1 || drop[0].AgentID != "worker" {
		t.Fatalf("drop alerts %+v (all rules %v)", drop, rules(as))
	}
	if want := t0.AddDate(0, 0, 4).Add(3 * time.Hour); !drop[0].Time.Equal(want) {
		t.Fatalf("drop raised at %v, want %v (after a silent hour)", drop[0].Time, want)
	}
}

// failure is an identity failure of certificate cert on a replica.
func failure(at time.Time, cert, src string) Event {
	seq++
	return Event{Time: at, DecisionID: fmt.Sprintf("d%d", seq), Log: "replica-1", CertSHA256: cert, Issuer: "CN=Forged CA",
		Network: Network(src), Reason: "untrusted_issuer", Route: "POST /v1/payments"}
}

// TestSprayIsOneAlert: 10,000 forged certificates, each tried five times
// (one identity_failures alert per certificate before), give a handful of
// alerts: a few per certificate until the spray is recognised, one for the
// spray and one with its totals when it ends. A certificate the CA issued
// that fails meanwhile still has its own alert.
func TestSprayIsOneAlert(t *testing.T) {
	genuine := fmt.Sprintf("%064x", 1)
	d := New(Config{KnownCertificate: func(h string) bool { return h == genuine }}, nil)
	var as []Alert
	const certs, tries = 10_000, identityCount
	for i := range certs {
		at := t0.Add(time.Duration(i) * 50 * time.Millisecond) // 10,000 certificates in 8 min 20 s
		cert := fmt.Sprintf("%064x", 1_000_000+i)
		for j := range tries {
			as = append(as, d.Observe(failure(at.Add(time.Duration(j)*time.Millisecond), cert, fmt.Sprintf("203.0.%d.9:4000", i%200)))...)
		}
		if i == 5000 { // a genuine agent's expired certificate, five times
			for j := range identityCount {
				e := failure(at.Add(time.Duration(j)*time.Millisecond), genuine, "10.0.1.7:4000")
				e.Reason = "certificate_expired"
				as = append(as, d.Observe(e)...)
			}
		}
	}
	// Record time moves on (another agent's request): the spray has ended.
	as = append(as, d.Observe(ev("other", t0.Add(20*time.Minute), "payments:read", "10.0.1.7:4000", true, "allowed"))...)

	var perCert, spray, total, own int
	for _, a := range as {
		switch {
		case a.Rule != RuleIdentityFailures:
			t.Errorf("unexpected %s alert: %+v", a.Rule, a)
		case a.Agent == genuine:
			own++
		case a.Key == "spray":
			spray++
		case a.Key == "spray total":
			total++
			want := fmt.Sprintf("%d identity failures of %d different certificates", certs*tries, certs)
			if a.Count != certs*tries || !strings.HasPrefix(a.Observed, want) || len(a.Sample) != maxSample || a.Agent != "replica:replica-1" {
				t.Errorf("the spray's totals: count %d, sample %d, agent %s, observed %q; want %q…", a.Count, len(a.Sample), a.Agent, a.Observed, want)
			}
		default:
			perCert++
		}
	}
	if spray != 1 || total != 1 || own != 1 || perCert >= sprayDistinct {
		t.Fatalf("%d alerts: %d per forged certificate, %d spray, %d totals, %d genuine; want < %d, 1, 1, 1", len(as), perCert, spray, total, own, sprayDistinct)
	}
	if n := len(d.State().Failures); n > maxFailureKeys {
		t.Errorf("%d identity-failure windows kept", n)
	}
}

// TestSprayBeyondTheWindows: more certificates at once than the
// per-certificate windows hold are still counted, as not told apart.
func TestSprayBeyondTheWindows(t *testing.T) {
	d := New(Config{}, nil)
	var as []Alert
	const certs = 2 * maxFailureKeys
	for i := range certs {
		as = append(as, d.Observe(failure(t0.Add(time.Duration(i)*time.Millisecond), fmt.Sprintf("%064x", i), "[2001:db8::1]:443"))...)
	}
	as = append(as, d.Observe(ev("other", t0.Add(time.Hour), "payments:read", "10.0.1.7:4000", true, "allowed"))...)
	if len(as) != 2 || as[0].Key != "spray" || as[1].Key != "spray total" {
		t.Fatalf("%d alerts, want the spray and its totals: %+v", len(as), as)
	}
	if a := as[1]; a.Count != certs || !strings.Contains(a.Observed, fmt.Sprintf("%d or more (%d failures not told apart)", maxFailureKeys, maxFailureKeys)) {
		t.Errorf("totals: count %d, %q", a.Count, a.Observed)
	}
	if n := len(d.State().Failures); n > maxFailureKeys {
		t.Errorf("%d identity-failure windows kept", n)
	}
}

// TestRuleCap: over MaxAlertsPerRule alerts of one rule in an hour, the
// rest are held back and counted: one marker when the cap is reached, one
// with the count when the hour ends. Other rules are not held back.
func TestRuleCap(t *testing.T) {
	d := New(Config{MaxAlertsPerRule: 3}, nil)
	var as []Alert
	for i := range 10 {
		for j, op := range []string{"refunds:issue", "accounts:close", "limits:raise"} {
			as = append(as, d.Observe(ev(fmt.Sprint("bot-", i), t0.Add(time.Duration(i)*time.Minute+time.Duration(j)*time.Second), op, "10.0.1.7:4000", false, "scope_missing"))...)
		}
	}
	for i := range identityCount {
		as = append(as, d.Observe(failure(t0.Add(20*time.Minute+time.Duration(i)*time.Second), "bad", "198.51.100.1:4000"))...)
	}
	as = append(as, d.Observe(ev("bot-0", t0.Add(90*time.Minute), "payments:read", "10.0.1.7:4000", true, "allowed"))...)
	count := map[string]int{}
	for _, a := range as {
		count[a.Rule+" "+a.Key]++
	}
	want := map[string]int{RuleScopeProbing + " ": 3, RuleSuppressed + " " + RuleScopeProbing: 1,
		RuleSuppressed + " " + RuleScopeProbing + " total": 1, RuleIdentityFailures + " untrusted_issuer": 1}
	if !maps.Equal(count, want) {
		t.Fatalf("alerts %v, want %v", count, want)
	}
	last := as[len(as)-1]
	if last.Count != 7 || !strings.HasPrefix(last.Observed, "7 scope_probing alerts held back") || len(last.Sample) != 7 {
		t.Errorf("the hour's marker: %+v", last)
	}
}

// stateSeed is a saved state with agents, identity-failure windows, a
// spray in progress and a rule's cap reached.
func stateSeed() []byte {
	d := New(Config{MaxAlertsPerRule: 1}, nil)
	feed(d, steady("bot", 4))
	for i := range 3 {
		for j, op := range []string{"refunds:issue", "accounts:close", "limits:raise"} {
			d.Observe(ev(fmt.Sprint("probe-", i), t0.Add(time.Duration(i)*time.Minute+time.Duration(j)*time.Second), op, "10.0.1.7:4000", false, "scope_missing"))
		}
	}
	for i := range 8 {
		d.Observe(failure(t0.AddDate(0, 0, 4).Add(time.Duration(i)*time.Second), fmt.Sprintf("%064x", i), "203.0.113.9:4000"))
	}
	var buf bytes.Buffer
	if err := d.State().Save(&buf); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

// FuzzLoad: any state file loads or is refused, and a detector over one
// that loads takes records without panicking.
func FuzzLoad(f *testing.F) {
	f.Add(stateSeed())
	f.Add([]byte(`{"version":1,"agents":{},"certs":{},"identity_failures":{},"cooldowns":{}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := Load(bytes.NewReader(b))
		if err != nil {
			return
		}
		d := New(Config{MaxAlertsPerRule: 2}, st)
		at := st.Clock
		seq = 1 << 30 // decision ids the state has not seen
		for i := range 3 {
			at = at.Add(time.Duration(i) * 40 * time.Minute)
			d.Observe(ev("bot", at, "payments:read", "10.0.1.7:4000", true, "allowed"))
			d.Observe(ev("probe-1", at.Add(time.Second), "refunds:issue", "10.0.9.7:4000", false, "scope_missing"))
			d.Observe(failure(at.Add(2*time.Second), fmt.Sprintf("%064x", i), "203.0.113.9:4000"))
			d.Observe(Event{Time: at.Add(3 * time.Second), DecisionID: fmt.Sprint("fz-", i), Agent: "spiffe://acme.example/agent/bot",
				CertSHA256: fmt.Sprintf("%064x", i), Network: "10.9.9.0/24", Operation: "refunds:issue", Reason: "scope_missing"})
			d.Observe(ev("bot", at.AddDate(0, 0, 1), "payments:read", "10.0.1.7:4000", true, "allowed"))
		}
	})
}
