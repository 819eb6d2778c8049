package policy

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/agentauthz/agentauthz/internal/identity"
)

// The engine is the identity verifier's registry for SPIFFE-only identities
// (Istio or SPIRE workloads that forward no certificate), read from
// data.agentauthz.agents[<spiffe id>].
var _ identity.Registry = (*Engine)(nil)

// maxRoutes and maxAgents bound what policy data may carry.
const (
	maxRoutes = 10000
	maxAgents = 100000
)

// LookupAgent returns the registry entry for a SPIFFE ID from the policy
// serving now. An unknown ID gives ok=false: the caller treats it as L0 with
// no scopes (DESIGN.md).
func (e *Engine) LookupAgent(spiffeID string) (identity.RegistryEntry, bool) {
	s := e.cur.Load()
	if s == nil {
		return identity.RegistryEntry{}, false
	}
	r, ok := s.agents[spiffeID]
	return r, ok
}

// parseAgentauthzData reads data.agentauthz.routes and data.agentauthz.agents
// (both optional: an opa-envoy-plugin policy has neither).
func parseAgentauthzData(data map[string]any) (*routeTable, map[string]identity.RegistryEntry, error) {
	root, _ := data["agentauthz"].(map[string]any)
	var routes []Route
	if raw, ok := root["routes"]; ok {
		arr, ok := raw.([]any)
		if !ok {
			return nil, nil, fmt.Errorf("routes: want array, got %s", typeName(raw))
		}
		if len(arr) > maxRoutes {
			return nil, nil, fmt.Errorf("routes: more than %d", maxRoutes)
		}
		for i, r := range arr {
			m, ok := r.(map[string]any)
			if !ok {
				return nil, nil, fmt.Errorf("routes[%d]: want object, got %s", i, typeName(r))
			}
			var rt Route
			for k, v := range m {
				s, ok := v.(string)
				if !ok {
					return nil, nil, fmt.Errorf("routes[%d].%s: want string, got %s", i, k, typeName(v))
				}
				switch k {
				case "method":
					rt.Method = s
				case "path":
					rt.Path = s
				case "operation":
					rt.Operation = s
				}
			}
			routes = append(routes, rt)
		}
	}
	table, err := newRouteTable(routes)
	if err != nil {
		return nil, nil, err
	}
	agents := map[string]identity.RegistryEntry{}
	if raw, ok := root["agents"]; ok {
		m, ok := raw.(map[string]any)
		if !ok {
			return nil, nil, fmt.Errorf("agents: want object, got %s", typeName(raw))
		}
		if len(m) > maxAgents {
			return nil, nil, fmt.Errorf("agents: more than %d", maxAgents)
		}
		for id, v := range m {
			rec, err := parseAgentRecord(v)
			if err != nil {
				return nil, nil, fmt.Errorf("agents[%q]: %w", id, err)
			}
			agents[id] = rec
		}
	}
	return table, agents, nil
}

// parseAgentRecord accepts {"id": "...", "trust_level": "L2" | "trust": 2,
// "scopes": [...], "owner": "..."}; the identity verifier validates the
// values like a certificate's.
func parseAgentRecord(v any) (identity.RegistryEntry, error) {
	m, ok := v.(map[string]any)
	if !ok {
		return identity.RegistryEntry{}, fmt.Errorf("want object, got %s", typeName(v))
	}
	var r identity.RegistryEntry
	level := -1
	if tl, ok := m["trust_level"]; ok {
		s, ok := tl.(string)
		if !ok || len(s) != 2 || s[0] != 'L' || s[1] < '0' || s[1] > '4' {
			return r, fmt.Errorf("trust_level: want \"L0\"..\"L4\", got %v", tl)
		}
		level = int(s[1] - '0')
	}
	if t, ok := m["trust"]; ok {
		n, ok := t.(json.Number)
		i, err := n.Int64()
		if !ok || err != nil || i < 0 || i > 4 || (level >= 0 && int(i) != level) {
			return r, fmt.Errorf("trust: want 0..4 matching trust_level, got %v", t)
		}
		level = int(i)
	}
	if level < 0 {
		return r, fmt.Errorf("trust_level missing")
	}
	r.TrustLevel = level
	if sc, ok := m["scopes"]; ok {
		arr, ok := sc.([]any)
		if !ok {
			return r, fmt.Errorf("scopes: want array, got %s", typeName(sc))
		}
		for _, e := range arr {
			s, ok := e.(string)
			if !ok || !strings.Contains(s, ":") {
				return r, fmt.Errorf("scopes: want \"<resource>:<action>\", got %v", e)
			}
			r.Scopes = append(r.Scopes, s)
		}
	}
	sort.Strings(r.Scopes)
	r.Scopes = slices.Compact(r.Scopes)
	if id, ok := m["id"]; ok {
		if r.ID, ok = id.(string); !ok {
			return r, fmt.Errorf("id: want string, got %s", typeName(id))
		}
	}
	if o, ok := m["owner"]; ok {
		if r.Owner, ok = o.(string); !ok {
			return r, fmt.Errorf("owner: want string, got %s", typeName(o))
		}
	}
	return r, nil
}
