package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/agentauthz/agentauthz/internal/identity"
)

// The engine is the identity verifier's registry for SPIFFE-only identities
// (Istio or SPIRE workloads that forward no certificate), read from
// data.agentauthz.agents[<spiffe id>].
var _ identity.Registry = (*Engine)(nil)

// Bounds on what policy data may carry.
const (
	maxRoutes       = 10000
	maxAgents       = 100000
	maxOperations   = 10000
	maxRestrictions = 100000
	maxNameBytes    = 256  // operation names, scopes, tenants
	maxNoteBytes    = 1024 // a restriction's note
)

// ErrInvalidData refuses policy data that does not follow the schema of
// data.agentauthz (docs/policies.md, "Policy data"). The shipped policy is
// written to deny on malformed data too, but a refused load is louder: the
// previous policy and data keep serving, the error is logged and
// agentauthz_policy_data_refused_total counts it.
var ErrInvalidData = errors.New("invalid policy data")

// LookupAgent returns the registry entry for a SPIFFE ID from the policy
// serving now. An unknown ID gives ok=false: the caller treats it as L0 with
// no scopes (docs/design.md).
func (e *Engine) LookupAgent(spiffeID string) (identity.RegistryEntry, bool) {
	s := e.cur.Load()
	if s == nil {
		return identity.RegistryEntry{}, false
	}
	r, ok := s.agents[spiffeID]
	return r, ok
}

// parseAgentauthzData validates data.agentauthz against its schema and
// returns the route table and the SPIFFE agent registry. data.agentauthz is
// optional (an opa-envoy-plugin policy has none), and so is each of its
// documents; a key it does not know is refused, so that a misspelt document
// ("restriction") cannot be silently ignored.
func parseAgentauthzData(data map[string]any) (*routeTable, map[string]identity.RegistryEntry, *mcpTable, error) {
	table, agents, mcpt, err := parseAgentauthzDocs(data)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%w: data.agentauthz%w", ErrInvalidData, err)
	}
	return table, agents, mcpt, nil
}

// pathError prefixes an error with the path of the value it is about, so
// that the message reads data.agentauthz.operations["x"].min_trust: ….
type pathError struct {
	path string
	err  error
}

func (e *pathError) Error() string { return e.path + ": " + e.err.Error() }
func (e *pathError) Unwrap() error { return e.err }

func at(path string, err error) error {
	var pe *pathError
	if errors.As(err, &pe) {
		return &pathError{path + pe.path, pe.err}
	}
	return &pathError{path, err}
}

func key(k string) string { return "[" + strconv.Quote(k) + "]" }

func parseAgentauthzDocs(data map[string]any) (*routeTable, map[string]identity.RegistryEntry, *mcpTable, error) {
	raw, ok := data["agentauthz"]
	if !ok {
		t, err := newRouteTable(nil)
		return t, map[string]identity.RegistryEntry{}, nil, err
	}
	root, ok := raw.(map[string]any)
	if !ok {
		return nil, nil, nil, at("", fmt.Errorf("want object, got %s", typeName(raw)))
	}
	for _, k := range sortedKeys(root) {
		switch k {
		case "operations", "routes", "agents", "restrictions", "mcp":
		default:
			return nil, nil, nil, at(key(k), errors.New("unknown document (known: agents, mcp, operations, restrictions, routes)"))
		}
	}
	var ops map[string]bool
	if raw, ok := root["operations"]; ok {
		var err error
		if ops, err = parseOperations(raw); err != nil {
			return nil, nil, nil, at(".operations", err)
		}
	}
	routes, err := parseRoutes(root["routes"], ops)
	if err != nil {
		return nil, nil, nil, at(".routes", err)
	}
	table, err := newRouteTable(routes)
	if err != nil {
		return nil, nil, nil, at(".routes", err)
	}
	agents := map[string]identity.RegistryEntry{}
	if raw, ok := root["agents"]; ok {
		m, ok := raw.(map[string]any)
		if !ok {
			return nil, nil, nil, at(".agents", fmt.Errorf("want object, got %s", typeName(raw)))
		}
		if len(m) > maxAgents {
			return nil, nil, nil, at(".agents", fmt.Errorf("more than %d", maxAgents))
		}
		for id, v := range m {
			rec, err := parseAgentRecord(v)
			if err != nil {
				return nil, nil, nil, at(".agents"+key(id), err)
			}
			agents[id] = rec
		}
	}
	if raw, ok := root["restrictions"]; ok {
		if err := validateRestrictions(raw); err != nil {
			return nil, nil, nil, at(".restrictions", err)
		}
	}
	mcpt, err := parseMCP(root["mcp"], ops, table)
	if err != nil {
		return nil, nil, nil, at(".mcp", err)
	}
	return table, agents, mcpt, nil
}

// parseOperations checks data.agentauthz.operations: each operation needs an
// integer min_trust 0..4 and a "<resource>:<action>" scope; "tenants", when
// present, limits it to agents of those trust domains. It returns the set
// of operation names.
func parseOperations(raw any) (map[string]bool, error) {
	m, ok := raw.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("want object, got %s", typeName(raw))
	}
	if len(m) > maxOperations {
		return nil, fmt.Errorf("more than %d", maxOperations)
	}
	names := make(map[string]bool, len(m))
	for _, name := range sortedKeys(m) {
		if err := checkName(name); err != nil {
			return nil, at(key(name), err)
		}
		if err := checkOperation(m[name]); err != nil {
			return nil, at(key(name), err)
		}
		names[name] = true
	}
	return names, nil
}

func checkOperation(v any) error {
	o, ok := v.(map[string]any)
	if !ok {
		return fmt.Errorf("want object, got %s", typeName(v))
	}
	if _, ok := o["min_trust"]; !ok {
		return at(".min_trust", errors.New("missing (an operation without it is denied to everyone)"))
	}
	// A public operation (MCP's initialize, ping, tools/list) needs no
	// scope; every other one needs exactly one, never both.
	public := o["public"] == true
	if _, ok := o["scope"]; ok == public {
		if public {
			return at(".scope", errors.New("a public operation has no scope (every agent of min_trust may perform it)"))
		}
		return at(".scope", errors.New("missing (an operation without it is denied to everyone; \"public\": true for one every agent may perform)"))
	}
	for _, k := range sortedKeys(o) {
		v := o[k]
		var err error
		switch k {
		case "min_trust":
			if _, ok := trustLevel(v); !ok {
				err = fmt.Errorf("want an integer 0..4, got %s", describe(v))
			}
		case "scope":
			s, ok := v.(string)
			if !ok || !strings.Contains(s, ":") || len(s) > maxNameBytes {
				err = fmt.Errorf("want \"<resource>:<action>\", got %s", describe(v))
			}
		case "description":
			if _, ok := v.(string); !ok {
				err = fmt.Errorf("want string, got %s", typeName(v))
			}
		case "tenants":
			err = checkStrings(v, checkName)
		case "public":
			if _, ok := v.(bool); !ok {
				err = fmt.Errorf("want true or false, got %s", describe(v))
			}
		default:
			err = errors.New("unknown field (known: description, min_trust, public, scope, tenants)")
		}
		if err != nil {
			return at("."+k, err)
		}
	}
	return nil
}

// parseRoutes reads data.agentauthz.routes; with ops non-nil, every route
// must name one of them.
func parseRoutes(raw any, ops map[string]bool) ([]Route, error) {
	if raw == nil {
		return nil, nil
	}
	arr, ok := raw.([]any)
	if !ok {
		return nil, fmt.Errorf("want array, got %s", typeName(raw))
	}
	if len(arr) > maxRoutes {
		return nil, fmt.Errorf("more than %d", maxRoutes)
	}
	routes := make([]Route, 0, len(arr))
	for i, r := range arr {
		idx := "[" + strconv.Itoa(i) + "]"
		m, ok := r.(map[string]any)
		if !ok {
			return nil, at(idx, fmt.Errorf("want object, got %s", typeName(r)))
		}
		var rt Route
		for _, k := range sortedKeys(m) {
			s, ok := m[k].(string)
			if !ok {
				return nil, at(idx+"."+k, fmt.Errorf("want string, got %s", typeName(m[k])))
			}
			switch k {
			case "method":
				rt.Method = s
			case "path":
				rt.Path = s
			case "operation":
				rt.Operation = s
			default:
				return nil, at(idx+"."+k, errors.New("unknown field (known: method, operation, path)"))
			}
		}
		if ops != nil && !ops[rt.Operation] {
			return nil, at(idx+".operation", fmt.Errorf("%q is not in data.agentauthz.operations", rt.Operation))
		}
		routes = append(routes, rt)
	}
	return routes, nil
}

// ValidateRestrictions checks a value for data.agentauthz.restrictions
// against the schema docs/policies.md gives ("Restrictions"): an object
// keyed by the agent's SPIFFE ID, each value an object with optional
// quarantined (boolean), max_trust (integer 0..4), removed_scopes (array of
// strings), until (RFC 3339) and note (string). Numbers may be json.Number,
// float64 or int. Whoever pushes restrictions must call it before they are
// used.
func ValidateRestrictions(raw any) error {
	if err := validateRestrictions(raw); err != nil {
		return fmt.Errorf("%w: data.agentauthz.restrictions%w", ErrInvalidData, err)
	}
	return nil
}

func validateRestrictions(raw any) error {
	m, ok := raw.(map[string]any)
	if !ok {
		return at("", fmt.Errorf("want object, got %s", typeName(raw)))
	}
	if len(m) > maxRestrictions {
		return at("", fmt.Errorf("more than %d", maxRestrictions))
	}
	for _, id := range sortedKeys(m) {
		if _, _, err := identity.ParseSPIFFEID(id); err != nil {
			return at(key(id), fmt.Errorf("a restriction is keyed by the agent's SPIFFE ID (spiffe://<trust-domain>/agent/<id>): %w", err))
		}
		if err := checkRestriction(m[id]); err != nil {
			return at(key(id), err)
		}
	}
	return nil
}

func checkRestriction(v any) error {
	r, ok := v.(map[string]any)
	if !ok {
		return fmt.Errorf("want object, got %s", typeName(v))
	}
	for _, k := range sortedKeys(r) {
		v := r[k]
		var err error
		switch k {
		case "quarantined":
			if _, ok := v.(bool); !ok {
				err = fmt.Errorf("want true or false, got %s", describe(v))
			}
		case "max_trust":
			if _, ok := trustLevel(v); !ok {
				err = fmt.Errorf("want an integer 0..4, got %s", describe(v))
			}
		case "removed_scopes":
			err = checkStrings(v, func(s string) error {
				if len(s) > maxNameBytes {
					return fmt.Errorf("longer than %d bytes", maxNameBytes)
				}
				return nil
			})
		case "until":
			s, ok := v.(string)
			if !ok {
				err = fmt.Errorf("want an RFC 3339 time, got %s", describe(v))
			} else if _, perr := time.Parse(time.RFC3339Nano, s); perr != nil {
				err = fmt.Errorf("want an RFC 3339 time, got %q", s)
			}
		case "note":
			if s, ok := v.(string); !ok || len(s) > maxNoteBytes {
				err = fmt.Errorf("want a string of at most %d bytes", maxNoteBytes)
			}
		default:
			err = errors.New("unknown field (known: max_trust, note, quarantined, removed_scopes, until)")
		}
		if err != nil {
			return at("."+k, err)
		}
	}
	return nil
}

// trustLevel accepts an integer 0..4 as JSON decoding (json.Number,
// float64) or Go code (int) gives it.
func trustLevel(v any) (int, bool) {
	var f float64
	switch n := v.(type) {
	case json.Number:
		i, err := n.Int64()
		if err != nil {
			return 0, false
		}
		f = float64(i)
	case float64:
		f = n
	case int:
		f = float64(n)
	default:
		return 0, false
	}
	if f != float64(int(f)) || f < 0 || f > 4 {
		return 0, false
	}
	return int(f), true
}

func checkStrings(v any, check func(string) error) error {
	arr, ok := v.([]any)
	if !ok {
		return fmt.Errorf("want an array of strings, got %s", describe(v))
	}
	for i, e := range arr {
		s, ok := e.(string)
		if !ok {
			return at("["+strconv.Itoa(i)+"]", fmt.Errorf("want string, got %s", typeName(e)))
		}
		if err := check(s); err != nil {
			return at("["+strconv.Itoa(i)+"]", err)
		}
	}
	return nil
}

func checkName(s string) error {
	if s == "" || len(s) > maxNameBytes {
		return fmt.Errorf("want 1..%d bytes", maxNameBytes)
	}
	return nil
}

// describe names a value's type, and shows it when it is a short scalar.
func describe(v any) string {
	switch x := v.(type) {
	case string:
		if len(x) <= 32 {
			return fmt.Sprintf("string %q", x)
		}
	case json.Number, bool:
		return fmt.Sprintf("%s %v", typeName(v), x)
	}
	return typeName(v)
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
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
