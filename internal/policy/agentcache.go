package policy

import (
	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/agentauthz/agentauthz/internal/boundcache"
	"github.com/agentauthz/agentauthz/internal/identity"
)

// maxCachedAgents bounds the input.agent cache.
const maxCachedAgents = 4096

// agentTermCache keeps input.agent (a quarter of the input's allocations)
// per agent, keyed on the digest of every attribute it is built from, so
// that equal agents share it whatever their pointers (the SPIFFE profile
// makes a new *identity.Agent per request).
type agentTermCache struct {
	m *boundcache.Cache[digest, *ast.Term]
}

func newAgentTermCache() agentTermCache {
	return agentTermCache{m: boundcache.New[digest, *ast.Term](maxCachedAgents)}
}

func (c agentTermCache) term(a *identity.Agent) *ast.Term {
	if a == nil {
		return nil
	}
	d := agentDigest(a)
	if t, ok := c.m.Get(d); ok {
		return t
	}
	t := ast.NewTerm(agentValue(a))
	c.m.Set(d, t)
	return t
}
