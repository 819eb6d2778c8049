package console

import (
	"sort"
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
	cert  ca.Certificate // the newest, without its PEM
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
	certs, err := c.cfg.Authority.List(ca.ListFilter{NoPEM: true})
	if err != nil {
		return nil, err
	}
	rs, err := c.cfg.Authority.ListRestrictions("")
	if err != nil {
		return nil, err
	}
	restr := make(map[string]*ca.Restriction, len(rs))
	for i := range rs {
		restr[rs[i].TrustDomain+"\x00"+rs[i].AgentID] = &rs[i]
	}
	// List is oldest first: the last certificate of an agent is its newest.
	newest := map[string]int{}
	for i := range certs {
		newest[certs[i].TrustDomain+"\x00"+certs[i].AgentID] = i
	}
	s := &fleetSnapshot{gen: gen, at: now, agents: make([]fleetAgent, 0, len(newest))}
	tenants := map[string]bool{}
	for k, i := range newest {
		s.agents = append(s.agents, fleetAgent{cert: certs[i], restr: restr[k]})
		tenants[certs[i].TrustDomain] = true
	}
	sort.Slice(s.agents, func(i, j int) bool {
		a, b := s.agents[i].cert, s.agents[j].cert
		if a.TrustDomain != b.TrustDomain {
			return a.TrustDomain < b.TrustDomain
		}
		return a.AgentID < b.AgentID
	})
	for td := range tenants {
		s.tenants = append(s.tenants, td)
	}
	sort.Strings(s.tenants)
	c.fleetSnap.snap = s
	return s, nil
}
