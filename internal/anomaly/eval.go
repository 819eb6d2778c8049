package anomaly

import (
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"
)

// Score is how a detector run did against a generated history's labels.
type Score struct {
	Agents, Days, Events int
	Kinds                []KindScore
	Rules                []RuleScore
	Incidents, Detected  int
	Alerts, FalseAlerts  int
	// FalsePer100AgentDays is false alerts per 100 agent-days of traffic.
	FalsePer100AgentDays float64
}

// Recall over every incident.
func (s *Score) Recall() float64 { return ratio(s.Detected, s.Incidents) }

// Precision over every alert.
func (s *Score) Precision() float64 { return ratio(s.Alerts-s.FalseAlerts, s.Alerts) }

// KindScore is one incident kind's recall and detection delay (record time
// from the first bad request to the first alert about it).
type KindScore struct {
	Kind                  string
	Incidents, Detected   int
	MedianDelay, MaxDelay time.Duration
	Rules                 []string // the rules that caught it
}

// RuleScore is one rule's alerts and how many matched an incident.
type RuleScore struct {
	Rule         string
	Alerts, True int
}

// grace after an incident's end in which an alert about its agent still
// counts as catching it; drift is judged per day, so it gets a day and a half.
func grace(kind string) time.Duration {
	if kind == IncidentDrift {
		return 36 * time.Hour
	}
	return time.Hour
}

// Evaluate scores alerts against t's incidents. An alert is true when it is
// about an incident's agent (or certificate) and the records behind it
// (from its Since to its Time) overlap the incident, from its start to its
// end plus a grace period. An incident's delay runs from its start to the
// first true alert about it.
func Evaluate(t *Traffic, alerts []Alert) *Score {
	s := &Score{Agents: t.Agents, Days: t.Days, Events: len(t.Events), Incidents: len(t.Incidents), Alerts: len(alerts)}
	first := make([]time.Time, len(t.Incidents))
	caught := make([]map[string]bool, len(t.Incidents))
	rules := map[string]*RuleScore{}
	for _, a := range alerts {
		rs := rules[a.Rule]
		if rs == nil {
			rs = &RuleScore{Rule: a.Rule}
			rules[a.Rule] = rs
		}
		rs.Alerts++
		matched := false
		for i, in := range t.Incidents {
			if !about(a, in) {
				continue
			}
			matched = true
			if first[i].IsZero() || a.Time.Before(first[i]) {
				first[i] = a.Time
			}
			if caught[i] == nil {
				caught[i] = map[string]bool{}
			}
			caught[i][a.Rule] = true
		}
		if matched {
			rs.True++
		} else {
			s.FalseAlerts++
		}
	}
	for _, kind := range IncidentKinds {
		ks := KindScore{Kind: kind}
		var delays []time.Duration
		seen := map[string]bool{}
		for i, in := range t.Incidents {
			if in.Kind != kind {
				continue
			}
			ks.Incidents++
			if first[i].IsZero() {
				continue
			}
			ks.Detected++
			delays = append(delays, first[i].Sub(in.Start))
			for r := range caught[i] {
				if !seen[r] {
					seen[r] = true
					ks.Rules = append(ks.Rules, r)
				}
			}
		}
		if ks.Incidents == 0 {
			continue
		}
		slices.Sort(delays)
		slices.Sort(ks.Rules)
		if len(delays) > 0 {
			ks.MedianDelay, ks.MaxDelay = delays[len(delays)/2], delays[len(delays)-1]
		}
		s.Detected += ks.Detected
		s.Kinds = append(s.Kinds, ks)
	}
	for _, r := range Rules {
		if rs := rules[r]; rs != nil {
			s.Rules = append(s.Rules, *rs)
		}
	}
	s.FalsePer100AgentDays = 100 * float64(s.FalseAlerts) / float64(max(t.Agents*t.Days, 1))
	return s
}

// Write prints the score as the tables in docs/anomaly.md.
func (s *Score) Write(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "%d agents, %d days, %d records, %d incidents\n\n", s.Agents, s.Days, s.Events, s.Incidents)
	fmt.Fprintln(tw, "INCIDENT KIND\tINCIDENTS\tDETECTED\tRECALL\tMEDIAN DELAY\tMAX DELAY\tCAUGHT BY")
	for _, k := range s.Kinds {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.2f\t%v\t%v\t%v\n", k.Kind, k.Incidents, k.Detected, ratio(k.Detected, k.Incidents), k.MedianDelay, k.MaxDelay, k.Rules)
	}
	fmt.Fprintln(tw, "\nRULE\tALERTS\tTRUE\tFALSE\tPRECISION")
	for _, r := range s.Rules {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%.2f\n", r.Rule, r.Alerts, r.True, r.Alerts-r.True, ratio(r.True, r.Alerts))
	}
	fmt.Fprintf(tw, "\nrecall %.3f  precision %.3f  false alerts %d = %.2f per 100 agent-days\n",
		s.Recall(), s.Precision(), s.FalseAlerts, s.FalsePer100AgentDays)
	return tw.Flush()
}

func ratio(a, b int) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func about(a Alert, in Incident) bool {
	since := a.Since
	if since.IsZero() || since.After(a.Time) {
		since = a.Time
	}
	return a.Agent == in.Agent && !a.Time.Before(in.Start) && !since.After(in.End.Add(grace(in.Kind)))
}
