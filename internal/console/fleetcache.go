package console

import (
	"sync"
	"time"

	"github.com/agentauthz/agentauthz/internal/ca"
)

// The fleet page needs every agent's newest certificate and restriction:
// reading the whole inventory costs about half a second at 10,000 agents
// (docs/performance.md). It reads a snapshot instead, taken again when it
// is older than fleetTTL, when the inventory's revocation generation moved
// (every revocation, restriction and lift, from any process, bumps it: one
// indexed read), or when this console changed an agent. A new agent issued
// elsewhere appears within fleetTTL; statuses that follow from the time
// (expiring, expired) are worked out at each request.
const fleetTTL = 10 * time.Second

// fleetAgent is one agent of the snapshot.
type fleetAgent struct {
	cert  ca.AgentSummary // from its newest certificate
	restr *ca.Restriction
}

type fleetSnapshot struct {
	agents  []fleetAgent // by trust domain, then agent id
	tenants []string
	gen     int64
	at      time.Time
}

type fleetCache struct {
	mu   sync.Mutex
	snap *fleetSnapshot
}

func (f *fleetCache) invalidate() {
	f.mu.Lock()
	f.snap = nil
	f.mu.Unlock()
}

// fleetAgents returns a current snapshot.
func (c *Console) fleetAgents() (*fleetSnapshot, error) {
	gen, err := c.cfg.Authority.RevocationGeneration()
	if err != nil {
		return nil, err
	}
	now := c.cfg.Now()
	c.fleetSnap.mu.Lock()
	defer c.fleetSnap.mu.Unlock() // one reader at a time: a burst waits for one read, not many
	if s := c.fleetSnap.snap; s != nil && s.gen == gen && now.Sub(s.at) < fleetTTL && !now.Before(s.at) {
		return s, nil
	}
	agents, err := c.cfg.Authority.Fleet() // by trust domain, then agent id
	if err != nil {
		return nil, err
	}
	rs, err := c.cfg.Authority.ListRestrictions("")
	if err != nil {
		return nil, err
	}
	restr := make(map[[2]string]*ca.Restriction, len(rs))
	for i := range rs {
		restr[[2]string{rs[i].TrustDomain, rs[i].AgentID}] = &rs[i]
	}
	s := &fleetSnapshot{gen: gen, at: now, agents: make([]fleetAgent, len(agents))}
	for i, a := range agents {
		s.agents[i] = fleetAgent{cert: a, restr: restr[[2]string{a.TrustDomain, a.AgentID}]}
		if n := len(s.tenants); n == 0 || s.tenants[n-1] != a.TrustDomain {
			s.tenants = append(s.tenants, a.TrustDomain)
		}
	}
	c.fleetSnap.snap = s
	return s, nil
}
