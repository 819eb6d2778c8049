package policy

import (
	"sync"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/agentauthz/agentauthz/internal/identity"
)

// maxCachedAgents bounds the input.agent cache; it is emptied when full.
const maxCachedAgents = 4096

// agentTermCache keeps input.agent per *identity.Agent. The identity
// verifier hands out the same immutable *Agent for every request with the
// same certificate, so the agent object (a quarter of the input's
// allocations) is built once per certificate instead of once per request.
type agentTermCache struct {
	mu sync.RWMutex
	m  map[*identity.Agent]*ast.Term
}

func (c *agentTermCache) term(a *identity.Agent) *ast.Term {
	if a == nil {
		return nil
	}
	c.mu.RLock()
	t, ok := c.m[a]
	c.mu.RUnlock()
	if ok {
		return t
	}
	t = ast.NewTerm(agentValue(a))
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxCachedAgents {
		c.m = make(map[*identity.Agent]*ast.Term)
	}
	c.m[a] = t
	c.mu.Unlock()
	return t
}
