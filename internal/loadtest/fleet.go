package loadtest

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/agentauthz/agentauthz/internal/checkreq"
	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/identity"
	"github.com/agentauthz/agentauthz/internal/policy"
)

// The fleet curve: how the two caches of the decision path (verified
// identities, policy decisions) behave as the number of distinct agents
// grows past their size. Requests come from a fleet of N agents, each
// picked with a Zipf skew (a few agents make most requests, a long tail
// makes few), half of them with a certificate (native profile: identity
// cache, then decision cache) and half with a bare SPIFFE ID (SPIFFE
// profile: a new *identity.Agent per request, decision cache only). It runs
// in process, identity and policy only: revocation and the decision log
// do not depend on the number of agents per cache entry.

// Fleet defaults.
const (
	DefaultFleetZipf     = 1.1
	DefaultFleetRequests = 200_000
	maxFleetAgents       = 10_000_000
	spiffeFleetDomain    = "spiffe." + TrustDomain
)

// DefaultFleetSizes are the fleet sizes of the curve.
var DefaultFleetSizes = []int{1_000, 10_000, 100_000, 1_000_000}

// FleetOptions configure RunFleet. Zero values take the defaults noted.
type FleetOptions struct {
	// PoliciesDir is the policy directory (default "policies").
	PoliciesDir string
	// Agents are the fleet sizes; default DefaultFleetSizes.
	Agents []int
	// Zipf is the skew s (> 1): agent k (0-based) is picked with
	// probability proportional to (1+k)^-s. Default DefaultFleetZipf.
	Zipf float64
	// Requests measured per fleet size, after as many again to warm the
	// caches; default DefaultFleetRequests.
	Requests int
	// Workers calling concurrently; default GOMAXPROCS.
	Workers int
	// IdentityCache and DecisionCache are the cache sizes; default the
	// service's defaults.
	IdentityCache, DecisionCache int
	// Seed makes the draws repeatable; default 1.
	Seed uint64
	// Progress receives one line per step; nil is silent.
	Progress io.Writer
}

// FleetPoint is the measurement of one fleet size.
type FleetPoint struct {
	Agents   int // fleet size
	Distinct int // distinct agents among the measured requests
	Requests int // measured requests
	// IdentityHitRate is the share of certificate identities answered
	// from the identity cache; DecisionHitRate the share of decisions
	// answered from the decision cache.
	IdentityHitRate, DecisionHitRate float64
	// CPUPerCheck is process CPU time (user + system) per request, over
	// the measured requests; AllocsPerCheck heap allocations per request.
	CPUPerCheck    time.Duration
	AllocsPerCheck float64
}

func (o *FleetOptions) defaults() error {
	if o.PoliciesDir == "" {
		o.PoliciesDir = "policies"
	}
	if len(o.Agents) == 0 {
		o.Agents = DefaultFleetSizes
	}
	for _, n := range o.Agents {
		if n < 2 || n > maxFleetAgents {
			return fmt.Errorf("fleet of %d agents: want 2..%d", n, maxFleetAgents)
		}
	}
	if o.Zipf == 0 {
		o.Zipf = DefaultFleetZipf
	}
	if !(o.Zipf > 1) || o.Zipf > 10 {
		return fmt.Errorf("zipf skew %v: want more than 1 and at most 10", o.Zipf)
	}
	if o.Requests <= 0 {
		o.Requests = DefaultFleetRequests
	}
	if o.Requests > 10_000_000 {
		return fmt.Errorf("%d requests: at most 10000000", o.Requests)
	}
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	if o.IdentityCache <= 0 {
		o.IdentityCache = identity.DefaultCacheSize
	}
	if o.DecisionCache <= 0 {
		o.DecisionCache = config.DefaultDecisionCacheEntries
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
	return nil
}

func (o *FleetOptions) progress(format string, args ...any) {
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, "bench: "+format+"\n", args...)
	}
}

// fleetRegistry is the SPIFFE registry of the fleet: every SPIFFE ID is
// known, with a trust level and scopes that vary by agent.
type fleetRegistry struct{}

func (fleetRegistry) LookupAgent(spiffeID string) (identity.RegistryEntry, bool) {
	k := len(spiffeID) % 3
	return identity.RegistryEntry{TrustLevel: 1 + k, Scopes: []string{"payments:initiate", "payments:read"}[:1+k%2], Owner: "team-fleet"}, true
}

// fleetRoutes are the requests an agent makes, picked per request.
var fleetRoutes = [...][2]string{{"GET", "/v1/payments/p-1"}, {"POST", "/v1/payments"}, {"GET", "/v1/payments"}}

// RunFleet measures the fleet curve, one point per fleet size.
func RunFleet(ctx context.Context, o FleetOptions) ([]FleetPoint, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	p, err := newPKI(time.Now())
	if err != nil {
		return nil, err
	}
	var out []FleetPoint
	for _, n := range o.Agents {
		pt, err := runFleetSize(ctx, &o, p, n)
		if err != nil {
			return out, fmt.Errorf("fleet of %d: %w", n, err)
		}
		o.progress("fleet %d agents: %d distinct, identity hits %.1f%%, decision hits %.1f%%, %v CPU and %.0f allocations per check",
			n, pt.Distinct, 100*pt.IdentityHitRate, 100*pt.DecisionHitRate, pt.CPUPerCheck, pt.AllocsPerCheck)
		out = append(out, pt)
	}
	return out, nil
}

func runFleetSize(ctx context.Context, o *FleetOptions, p *pki, n int) (FleetPoint, error) {
	rng := rand.New(rand.NewPCG(o.Seed, uint64(n))) //nolint:gosec // repeatable draws of a benchmark, not a secret
	zipf := rand.NewZipf(rng, o.Zipf, 1, uint64(n-1))
	draws := make([]uint32, 2*o.Requests)
	for i := range draws {
		draws[i] = uint32(zipf.Uint64())
	}
	// Requests of the agents drawn, certificates issued only for those.
	o.progress("fleet %d agents: issuing certificates for the agents drawn", n)
	reqs := map[uint32]*[len(fleetRoutes)]*authv3.CheckRequest{}
	for _, k := range draws {
		if reqs[k] != nil {
			continue
		}
		if err := ctx.Err(); err != nil {
			return FleetPoint{}, err
		}
		var set [len(fleetRoutes)]*authv3.CheckRequest
		var certPEM []byte
		if k%2 == 0 {
			c, err := p.issue(fmt.Sprintf("fleet-%d", k), 1+int(k%4), []string{"payments:initiate", "payments:read"}, false)
			if err != nil {
				return FleetPoint{}, err
			}
			certPEM = c.certPEM
		}
		for i, rt := range fleetRoutes {
			r := checkreq.Request{Method: rt[0], Path: rt[1], CertPEM: certPEM, Via: checkreq.ViaPeer}
			if certPEM == nil {
				r.Via = checkreq.ViaNone
			}
			req, err := checkreq.Build(r)
			if err != nil {
				return FleetPoint{}, err
			}
			if certPEM == nil {
				req.Attributes.Source.Principal = fmt.Sprintf("spiffe://%s/agent/fleet-%d", spiffeFleetDomain, k)
			}
			set[i] = req
		}
		reqs[k] = &set
	}

	reg := prometheus.NewRegistry()
	// A generous evaluation timeout: this measures CPU, and a busy host must
	// not turn a slow evaluation into a failed run.
	engine, err := policy.New(policy.Config{Dir: o.PoliciesDir, DecisionCache: o.DecisionCache, Registerer: reg,
		Logger: hclog.NewNullLogger(), EvalTimeout: time.Minute})
	if err != nil {
		return FleetPoint{}, err
	}
	native, err := identity.NewBundle(TrustDomain, identity.ProfileNative, []*x509.Certificate{p.caCert})
	if err != nil {
		return FleetPoint{}, err
	}
	spiffe, err := identity.NewBundle(spiffeFleetDomain, identity.ProfileSPIFFE, nil)
	if err != nil {
		return FleetPoint{}, err
	}
	verifier, err := identity.NewVerifier(identity.Config{
		Sources:  []identity.Source{identity.SourcePeerCertificate, identity.SourceSPIFFEID},
		Bundles:  []identity.Bundle{native, spiffe},
		Registry: fleetRegistry{}, CacheSize: o.IdentityCache, Registerer: reg,
	})
	if err != nil {
		return FleetPoint{}, err
	}

	check := func(i int) error {
		k := draws[i]
		req := reqs[k][i%len(fleetRoutes)]
		agent, ierr := verifier.Identify(req.GetAttributes())
		if ierr != nil {
			return fmt.Errorf("agent %d: %w", k, ierr)
		}
		_, err := engine.Eval(ctx, req, agent)
		return err
	}
	run := func(from, to int) error {
		var next atomic.Int64
		next.Store(int64(from))
		var wg sync.WaitGroup
		errs := make([]error, o.Workers)
		for w := range o.Workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1) - 1)
					if i >= to || ctx.Err() != nil {
						return
					}
					if err := check(i); err != nil {
						errs[w] = err
						return
					}
				}
			}()
		}
		wg.Wait()
		return errors.Join(append(errs, ctx.Err())...)
	}
	o.progress("fleet %d agents: %d requests to warm the caches, %d measured", n, o.Requests, o.Requests)
	if err := run(0, o.Requests); err != nil {
		return FleetPoint{}, err
	}
	before, err := fleetCounters(reg)
	if err != nil {
		return FleetPoint{}, err
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	mallocs, cpu := ms.Mallocs, procCPUNanos()
	if err := run(o.Requests, 2*o.Requests); err != nil {
		return FleetPoint{}, err
	}
	cpu = procCPUNanos() - cpu
	runtime.ReadMemStats(&ms)
	after, err := fleetCounters(reg)
	if err != nil {
		return FleetPoint{}, err
	}
	distinct := map[uint32]bool{}
	for _, k := range draws[o.Requests:] {
		distinct[k] = true
	}
	d := after.sub(before)
	return FleetPoint{
		Agents: n, Distinct: len(distinct), Requests: o.Requests,
		IdentityHitRate: ratio(d.idHits, d.idHits+d.idMisses),
		DecisionHitRate: ratio(d.decHits, d.decHits+d.decMisses),
		CPUPerCheck:     time.Duration(cpu / int64(o.Requests)),
		AllocsPerCheck:  float64(ms.Mallocs-mallocs) / float64(o.Requests),
	}, nil
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

type fleetCount struct{ idHits, idMisses, decHits, decMisses float64 }

func (a fleetCount) sub(b fleetCount) fleetCount {
	return fleetCount{a.idHits - b.idHits, a.idMisses - b.idMisses, a.decHits - b.decHits, a.decMisses - b.decMisses}
}

// fleetCounters reads the caches' hit and miss counters.
func fleetCounters(reg *prometheus.Registry) (fleetCount, error) {
	mfs, err := reg.Gather()
	if err != nil {
		return fleetCount{}, err
	}
	var c fleetCount
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			v := m.GetCounter().GetValue()
			switch mf.GetName() {
			case "agentauthz_identity_cache_hits_total":
				c.idHits = v
			case "agentauthz_identity_cache_misses_total":
				c.idMisses = v
			case "agentauthz_policy_decision_cache_total":
				switch label(m, "result") {
				case "hit":
					c.decHits = v
				case "miss":
					c.decMisses = v
				}
			}
		}
	}
	return c, nil
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// FleetTable renders the curve as a Markdown table.
func FleetTable(o FleetOptions, pts []FleetPoint) string {
	_ = o.defaults() // as RunFleet ran
	var b strings.Builder
	fmt.Fprintf(&b, "Zipf s = %.2f, %d measured requests per size after as many to warm up, identity cache %d, decision cache %d entries, %d workers.\n\n",
		o.Zipf, o.Requests, o.IdentityCache, o.DecisionCache, o.Workers)
	b.WriteString("| agents | distinct in the run | identity cache hits | decision cache hits | CPU per check | allocations per check |\n|---:|---:|---:|---:|---:|---:|\n")
	for _, p := range pts {
		fmt.Fprintf(&b, "| %d | %d | %.1f%% | %.1f%% | %.1f µs | %.0f |\n", p.Agents, p.Distinct,
			100*p.IdentityHitRate, 100*p.DecisionHitRate, float64(p.CPUPerCheck)/1e3, p.AllocsPerCheck)
	}
	return b.String()
}
