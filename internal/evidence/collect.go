// Package evidence builds the auditor's evidence pack: for each SOC 2
// control that agentauthz can speak to, the status (evidence found, gap, not
// applicable), the evidence itself from the real decision logs (or the
// control plane's central store), CA inventory, signed change log, alerts
// and serve configuration, and the CLI command that reproduces every
// figure. A control with no evidence is a gap, never a pass.
package evidence

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"slices"
	"sort"
	"time"

	"github.com/agentauthz/agentauthz/internal/anomaly"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/reason"
)

// Source is one replica's decision log as the report reads it: a log
// directory (DirSource) or one log of the control plane's central store.
type Source interface {
	// Verify checks the whole log (Merkle tree, checkpoint signatures,
	// consistency) and says what the report carries about it.
	Verify(ctx context.Context) (LogSource, error)
	// Scan calls each for every record whose time is in [from, to] (a zero
	// bound is open), in the log's order, and returns how many lines it
	// could not decode.
	Scan(ctx context.Context, from, to time.Time, each func(Scanned) error) (malformed int, err error)
}

// Scanned is one record as a source hands it over: the fields the report
// counts, and the line to decode the whole record from when it is sampled
// ("" when Record is whole).
type Scanned struct {
	Record *decisionlog.Record
	Line   string
}

// Inputs are the sources of a report. Only Sources is required.
type Inputs struct {
	Sources []Source
	// Server is the control plane's URL when the records come from its
	// store: the reproduce-with commands then query it.
	Server     string
	DataDir    string     // where the inventory was read, for commands; "" with Server
	Inventory  *Inventory // nil when not available
	Configs    []*ConfigFile
	Alerts     []anomaly.StoredAlert
	HasAlert   bool   // an alerts file was given (an empty one is evidence of no alerts)
	AlertsFile string // its path, for commands
	From, To   time.Time
	Sample     int    // decisions to sample for re-performance (at most MaxSample)
	Seed       uint64 // of the sample
	Now        time.Time
}

// Memory bounds: what Collect keeps does not grow with the number of
// decisions (docs/compliance.md, Performance).
const (
	// MaxSample bounds the sampled decisions (kept by reservoir sampling).
	MaxSample = 1000
	// linkWindow is how many of a log's latest decision ids are kept to
	// link a response record to its decision: a response logged later
	// than that many decisions after its own counts as unlinked.
	linkWindow = 1 << 20
	// maxCerts bounds the certificates followed for "no certificate
	// shared by two agent ids"; beyond it CC6.1 says the check is
	// incomplete (a gap).
	maxCerts = 1 << 18
	// maxAgents bounds the agents in the agents × operations matrix;
	// others are counted under "(other agents)".
	maxAgents = 1 << 16
	// maxKeys bounds every other tally (reason codes, record kinds,
	// operations per agent, days); beyond it a value counts as "(other)".
	maxKeys = 4096
)

const other = "(other)"

// bounded returns k, or other when m already holds limit keys and not k.
func bounded[V any](m map[string]V, k string, limit int) string {
	if _, ok := m[k]; ok || len(m) < limit {
		return k
	}
	return other
}

// stats is what one pass over the records in [From, To] counts.
type stats struct {
	decisions, allowed, denied int
	withIdentity, anonAllowed  int
	byReason                   map[string]int
	identityFailures           map[string]int
	threats                    map[string]int
	certAgent                  map[string]string // cert hash → the first agent seen with it
	sharedCerts                map[string]bool   // cert hashes seen with a second agent
	certsTruncated             bool
	matrix                     map[string]map[string]int // agent → operation → allowed
	byDay                      map[string][2]int         // day → allowed, denied
	responses, signedResponses int
	responsesLinked            int
	missingFields              int // decisions without trust level, time or outcome fields
	sample                     []sampled
	seen                       int // decisions offered to the sample
	revs                       []*revTrack
	revsOf                     map[string][]*revTrack // agent → its revocations
	byTime                     []*revTrack            // sorted by At, for the others' windows
	first, last                time.Time
	allowedWithoutTenant       int
	kinds                      map[string]int
	revisions                  map[string]*revisionSeen // policy revision → when it decided
	links                      *idWindow
}

type revisionSeen struct {
	n           int
	first, last time.Time
}

// idWindow holds the hashes of the latest linkWindow decision ids of one
// log (a ring and a set), for linking responses to decisions.
type idWindow struct {
	seed maphash.Seed
	ring []uint64
	next int
	set  map[uint64]int32 // hash → how many times it is in the ring
}

func newIDWindow() *idWindow {
	return &idWindow{seed: maphash.MakeSeed(), set: map[uint64]int32{}}
}

func (w *idWindow) add(id string) {
	h := maphash.String(w.seed, id)
	if len(w.ring) < linkWindow {
		w.ring = append(w.ring, h)
	} else {
		old := w.ring[w.next]
		if w.set[old]--; w.set[old] <= 0 {
			delete(w.set, old)
		}
		w.ring[w.next] = h
		w.next = (w.next + 1) % linkWindow
	}
	w.set[h]++
}

func (w *idWindow) has(id string) bool { return w.set[maphash.String(w.seed, id)] > 0 }

// revTrack follows one revocation through the records as they are read, so
// that memory does not grow with the decisions: the revoked agent's first
// refusal on each log and its late allows, and the other agents' allowed
// share in the hour either side.
type revTrack struct {
	Revocation
	key                      string
	firstDenied              []time.Time // by source
	beforeAllowed, beforeAll int
	afterAllowed, afterAll   int
}

func (t *revTrack) own(src int, at time.Time, allowed bool, code string) {
	if at.Before(t.At) {
		return
	}
	if !allowed && (code == string(reason.CertificateRevoked) || code == string(reason.AgentRevoked)) {
		if f := t.firstDenied[src]; f.IsZero() || at.Before(f) {
			t.firstDenied[src] = at
		}
	}
	if allowed && at.After(t.At.Add(PropagationBound)) {
		t.AllowedAfter++
	}
}

func (t *revTrack) other(at time.Time, allowed bool) {
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
	src int
	rec decisionlog.Record
}

func newStats(revs []*revTrack, sources int) *stats {
	st := &stats{byReason: map[string]int{}, identityFailures: map[string]int{}, threats: map[string]int{},
		certAgent: map[string]string{}, sharedCerts: map[string]bool{}, matrix: map[string]map[string]int{},
		byDay: map[string][2]int{}, kinds: map[string]int{}, revisions: map[string]*revisionSeen{}, revs: revs, revsOf: map[string][]*revTrack{}}
	for _, t := range revs {
		t.firstDenied = make([]time.Time, sources)
		st.revsOf[t.key] = append(st.revsOf[t.key], t)
	}
	st.byTime = slices.Clone(revs)
	sort.SliceStable(st.byTime, func(i, j int) bool { return st.byTime[i].At.Before(st.byTime[j].At) })
	return st
}

// identityCodes are the identity failures (CC6.2); threatCodes the refusals
// an attacker's request gets before any business logic (CC6.6).
var (
	identityCodes = []reason.Code{reason.NoClientCertificate, reason.MalformedClientCertificate, reason.MalformedXFCC,
		reason.UntrustedIssuer, reason.CertificateExpired, reason.CertificateNotYetValid, reason.InvalidAgentProfile}
	threatCodes = []reason.Code{reason.UntrustedIssuer, reason.CertificateExpired, reason.CertificateNotYetValid,
		reason.MalformedXFCC, reason.MalformedClientCertificate, reason.InvalidAgentProfile, reason.CertificateRevoked, reason.AgentRevoked}
)

func (s *stats) add(src int, sc Scanned, rng *rand.Rand, sampleN int) {
	r := sc.Record
	s.kinds[bounded(s.kinds, r.Kind, maxKeys)]++
	if r.Kind == decisionlog.KindResponse {
		s.responses++
		if r.Response != nil && r.Response.Body == "signed" && r.Response.Signature != "" {
			s.signedResponses++
		}
		if r.DecisionID != "" && s.links.has(r.DecisionID) {
			s.responsesLinked++
		}
		return
	}
	if r.Kind != "" && r.Kind != decisionlog.KindDecision {
		return
	}
	s.decisions++
	if r.DecisionID != "" {
		s.links.add(r.DecisionID)
	}
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
	rev := bounded(s.revisions, r.Decision.PolicyRevision, maxKeys)
	if v := s.revisions[rev]; v == nil {
		s.revisions[rev] = &revisionSeen{1, r.Time, r.Time}
	} else {
		v.n++
		if r.Time.Before(v.first) {
			v.first = r.Time
		}
		if r.Time.After(v.last) {
			v.last = r.Time
		}
	}
	day := bounded(s.byDay, r.Time.UTC().Format(time.DateOnly), maxKeys)
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
		a := bounded(s.matrix, agentKey(r.Agent.Tenant, r.Agent.ID), maxAgents)
		if a == other {
			a = "(other agents)"
		}
		ops := s.matrix[a]
		if ops == nil {
			ops = map[string]int{}
			s.matrix[a] = ops
		}
		ops[bounded(ops, r.Request.Operation, maxKeys)]++
	} else {
		s.denied++
		d[1]++
		s.byReason[bounded(s.byReason, code, maxKeys)]++
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
		s.followRevocations(src, a, r.Time, r.Decision.Allowed, code)
		if h := r.Agent.CertSHA256; h != "" {
			switch prev, ok := s.certAgent[h]; {
			case !ok && len(s.certAgent) >= maxCerts:
				s.certsTruncated = true
			case !ok:
				s.certAgent[h] = a
			case prev != a:
				s.sharedCerts[h] = true
			}
		}
		if r.Agent.TrustLevel == "" {
			s.missingFields++
		}
	}
	if r.DecisionID == "" || r.Time.IsZero() || len(r.Decision.Reasons) == 0 {
		s.missingFields++
	}
	// Reservoir sampling keeps a uniform sample of every decision.
	s.seen++
	if sampleN == 0 {
		return
	}
	j := len(s.sample)
	if j >= sampleN {
		if j = rng.IntN(s.seen); j >= sampleN {
			return
		}
	}
	if sc.Line != "" {
		if full, err := decisionlog.DecodeLine(sc.Line); err == nil {
			r = full
		}
	}
	if j == len(s.sample) {
		s.sample = append(s.sample, sampled{src, *r})
	} else {
		s.sample[j] = sampled{src, *r}
	}
}

// followRevocations gives a decision to the revocations it bears on: the
// agent's own, and the others' within an hour of it.
func (s *stats) followRevocations(src int, agent string, at time.Time, allowed bool, code string) {
	if len(s.revs) == 0 {
		return
	}
	for _, t := range s.revsOf[agent] {
		t.own(src, at, allowed, code)
	}
	// Revocations with At in (at-1h, at+1h]: this decision is in the hour
	// before or after each.
	i := sort.Search(len(s.byTime), func(i int) bool { return s.byTime[i].At.After(at.Add(-time.Hour)) })
	for ; i < len(s.byTime) && !s.byTime[i].At.After(at.Add(time.Hour)); i++ {
		if t := s.byTime[i]; t.key != agent {
			t.other(at, allowed)
		}
	}
}

func agentKey(tenant, id string) string { return tenant + "/" + id }

// LogSource is what the report says about one log: where, how it verified,
// and the checkpoint it was built from.
type LogSource struct {
	Dir    string `json:"dir,omitempty"`
	Server string `json:"server,omitempty"` // the control plane holding the log
	Name   string `json:"name"`
	// Verified is true when the whole log verified; Problem says why not.
	Verified bool   `json:"verified"`
	Problem  string `json:"problem,omitempty"`
	Format   int    `json:"format,omitempty"`
	Records  uint64 `json:"records"`
	// Checkpoint is the signed checkpoint the report was built from (a log
	// directory), or the stored tree's root (the control plane).
	Checkpoint string `json:"checkpoint,omitempty"`
	Root       string `json:"root,omitempty"`
	Malformed  int    `json:"malformed_lines"`
	InRange    int    `json:"decisions_in_range"`
}

// where names the log in commands.
func (l LogSource) where() string {
	if l.Server != "" {
		return "--server " + l.Server
	}
	return "--log " + l.Dir
}

// Collect reads every source and builds the report.
func Collect(ctx context.Context, in Inputs) (*Report, error) {
	if len(in.Sources) == 0 {
		return nil, errors.New("evidence: at least one decision log is required")
	}
	if in.Sample < 0 || in.Sample > MaxSample {
		return nil, fmt.Errorf("evidence: sample %d outside 0..%d", in.Sample, MaxSample)
	}
	if in.Now.IsZero() {
		in.Now = time.Now()
	}
	// A seeded generator on purpose: the auditor re-draws the same sample
	// from the same seed. Nothing secret depends on it.
	rng := rand.New(rand.NewPCG(in.Seed, in.Seed^0x5851f42d4c957f2d)) //nolint:gosec // reproducible sample, not a secret
	rep := &Report{From: in.From, To: in.To, Generated: in.Now.UTC(), Seed: in.Seed}
	var revs []*revTrack
	if in.Inventory != nil {
		revs = revocationsIn(in, in.Inventory)
	}
	st := newStats(revs, len(in.Sources))
	for i, s := range in.Sources {
		// Verification and the counting pass read the log independently:
		// run them side by side.
		type verified struct {
			src LogSource
			err error
		}
		vc := make(chan verified, 1)
		go func() {
			src, err := s.Verify(ctx)
			vc <- verified{src, err}
		}()
		st.links = newIDWindow()
		before, name := st.decisions, ""
		malformed, err := s.Scan(ctx, in.From, in.To, func(sc Scanned) error {
			if name == "" {
				name = sc.Record.Log
			}
			st.add(i, sc, rng, in.Sample)
			return ctx.Err()
		})
		v := <-vc
		if err != nil {
			return nil, err
		}
		if v.err != nil {
			return nil, v.err
		}
		src := v.src
		if src.Name == "" {
			src.Name = name
		}
		src.Malformed, src.InRange = malformed, st.decisions-before
		rep.Logs = append(rep.Logs, src)
	}
	st.links = nil
	rep.build(in, st)
	return rep, nil
}
