package anomaly

import (
	"strings"
	"testing"
)

// TestDetectionOnGeneratedTraffic runs every detector over the seeded
// 50-agent, 14-day history and checks the targets docs/anomaly.md reports:
// recall ≥ 0.95 over all injected incidents, at most one false alert per 100
// agent-days on the clean traffic, and a median delay of at most a minute for
// bursts and probing. The labels are used only here, to score.
func TestDetectionOnGeneratedTraffic(t *testing.T) {
	tr := Generate(TrafficConfig{Seed: 1, RateScale: rateScaleForTests()})
	d := New(Config{}, nil)
	var alerts []Alert
	for _, e := range tr.Events {
		alerts = append(alerts, d.Observe(e)...)
	}
	s := Evaluate(tr, alerts)
	var out strings.Builder
	if err := s.Write(&out); err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + out.String())
	if s.Recall() < 0.95 {
		t.Errorf("recall %.3f < 0.95", s.Recall())
	}
	if s.FalsePer100AgentDays > 1 {
		t.Errorf("%.2f false alerts per 100 agent-days > 1", s.FalsePer100AgentDays)
		for _, a := range alerts {
			if !matches(tr, a) {
				t.Logf("false: %s %s %s key=%s observed=%s baseline=%s", a.Time.Format("2006-01-02T15:04"), a.Rule, a.Agent, a.Key, a.Observed, a.Baseline)
			}
		}
	}
	for _, k := range s.Kinds {
		if (k.Kind == IncidentExfil || k.Kind == IncidentProbing) && k.MedianDelay.Seconds() > 60 {
			t.Errorf("%s: median delay %v > 60 s", k.Kind, k.MedianDelay)
		}
	}
}

func matches(tr *Traffic, a Alert) bool {
	for _, in := range tr.Incidents {
		if about(a, in) {
			return true
		}
	}
	return false
}

// rateScaleForTests keeps make test quick: a third of the traffic of the
// figures in docs/anomaly.md, same shapes.
func rateScaleForTests() float64 {
	if testing.Short() {
		return 0.2
	}
	return 0.35
}
