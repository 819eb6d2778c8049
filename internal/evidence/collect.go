// Package evidence builds the auditor's evidence pack: for each SOC 2
// control that agentauthz can speak to, the status (evidence found, gap, not
// applicable), the evidence itself from the real decision logs, CA inventory,
// signed change log and alerts, and the CLI command that reproduces every
// figure. A control with no evidence is a gap, never a pass.
package evidence

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/agentauthz/agentauthz/internal/anomaly"
	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/reason"
)

// Log is one replica's decision log.
type Log struct {
	Dir  string
	Keys decisionlog.KeySet // the keys the log must verify with
}

// Inputs are the sources of a report. Only Logs is required.
type Inputs struct {
	Logs     []Log
	DataDir  string        // the CA inventory and change log; "" when not available
	CA       *ca.Authority // opened on DataDir
	Alerts   []anomaly.StoredAlert
	HasAlert bool // an alerts file was given (an empty one is evidence of no alerts)
	From, To time.Time
	Sample   int    // decisions to sample for re-performance
	Seed     uint64 // of the sample
	Now      time.Time
}

// stats is what one pass over the records in [From, To] counts.
type stats struct {
	decisions, allowed, denied int
	withIdentity, anonAllowed  int
	byReason                   map[string]int
	identityFailures           map[string]int
	threats                    map[string]int
	certAgents                 map[string]map[string]bool // cert hash → agent ids
	matrix                     map[string]map[string]int  // agent → operation → allowed
	usedOps                    map[string]map[string]bool // agent (tenant/id) → operations allowed
	byDay                      map[string][2]int          // day → allowed, denied
	responses, signedResponses int
	responsesLinked            int
	missingFields              int // decisions without trust level, time or outcome fields
	records                    []sampled
	revs                       []revTrack // each revocation in the period, followed through the records
	first, last                time.Time
	decisionIDs                map[string]bool
	allowedWithoutTenant       int
	logNames                   map[string]string // dir → log name
	kinds                      map[string]int
}

// revTrack follows one revocation through the records as they are read, so
// that memory does not grow with the decisions: the revoked agent's first
// refusal and late allows, and the other agents' allowed share in the hour
// either side.
type revTrack struct {
	Revocation
	key                      string
	beforeAllowed, beforeAll int
	afterAllowed, afterAll   int
}

func (t *revTrack) add(agent string, at time.Time, allowed bool, code string) {
	if agent == t.key {
		if at.Before(t.At) {
			return
		}
		if !allowed && (code == string(reason.CertificateRevoked) || code == string(reason.AgentRevoked)) &&
			(t.FirstDenied.IsZero() || at.Before(t.FirstDenied)) {
			t.FirstDenied = at // logs of several replicas are not in time order between them
		}
		if allowed && at.After(t.At.Add(PropagationBound)) {
			t.AllowedAfter++
		}
		return
	}
	inc := func(all, ok *int) {
		*all++
		if allowed {
			*ok++
		}
	}
	switch {
	case !at.Before(t.At.Add(-time.Hour)) && at.Before(t.At):
		inc(&t.beforeAll, &t.beforeAllowed)
	case !at.Before(t.At) && at.Before(t.At.Add(time.Hour)):
		inc(&t.afterAll, &t.afterAllowed)
	}
}

type sampled struct {
	dir string
	rec decisionlog.Record
}

func newStats() *stats {
	return &stats{byReason: map[string]int{}, identityFailures: map[string]int{}, threats: map[string]int{},
		certAgents: map[string]map[string]bool{}, matrix: map[string]map[string]int{}, usedOps: map[string]map[string]bool{},
		byDay: map[string][2]int{}, decisionIDs: map[string]bool{}, logNames: map[string]string{},
		kinds: map[string]int{}}
}

// maxSampleRecords bounds the records kept for sampling (reservoir).
const maxSampleRecords = 1 << 16

// identityCodes are the identity failures (CC6.2); threatCodes the refusals
// an attacker's request gets before any business logic (CC6.6).
var (
	identityCodes = []reason.Code{reason.NoClientCertificate, reason.MalformedClientCertificate, reason.MalformedXFCC,
		reason.UntrustedIssuer, reason.CertificateExpired, reason.CertificateNotYetValid, reason.InvalidAgentProfile}
	threatCodes = []reason.Code{reason.UntrustedIssuer, reason.CertificateExpired, reason.CertificateNotYetValid,
		reason.MalformedXFCC, reason.MalformedClientCertificate, reason.InvalidAgentProfile, reason.CertificateRevoked, reason.AgentRevoked}
)

func (s *stats) add(dir string, r *decisionlog.Record, rng *rand.Rand, seen *int) {
	s.kinds[r.Kind]++
	if r.Kind == decisionlog.KindResponse {
		s.responses++
		if r.Response != nil && r.Response.Body == "signed" && r.Response.Signature != "" {
			s.signedResponses++
		}
		if r.DecisionID != "" && s.decisionIDs[r.DecisionID] {
			s.responsesLinked++
		}
		return
	}
	if r.Kind != "" && r.Kind != decisionlog.KindDecision {
		return
	}
	s.decisions++
	s.decisionIDs[r.DecisionID] = true
	if s.first.IsZero() || r.Time.Before(s.first) {
		s.first = r.Time
	}
	if r.Time.After(s.last) {
		s.last = r.Time
	}
	code := ""
	if len(r.Decision.Reasons) > 0 {
		code = r.Decision.Reasons[0]
	}
	day := r.Time.UTC().Format(time.DateOnly)
	d := s.byDay[day]
	if r.Decision.Allowed {
		s.allowed++
		d[0]++
		if r.Agent.ID == "" {
			s.anonAllowed++
		}
		if r.Agent.Tenant == "" {
			s.allowedWithoutTenant++
		}
		a := agentKey(r.Agent.Tenant, r.Agent.ID)
		if s.matrix[a] == nil {
			s.matrix[a], s.usedOps[a] = map[string]int{}, map[string]bool{}
		}
		s.matrix[a][r.Request.Operation]++
		s.usedOps[a][r.Request.Operation] = true
	} else {
		s.denied++
		d[1]++
		s.byReason[code]++
		if slices.Contains(identityCodes, reason.Code(code)) {
			s.identityFailures[code]++
		}
		if slices.Contains(threatCodes, reason.Code(code)) {
			s.threats[code]++
		}
	}
	s.byDay[day] = d
	if r.Agent.ID != "" {
		s.withIdentity++
		a := agentKey(r.Agent.Tenant, r.Agent.ID)
		for i := range s.revs {
			s.revs[i].add(a, r.Time, r.Decision.Allowed, code)
		}
		if h := r.Agent.CertSHA256; h != "" {
			if s.certAgents[h] == nil {
				s.certAgents[h] = map[string]bool{}
			}
			s.certAgents[h][a] = true
		}
		if r.Agent.TrustLevel == "" {
			s.missingFields++
		}
	}
	if r.DecisionID == "" || r.Time.IsZero() || len(r.Decision.Reasons) == 0 {
		s.missingFields++
	}
	// Reservoir sampling keeps a uniform sample of every decision.
	*seen++
	if len(s.records) < maxSampleRecords {
		s.records = append(s.records, sampled{dir, *r})
	} else if j := rng.IntN(*seen); j < maxSampleRecords {
		s.records[j] = sampled{dir, *r}
	}
}

func agentKey(tenant, id string) string { return tenant + "/" + id }

// LogSource is what the report says about one log: where, how it verified,
// and the checkpoint it was built from.
type LogSource struct {
	Dir        string               `json:"dir"`
	Name       string               `json:"name"`
	Verified   bool                 `json:"verified"`
	Format     int                  `json:"format"`
	Records    uint64               `json:"records"`
	Checkpoint string               `json:"checkpoint,omitempty"`
	Problem    *decisionlog.Problem `json:"problem,omitempty"`
	Malformed  int                  `json:"malformed_lines"`
	InRange    int                  `json:"decisions_in_range"`
}

// Collect reads every source and builds the report.
func Collect(in Inputs) (*Report, error) {
	if len(in.Logs) == 0 {
		return nil, errors.New("evidence: at least one decision log is required")
	}
	if in.Now.IsZero() {
		in.Now = time.Now()
	}
	// A seeded generator on purpose: the auditor re-draws the same sample
	// from the same seed. Nothing secret depends on it.
	rng := rand.New(rand.NewPCG(in.Seed, in.Seed^0x5851f42d4c957f2d)) //nolint:gosec // reproducible sample, not a secret
	st := newStats()
	rep := &Report{From: in.From, To: in.To, Generated: in.Now.UTC(), Seed: in.Seed}
	var inv *inventory
	if in.CA != nil {
		var err error
		if inv, err = readInventory(in.CA, in.DataDir); err != nil {
			return nil, err
		}
		st.revs = revocationsIn(in, inv)
	}
	seen := 0
	for _, l := range in.Logs {
		src := LogSource{Dir: l.Dir}
		res, err := decisionlog.Verify(l.Dir, l.Keys)
		if err != nil {
			return nil, fmt.Errorf("verify %s: %w", l.Dir, err)
		}
		src.Format, src.Records, src.Checkpoint, src.Problem = res.Format, res.Records, res.Checkpoint, res.Problem
		src.Verified = res.Problem == nil
		r := decisionlog.NewReader(l.Dir)
		before := st.decisions
		for {
			e, err := r.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if errors.Is(err, decisionlog.ErrMalformed) {
				src.Malformed++
				continue
			}
			if err != nil {
				r.Close()
				return nil, fmt.Errorf("read %s: %w", l.Dir, err)
			}
			if src.Name == "" {
				src.Name = e.Record.Log
			}
			if !in.From.IsZero() && e.Record.Time.Before(in.From) || !in.To.IsZero() && e.Record.Time.After(in.To) {
				continue
			}
			st.add(l.Dir, e.Record, rng, &seen)
		}
		r.Close()
		src.InRange = st.decisions - before
		st.logNames[l.Dir] = src.Name
		rep.Logs = append(rep.Logs, src)
	}
	rep.build(in, st, inv, rng)
	return rep, nil
}
