package evidence

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/agentauthz/agentauthz/internal/alerts"
	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/reason"
	"github.com/agentauthz/agentauthz/internal/simrun"
)

// Statuses of a control.
const (
	StatusEvidence = "evidence found"
	StatusGap      = "gap"
	StatusNA       = "not applicable"
)

// Report is the evidence pack.
type Report struct {
	Generated   time.Time           `json:"generated"`
	From        time.Time           `json:"from,omitzero"`
	To          time.Time           `json:"to,omitzero"`
	Seed        uint64              `json:"sample_seed"`
	Logs        []LogSource         `json:"logs"`
	ChangeLog   *ca.ChangeLogResult `json:"change_log,omitempty"`
	Controls    []Control           `json:"controls"`
	Mapping     []Mapping           `json:"mapping"`
	Sample      []Sample            `json:"sample"`
	Days        []Day               `json:"decisions_by_day"`
	Revocations []Revocation        `json:"revocations"`
	// Config is the serve configuration of each replica, as given.
	Config []ConfigFile `json:"config"`
}

// Control is one control's status and its evidence.
type Control struct {
	ID       string `json:"id"`
	Title    string `json:"title"`
	Status   string `json:"status"`
	Summary  string `json:"summary"`
	Evidence []Fact `json:"evidence"`
}

// Fact is one figure or finding, with the command that reproduces it.
type Fact struct {
	Label   string `json:"label"`
	Value   string `json:"value"`
	Command string `json:"command,omitempty"`
}

// Mapping relates a control to clauses of other frameworks that the same
// evidence supports.
type Mapping struct {
	Control string   `json:"control"`
	Clauses []string `json:"clauses"`
}

// Sample is one decision an auditor can re-perform the checks on.
type Sample struct {
	Log    string             `json:"log"`
	Record decisionlog.Record `json:"record"`
	Steps  []string           `json:"steps"`
}

// Day is one day's decisions.
type Day struct {
	Day     string `json:"day"`
	Allowed int    `json:"allowed"`
	Denied  int    `json:"denied"`
}

// Revocation is one revocation and its effect in the decision logs.
type Revocation struct {
	Tenant   string    `json:"tenant"`
	Agent    string    `json:"agent_id"`
	At       time.Time `json:"at"`
	Operator string    `json:"operator"`
	Detail   string    `json:"detail"`
	// FirstDenied is the first decision for the agent after At that was
	// denied for revocation; zero when the agent made no request after.
	FirstDenied time.Time `json:"first_denied,omitzero"`
	// AllowedAfter counts the agent's allowed decisions later than At plus
	// PropagationBound: each one would be a failure of the revocation.
	AllowedAfter int `json:"allowed_after"`
	// Others' allowed share in the hour before and after At.
	OthersBefore string `json:"others_allowed_hour_before"`
	OthersAfter  string `json:"others_allowed_hour_after"`
	// Replicas is the revocation's propagation: on each log, the first
	// refusal of the agent after At.
	Replicas []Propagation `json:"replicas"`
}

// Propagation is when one replica first refused a revoked agent.
type Propagation struct {
	Log         string    `json:"log"`
	FirstDenied time.Time `json:"first_denied,omitzero"` // zero: no request on this log after the revocation
	// Took is FirstDenied − At in milliseconds (an upper bound on the
	// propagation: the agent may have made no request earlier).
	TookMS *int64 `json:"took_ms,omitempty"`
}

// PropagationBound is how long a revocation may take to reach every
// replica before an allowed decision for the agent counts against it.
const PropagationBound = 5 * time.Second

func (r *Report) build(in Inputs, st *stats) {
	q := queryCmd(in, r.Logs)
	invCmd := inventoryCmd(in)
	inv := in.Inventory
	for _, day := range slices.Sorted(maps.Keys(st.byDay)) {
		r.Days = append(r.Days, Day{day, st.byDay[day][0], st.byDay[day][1]})
	}
	if inv != nil {
		r.ChangeLog = inv.ChangeLog
		r.Revocations = revocations(st, r.Logs)
	}
	r.Sample = sample(st, r.Logs)
	c := func(id, title string) *Control {
		r.Controls = append(r.Controls, Control{ID: id, Title: title})
		return &r.Controls[len(r.Controls)-1]
	}
	noDecisions := st.decisions == 0

	// CC6.1
	x := c("CC6.1", "Logical access: every privileged action attributable to one agent")
	shared := len(st.sharedCerts)
	x.Evidence = []Fact{
		{"decisions in the period", itoa(st.decisions), q("", "length")},
		{"decisions attributed to one agent identity", itoa(st.withIdentity), q("", `map(select(.agent.id != null)) | length`)},
		{"allowed decisions without an agent identity", itoa(st.anonAllowed), q("--allowed", `map(select(.agent.id == null)) | length`)},
		{"certificates presented by more than one agent id", itoa(shared), q("", `map(select(.agent.cert_sha256 != null)) | group_by(.agent.cert_sha256) | map(select((map(.agent.id) | unique | length) > 1)) | length`)},
	}
	switch {
	case noDecisions:
		x.Status, x.Summary = StatusGap, "no decisions in the period: nothing to attribute"
	case st.certsTruncated:
		x.Status, x.Summary = StatusGap, fmt.Sprintf("more than %d distinct certificates: the shared-certificate check stopped there (run it with the command shown)", maxCerts)
	case st.anonAllowed > 0 || shared > 0:
		x.Status, x.Summary = StatusGap, fmt.Sprintf("%d allowed decisions without identity, %d shared certificates", st.anonAllowed, shared)
	default:
		x.Status, x.Summary = StatusEvidence, "every allowed decision names one agent, and no certificate served two agent ids"
	}

	// CC6.2
	x = c("CC6.2", "Credentials before access: a verified certificate from a configured tenant CA")
	x.Evidence = []Fact{{"allowed decisions", itoa(st.allowed), q("--allowed", "length")},
		{"allowed decisions with a verified agent of a configured tenant", itoa(st.allowed - st.allowedWithoutTenant), q("--allowed", `map(select(.agent.tenant != null)) | length`)}}
	for _, code := range sortedKeys(st.identityFailures) {
		x.Evidence = append(x.Evidence, Fact{"identity refused: " + code, itoa(st.identityFailures[code]), q("--reason "+code, "length")})
	}
	switch {
	case noDecisions:
		x.Status, x.Summary = StatusGap, "no decisions in the period"
	case st.allowedWithoutTenant > 0:
		x.Status, x.Summary = StatusGap, fmt.Sprintf("%d allowed decisions without a tenant", st.allowedWithoutTenant)
	default:
		x.Status, x.Summary = StatusEvidence, fmt.Sprintf("all %d allowed decisions had a verified certificate; %d requests refused at identity", st.allowed, sum(st.identityFailures))
	}

	// CC6.3
	x = c("CC6.3", "Least privilege: agents use only what they were granted")
	for _, code := range []string{string(reason.ScopeMissing), string(reason.InsufficientTrustLevel), "unknown_operation", "agent_quarantined"} {
		x.Evidence = append(x.Evidence, Fact{"denied " + code, itoa(st.byReason[code]), q("--reason "+code, "length")})
	}
	x.Evidence = append(x.Evidence, Fact{"agents × operations exercised (allowed)", matrix(st.matrix), q("--allowed", `group_by(.agent.id) | map({(.[0].agent.id): (group_by(.request.operation) | map({(.[0].request.operation): length}) | add)}) | add`)})
	if inv != nil {
		unused := unusedScopes(inv, st)
		x.Evidence = append(x.Evidence, Fact{"active agents holding scopes they never used in the period", unused,
			invCmd("agent list --json", "") + "  # compare each agent's scopes with the matrix above"})
	}
	if noDecisions {
		x.Status, x.Summary = StatusGap, "no decisions in the period"
	} else {
		x.Status, x.Summary = StatusEvidence, fmt.Sprintf("%d requests denied for missing scope or trust; the matrix shows what each agent actually did", st.byReason[string(reason.ScopeMissing)]+st.byReason[string(reason.InsufficientTrustLevel)])
	}

	// CC6.6
	x = c("CC6.6", "Threats refused before any business logic")
	for _, code := range sortedKeys(st.threats) {
		x.Evidence = append(x.Evidence, Fact{"refused: " + code, itoa(st.threats[code]), q("--reason "+code, "length")})
	}
	x.Evidence = append(x.Evidence, Fact{"where they were refused", "at Envoy's ext_authz check: a denied request is answered by Envoy and never reaches the upstream", ""})
	if noDecisions {
		x.Status, x.Summary = StatusGap, "no decisions in the period"
	} else {
		x.Status, x.Summary = StatusEvidence, fmt.Sprintf("%d requests refused for untrusted, expired, forged or revoked credentials", sum(st.threats))
	}

	// CC6.7
	x = c("CC6.7", "Credential lifecycle")
	if inv == nil {
		x.Status, x.Summary = StatusGap, "no CA inventory given (--data-dir): lifecycle cannot be shown"
	} else {
		issued, renewed, reissued, expired := 0, 0, 0, 0
		revokedAgents := map[string]bool{} // a revocation is a serial and an agent-id event
		for _, e := range inv.Events {
			if !inPeriod(in, e.At) {
				continue
			}
			switch e.Event {
			case "issue":
				issued++
			case "renew":
				renewed++
			case "reissue":
				reissued++
			case "revoke", "agent_revoke":
				revokedAgents[agentKey(e.TrustDomain, e.AgentID)] = true
			}
		}
		var lifetimes []time.Duration
		for _, ct := range inv.Certs {
			lifetimes = append(lifetimes, ct.NotAfter.Sub(ct.NotBefore))
			if ct.NotAfter.After(in.From) && inPeriod(in, ct.NotAfter) && ct.Status != "revoked" {
				expired++
			}
		}
		slices.Sort(lifetimes)
		life := "none"
		if len(lifetimes) > 0 {
			life = fmt.Sprintf("min %v, median %v, max %v over %d certificates", lifetimes[0], lifetimes[len(lifetimes)/2], lifetimes[len(lifetimes)-1], len(lifetimes))
		}
		ev := invCmd("agent list --json", "/v1/changes") + "  # the events in the period"
		certs := invCmd("agent list --json", "/v1/agents/TENANT/ID")
		x.Evidence = []Fact{{"certificate lifetimes", life, certs},
			{"issued in the period", itoa(issued), ev}, {"renewed", itoa(renewed), ev}, {"reissued (new scopes or trust)", itoa(reissued), ev},
			{"agents revoked", itoa(len(revokedAgents)), ev}, {"certificates that expired in the period", itoa(expired), certs}}
		x.Status, x.Summary = StatusEvidence, fmt.Sprintf("%d issued, %d renewed, %d reissued, %d agents revoked in the period", issued, renewed, reissued, len(revokedAgents))
	}

	// CC6.8 and A1.1
	x = c("CC6.8", "Prevent unauthorised access: a revoked agent is refused everywhere, the others keep working")
	a1 := Control{ID: "A1.1", Title: "Availability: revoking one agent does not stop the others"}
	switch {
	case inv == nil:
		x.Status, x.Summary = StatusGap, "no CA inventory given (--data-dir): revocations cannot be matched to decisions"
		a1.Status, a1.Summary = StatusGap, x.Summary
	case len(r.Revocations) == 0:
		x.Status, x.Summary = StatusNA, "no revocation in the period"
		a1.Status, a1.Summary = StatusNA, x.Summary
	default:
		failed := 0
		for _, rv := range r.Revocations {
			took := "no request after the revocation"
			if !rv.FirstDenied.IsZero() {
				took = fmt.Sprintf("first refused %v after", rv.FirstDenied.Sub(rv.At).Round(time.Millisecond))
			}
			failed += rv.AllowedAfter
			var by []string
			for _, p := range rv.Replicas {
				if p.TookMS == nil {
					by = append(by, p.Log+" no request after")
				} else {
					by = append(by, fmt.Sprintf("%s %d ms", p.Log, *p.TookMS))
				}
			}
			x.Evidence = append(x.Evidence, Fact{fmt.Sprintf("%s/%s revoked %s", rv.Tenant, rv.Agent, rv.At.UTC().Format(time.RFC3339)),
				fmt.Sprintf("%s (by replica: %s); allowed more than %v after: %d", took, strings.Join(by, ", "), PropagationBound, rv.AllowedAfter),
				queryAgentCmd(in, r.Logs, rv.Agent, rv.At)})
			a1.Evidence = append(a1.Evidence, Fact{"others' allowed share around " + rv.Agent + "'s revocation",
				fmt.Sprintf("hour before %s, hour after %s", rv.OthersBefore, rv.OthersAfter), ""})
		}
		if failed > 0 {
			x.Status, x.Summary = StatusGap, fmt.Sprintf("%d allowed decisions for revoked agents after %v", failed, PropagationBound)
		} else {
			x.Status, x.Summary = StatusEvidence, fmt.Sprintf("%d revoked agents, each refused from then on", len(r.Revocations))
		}
		a1.Status, a1.Summary = StatusEvidence, "other agents' allowed share before and after each revocation"
		a1.Evidence = append(a1.Evidence, Fact{"service availability", "not in the decision logs: take it from the Prometheus metrics (agentauthz_decisions_total, up)", ""})
	}

	// CC7.1
	x = c("CC7.1", "Anomalies detected on the signed decision stream")
	logged := alertsFromChangeLog(in)
	if in.HasAlert {
		byRule := map[string]int{}
		var acks []time.Duration
		open := 0
		for _, a := range in.Alerts {
			if !inPeriod(in, a.Alert.Time) {
				continue
			}
			byRule[a.Alert.Rule]++
			if a.Ack != nil {
				acks = append(acks, a.Ack.At.Sub(a.Alert.Time))
			} else {
				open++
			}
		}
		file := " --file " + in.AlertsFile
		for _, rule := range sortedKeys(byRule) {
			x.Evidence = append(x.Evidence, Fact{"alerts file: " + rule, itoa(byRule[rule]), "agentauthz alerts list --rule " + rule + file})
		}
		x.Evidence = append(x.Evidence, Fact{"alerts file: median time to acknowledge", median(acks), "agentauthz alerts list" + file},
			Fact{"alerts file: open (not acknowledged)", itoa(open), "agentauthz alerts list --open" + file})
	}
	if logged != nil {
		cmd := invCmd("agent list --json", "/v1/changes") + "  # alert and alert_* events"
		for _, rule := range sortedKeys(logged.byRule) {
			x.Evidence = append(x.Evidence, Fact{"signed change log: alerts " + rule, itoa(logged.byRule[rule]), cmd})
		}
		x.Evidence = append(x.Evidence, Fact{"signed change log: median time from alert to first response (ack, approve or dismiss)", median(logged.responses), cmd},
			Fact{"signed change log: alerts without a response yet", itoa(logged.unanswered), cmd})
		if logged.unparsed > 0 {
			x.Evidence = append(x.Evidence, Fact{"signed change log: alert rows that do not parse", itoa(logged.unparsed), cmd})
		}
	}
	switch {
	case !in.HasAlert && logged == nil:
		x.Status, x.Summary = StatusGap, "no alerts: no alert in the control plane's signed change log (control serve runs the detector), and no alerts file given (--alerts FILE)"
	case logged != nil && logged.unparsed > 0:
		x.Status, x.Summary = StatusGap, fmt.Sprintf("%d alert rows of the change log do not parse", logged.unparsed)
	default:
		var parts []string
		if logged != nil {
			parts = append(parts, fmt.Sprintf("%d alerts in the signed change log in the period, %d responded to", sum(logged.byRule), len(logged.responses)))
		}
		if in.HasAlert {
			parts = append(parts, "the alerts file's alerts and acknowledgements as listed")
		}
		x.Status, x.Summary = StatusEvidence, strings.Join(parts, "; ")
	}

	// CC7.2
	x = c("CC7.2", "Monitoring: every decision logged, complete and unaltered")
	bad := 0
	for _, l := range r.Logs {
		v := "verified: " + itoa(int(l.Records)) + " records"
		if !l.Verified {
			v, bad = "FAILED: "+l.Problem, bad+1
		}
		if l.Malformed > 0 {
			v += fmt.Sprintf(", %d malformed lines", l.Malformed)
			bad++
		}
		x.Evidence = append(x.Evidence, Fact{"log " + l.Name + " (" + strings.TrimPrefix(strings.TrimPrefix(l.where(), "--server "), "--log ") + ")", v, verifyCmd(l)})
	}
	x.Evidence = append(x.Evidence, Fact{"decisions missing identity, trust level, time or outcome fields", itoa(st.missingFields), ""})
	if bad > 0 || st.missingFields > 0 {
		x.Status, x.Summary = StatusGap, fmt.Sprintf("%d logs failed verification or hold malformed lines; %d decisions miss identity, trust level, time or outcome fields", bad, st.missingFields)
	} else {
		x.Status, x.Summary = StatusEvidence, "every log verifies (Merkle tree, signed checkpoints, consistency) and every decision carries its fields"
	}

	// CC7.3
	x = c("CC7.3", "Evaluation: sample decisions reconstructed and re-verified")
	x.Evidence = append(x.Evidence, Fact{"sampled decisions", fmt.Sprintf("%d (seed %d)", len(r.Sample), in.Seed), ""})
	if len(r.Sample) == 0 {
		x.Status, x.Summary = StatusGap, "nothing to sample"
	} else {
		x.Status, x.Summary = StatusEvidence, "each sampled record with the commands that re-perform its verification (below)"
	}

	// CC7.4
	x = c("CC7.4", "Response: revocations, restrictions, quarantines and downgrades")
	if inv == nil {
		x.Status, x.Summary = StatusGap, "no CA inventory given (--data-dir)"
	} else {
		n := 0
		for _, e := range inv.Events {
			switch e.Event {
			case "revoke", "agent_revoke", "restrict", "lift":
			default:
				continue
			}
			if !inPeriod(in, e.At) {
				continue
			}
			n++
			x.Evidence = append(x.Evidence, Fact{fmt.Sprintf("%s %s/%s", e.Event, e.TrustDomain, e.AgentID),
				fmt.Sprintf("%s by %s: %s", e.At.UTC().Format(time.RFC3339), e.Operator, e.Detail), invCmd("agent show "+e.AgentID, "/v1/agents/"+e.TrustDomain+"/"+e.AgentID)})
		}
		if n == 0 {
			x.Status, x.Summary = StatusNA, "no response action in the period"
		} else {
			x.Status, x.Summary = StatusEvidence, fmt.Sprintf("%d response actions, each with who and why", n)
		}
	}

	// CC8.1
	x = c("CC8.1", "Changes: every change to an agent's scopes or trust level is a new certificate, in a signed change log")
	x.Evidence = append(x.Evidence, Fact{"policy revisions that decided in the period", revisions(st.revisions),
		q("", `group_by(.decision.policy_revision) | map({(.[0].decision.policy_revision // "none"): length}) | add`)})
	switch {
	case inv == nil:
		x.Status, x.Summary = StatusGap, "no CA inventory given (--data-dir)"
	case inv.ChangeLog == nil:
		x.Status, x.Summary = StatusGap, "the change log cannot be verified: "+inv.ChangeLogErr
	default:
		cl := inv.ChangeLog
		v := fmt.Sprintf("%d events, %d signed, head %s", cl.Events, cl.Signed, short(cl.Head))
		if cl.Problem != nil {
			v = fmt.Sprintf("FAILED at seq %d: %s: %s", cl.Problem.Seq, cl.Problem.Kind, cl.Problem.Detail)
		}
		x.Evidence = append(x.Evidence, Fact{"signed change log", v, changeLogCmd(in)})
		reissued := 0
		for _, e := range inv.Events {
			if e.Event == "reissue" && inPeriod(in, e.At) {
				reissued++
			}
		}
		x.Evidence = append(x.Evidence, Fact{"scope or trust changes, each a new certificate (reissue)", itoa(reissued), invCmd("agent list --json", "/v1/changes") + "  # reissue events"})
		unreviewed := policyReviews(in, st, x, invCmd("agent list --json", "/v1/changes")+"  # policy_simulation events")
		switch {
		case cl.Problem != nil:
			x.Status, x.Summary = StatusGap, "the change log does not verify"
		case len(unreviewed) > 0:
			x.Status, x.Summary = StatusGap, "policy revisions decided without a signed simulation run before them: "+strings.Join(unreviewed, ", ")
		default:
			x.Status, x.Summary = StatusEvidence, "the change log verifies; scope and trust change only by reissue; every policy change in the period was reviewed with its impact"
		}
	}
	r.Controls = append(r.Controls, a1)

	// PI1.3 and PI1.5
	x = c("PI1.3", "Processing integrity: responses travel signed")
	x.Evidence = []Fact{{"response records", itoa(st.responses), ""}, {"responses signed with their body digest", itoa(st.signedResponses), ""}}
	if st.responses == 0 {
		x.Status, x.Summary = StatusGap, "no response records: signed responses (ext_proc) are not deployed, or nothing was allowed"
	} else {
		x.Status, x.Summary = StatusEvidence, fmt.Sprintf("%d of %d responses signed", st.signedResponses, st.responses)
	}
	x = c("PI1.5", "Outputs linked to agent, trust level, scope and decision")
	x.Evidence = []Fact{{"responses linked to a decision in these logs", fmt.Sprintf("%d of %d", st.responsesLinked, st.responses), ""}}
	if st.responses == 0 {
		x.Status, x.Summary = StatusGap, "no response records"
	} else {
		x.Status, x.Summary = StatusEvidence, "each response record carries its decision id, agent and outcome"
	}
	r.applyConfig(in)
	r.Mapping = mapping
}

func median(ds []time.Duration) string {
	if len(ds) == 0 {
		return "none"
	}
	slices.Sort(ds)
	return ds[len(ds)/2].Round(time.Second).String()
}

// loggedAlerts is what the signed change log says of the anomaly
// detector's alerts in the period (docs/anomaly.md, "Signed alerts").
type loggedAlerts struct {
	byRule     map[string]int
	responses  []time.Duration // alert row to its first ack, approve or dismiss
	unanswered int
	unparsed   int
}

// alertsFromChangeLog reads the alert rows of the change log; nil when it
// holds none at all (the detector does not run in the control plane).
func alertsFromChangeLog(in Inputs) *loggedAlerts {
	if in.Inventory == nil {
		return nil
	}
	la := &loggedAlerts{byRule: map[string]int{}}
	raised := map[string]time.Time{} // alert id → its row's time, for those in the period
	seen := false
	for _, e := range in.Inventory.Events {
		switch e.Event {
		case alerts.EventAlert:
			seen = true
			var d struct{ ID, Rule, Time string }
			if json.Unmarshal([]byte(e.Detail), &d) != nil || d.ID == "" {
				la.unparsed++
				continue
			}
			at, err := time.Parse(time.RFC3339Nano, d.Time)
			if err != nil {
				at = e.At
			}
			if !inPeriod(in, at) {
				continue
			}
			la.byRule[d.Rule]++
			raised[d.ID] = e.At
		case alerts.EventAck, alerts.EventApprove, alerts.EventDismiss:
			var d struct{ Alert string }
			if json.Unmarshal([]byte(e.Detail), &d) != nil {
				la.unparsed++
				continue
			}
			if at, ok := raised[d.Alert]; ok {
				la.responses = append(la.responses, e.At.Sub(at))
				delete(raised, d.Alert)
			}
		}
	}
	if !seen {
		return nil
	}
	la.unanswered = len(raised)
	return la
}

// policyReviews adds to CC8.1 the signed policy simulation runs and, for
// each policy revision that decided in the period after the first (which
// was in force when it began), the run that reviewed it before its first
// decision; it returns the revisions without one.
func policyReviews(in Inputs, st *stats, x *Control, cmd string) []string {
	recorded := map[string][]time.Time{} // revision → when runs reviewing it were recorded
	var lines []string
	bad := 0
	for _, e := range in.Inventory.Events {
		if e.Event != simrun.Event {
			continue
		}
		run, err := simrun.Parse(e.Detail)
		if err != nil {
			bad++
			continue
		}
		recorded[run.Revision] = append(recorded[run.Revision], e.At)
		if inPeriod(in, e.At) {
			lines = append(lines, fmt.Sprintf("%s by %s: revision %s, %d decisions replayed, %d newly allowed, %d newly denied, gate %s, report sha256 %s",
				e.At.UTC().Format(time.RFC3339), e.Operator, run.Revision, run.Replayed, run.NewlyAllowed, run.NewlyDenied, run.Gate, short(run.ReportSHA256)))
		}
	}
	v := "gap: none in the change log (agentauthz policy simulate … --record)"
	if len(lines) > 0 {
		v = strings.Join(lines, "; ")
	}
	x.Evidence = append(x.Evidence, Fact{"signed policy simulation runs in the period (a policy change reviewed with its impact)", v, cmd})
	if bad > 0 {
		x.Evidence = append(x.Evidence, Fact{"policy simulation rows that do not parse", itoa(bad), cmd})
	}
	type rev struct {
		name  string
		first time.Time
	}
	var revs []rev
	for k, v := range st.revisions {
		if k != "" && k != other {
			revs = append(revs, rev{k, v.first})
		}
	}
	slices.SortFunc(revs, func(a, b rev) int { return a.first.Compare(b.first) })
	var unreviewed, reviewed []string
	for i, r := range revs {
		if i == 0 {
			continue // in force when the period began
		}
		if slices.ContainsFunc(recorded[r.name], func(at time.Time) bool { return !at.After(r.first) }) {
			reviewed = append(reviewed, r.name)
		} else {
			unreviewed = append(unreviewed, r.name)
		}
	}
	if len(revs) > 1 {
		x.Evidence = append(x.Evidence, Fact{"policy changes in the period reviewed by a simulation run recorded before the revision's first decision",
			fmt.Sprintf("%d of %d (reviewed: %s; not: %s)", len(reviewed), len(revs)-1, listOrNone(reviewed), listOrNone(unreviewed)), cmd})
	}
	return unreviewed
}

func listOrNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// applyConfig adds each replica's configuration to the controls its
// settings bear on. A tenant without revocation checking is a CC6.8 gap.
func (r *Report) applyConfig(in Inputs) {
	for _, cf := range in.Configs {
		r.Config = append(r.Config, *cf)
	}
	for i := range r.Controls {
		x := &r.Controls[i]
		switch x.ID {
		case "CC6.2", "CC6.6", "CC6.8", "CC7.2", "CC8.1", "PI1.3":
		default:
			continue
		}
		if len(in.Configs) == 0 && x.ID != "CC6.2" {
			x.Evidence = append(x.Evidence, Fact{"serve configuration", "not given (audit report --config FILE, one per replica)", ""})
			continue
		}
		for _, cf := range in.Configs {
			if x.ID == "CC7.2" {
				x.Evidence = append(x.Evidence, Fact{"serve configuration of log " + cf.Log, cf.File + " sha256 " + cf.SHA256, "sha256sum " + cf.File})
			}
			for _, s := range cf.Settings {
				if s.Control == x.ID {
					x.Evidence = append(x.Evidence, Fact{cf.Log + ": " + s.Key, s.Value, ""})
				}
			}
			if x.ID == "CC6.6" && len(cf.OpenAssertion) > 0 {
				x.Status = StatusGap
				x.Summary = fmt.Sprintf("%s: %s trusted from any caller of a non-loopback gRPC address without mutual TLS: a forged header passes", cf.File, strings.Join(cf.OpenAssertion, ", "))
			}
			if x.ID == "CC6.8" && len(cf.RevocationOff) > 0 {
				x.Status = StatusGap
				x.Summary = fmt.Sprintf("revocation checking is disabled for %s in %s: revoked certificates are accepted there", strings.Join(cf.RevocationOff, ", "), cf.File)
			}
		}
	}
}

func revisions(m map[string]*revisionSeen) string {
	if len(m) == 0 {
		return "none"
	}
	var out []string
	for _, k := range sortedKeys(m) {
		v := m[k]
		name := k
		if name == "" {
			name = "(none recorded)"
		}
		out = append(out, fmt.Sprintf("%s: %d decisions, %s to %s", name, v.n, v.first.UTC().Format(time.RFC3339), v.last.UTC().Format(time.RFC3339)))
	}
	return strings.Join(out, "; ")
}

// revocationsIn lists each agent revoked in the period (once: a revocation is
// a serial event and an agent-id event), to be followed through the records.
func revocationsIn(in Inputs, inv *Inventory) []*revTrack {
	var out []*revTrack
	done := map[string]bool{}
	for _, e := range inv.Events {
		if e.Event != "revoke" && e.Event != "agent_revoke" || e.AgentID == "" || !inPeriod(in, e.At) {
			continue
		}
		k := agentKey(e.TrustDomain, e.AgentID)
		if done[k] {
			continue
		}
		done[k] = true
		out = append(out, &revTrack{key: k, Revocation: Revocation{Tenant: e.TrustDomain, Agent: e.AgentID, At: e.At, Operator: e.Operator, Detail: e.Detail}})
	}
	return out
}

// revocations is what following each revocation found.
func revocations(st *stats, logs []LogSource) []Revocation {
	out := make([]Revocation, 0, len(st.revs))
	for _, t := range st.revs {
		rv := t.Revocation
		rv.OthersBefore, rv.OthersAfter = share(t.beforeAllowed, t.beforeAll), share(t.afterAllowed, t.afterAll)
		rv.Replicas = make([]Propagation, len(logs))
		for i, l := range logs {
			p := Propagation{Log: l.Name, FirstDenied: t.firstDenied[i]}
			if f := t.firstDenied[i]; !f.IsZero() {
				ms := f.Sub(rv.At).Milliseconds()
				p.TookMS = &ms
				if rv.FirstDenied.IsZero() || f.Before(rv.FirstDenied) {
					rv.FirstDenied = f
				}
			}
			rv.Replicas[i] = p
		}
		out = append(out, rv)
	}
	return out
}

func share(allowed, all int) string {
	if all == 0 {
		return "no requests"
	}
	return fmt.Sprintf("%.1f %% of %d allowed", 100*float64(allowed)/float64(all), all)
}

func sample(st *stats, logs []LogSource) []Sample {
	picked := slices.Clone(st.sample)
	sort.SliceStable(picked, func(i, j int) bool {
		if picked[i].src != picked[j].src {
			return picked[i].src < picked[j].src
		}
		return picked[i].rec.Time.Before(picked[j].rec.Time)
	})
	out := make([]Sample, 0, len(picked))
	for _, s := range picked {
		l := logs[s.src]
		id := s.rec.DecisionID
		steps := []string{"agentauthz audit who " + id + " " + l.where() + "   # the full record"}
		if l.Server != "" {
			steps = append(steps,
				verifyCmd(l)+"   # the whole stored log: every batch's records and signed checkpoint",
				"curl --cert $AGENTAUTHZ_CERT --key $AGENTAUTHZ_KEY --cacert $AGENTAUTHZ_SERVER_CA '"+l.Server+"/v1/records?decision_id="+id+"'   # the record exactly as the replica signed it (its Merkle leaf) and its index")
		} else {
			steps = append(steps,
				"agentauthz audit prove "+id+" --log "+l.Dir+"   # its inclusion proof and the signed checkpoint",
				"agentauthz audit verify --log "+l.Dir+"   # the whole log: tree, checkpoint signatures, consistency",
				"python3 test/verify_log.py "+l.Dir+"   # the same checks, independently (docs/decision-log.md)")
		}
		out = append(out, Sample{Log: l.Name, Record: s.rec, Steps: steps})
	}
	return out
}

func unusedScopes(inv *Inventory, st *stats) string {
	var lines []string
	seen := map[string]bool{}
	for _, ct := range inv.Certs {
		k := agentKey(ct.TrustDomain, ct.AgentID)
		if ct.Status != "active" || seen[k] {
			continue
		}
		seen[k] = true
		var unused []string
		for _, sc := range ct.Scopes {
			// The shipped policy names each operation after its scope.
			if st.matrix[k][sc] == 0 {
				unused = append(unused, sc)
			}
		}
		if len(unused) > 0 {
			lines = append(lines, fmt.Sprintf("%s: %s", k, strings.Join(unused, ", ")))
		}
	}
	if len(lines) == 0 {
		return "none"
	}
	sort.Strings(lines)
	return strings.Join(lines, "; ")
}

func matrix(m map[string]map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	var rows []string
	for _, a := range sortedKeys(m) {
		var cells []string
		for _, op := range sortedKeys(m[a]) {
			cells = append(cells, fmt.Sprintf("%s %d", op, m[a][op]))
		}
		rows = append(rows, a+": "+strings.Join(cells, ", "))
	}
	return strings.Join(rows, "; ")
}

func queryCmd(in Inputs, logs []LogSource) func(filter, jq string) string {
	span := ""
	if !in.From.IsZero() {
		span += " --since " + in.From.UTC().Format(time.RFC3339)
	}
	if !in.To.IsZero() {
		span += " --until " + in.To.UTC().Format(time.RFC3339)
	}
	return func(filter, jq string) string {
		if filter != "" {
			filter = " " + filter
		}
		var cmds []string
		if in.Server != "" {
			// One query covers every log the control plane holds.
			cmds = []string{"agentauthz audit query --server " + in.Server + span + filter + " --json"}
		} else {
			for _, l := range logs {
				cmds = append(cmds, "agentauthz audit query --log "+l.Dir+span+filter+" --json")
			}
		}
		src := cmds[0]
		if len(cmds) > 1 {
			src = "{ " + strings.Join(cmds, "; ") + "; }"
		}
		return src + " | jq -s 'map(select((.kind // \"decision\") == \"decision\")) | " + jq + "'"
	}
}

func queryAgentCmd(in Inputs, logs []LogSource, agent string, at time.Time) string {
	where := logs[0].where()
	if in.Server != "" {
		where = "--server " + in.Server
	}
	return fmt.Sprintf("agentauthz audit query %s --agent %s --since %s --json", where, agent, at.UTC().Format(time.RFC3339))
}

// curlCmd reads a control-plane API path with the auditor's certificate.
func curlCmd(server, path string) string {
	return "curl -s --cert $AGENTAUTHZ_CERT --key $AGENTAUTHZ_KEY --cacert $AGENTAUTHZ_SERVER_CA " + server + path
}

// inventoryCmd is how the auditor reads the inventory: the agentauthz
// command on the data directory, or the control plane's API path.
func inventoryCmd(in Inputs) func(local, api string) string {
	return func(local, api string) string {
		if in.Server != "" && api != "" {
			return curlCmd(in.Server, api)
		}
		return "agentauthz " + local + " --data-dir " + in.DataDir
	}
}

func changeLogCmd(in Inputs) string {
	if in.Server != "" {
		return curlCmd(in.Server, "/v1/changelog/verify")
	}
	return "agentauthz audit verify --changelog " + in.DataDir
}

func verifyCmd(l LogSource) string {
	if l.Server != "" {
		return "agentauthz audit verify --server " + l.Server + " --log-name " + l.Name
	}
	return "agentauthz audit verify --log " + l.Dir
}

func inPeriod(in Inputs, t time.Time) bool {
	return (in.From.IsZero() || !t.Before(in.From)) && (in.To.IsZero() || !t.After(in.To))
}

func itoa(n int) string { return fmt.Sprintf("%d", n) }

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

func short(h string) string {
	if len(h) > 16 {
		return h[:16] + "…"
	}
	return h
}
