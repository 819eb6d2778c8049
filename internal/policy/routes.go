package policy

import (
	"fmt"
	"net/url"
	"strings"
	"unicode/utf8"
)

// Route maps a method and a path pattern to an operation. It is one element
// of data.agentauthz.routes.
type Route struct {
	Method    string `json:"method"`    // upper case, e.g. "POST"
	Path      string `json:"path"`      // "/v1/loans/*/repayments"; "*" matches one segment
	Operation string `json:"operation"` // e.g. "loans:repay"
}

// Bounds on what the router looks at. Longer paths never match a route.
const (
	maxRoutePathBytes = 4096
	maxRouteSegments  = 64
)

// routeNode is one level of the segment trie. Lookup cost depends on the
// number of path segments, not on the number of routes.
type routeNode struct {
	children  map[string]*routeNode
	wildcard  *routeNode
	operation string
}

// routeTable is immutable after newRouteTable; it is rebuilt on every reload.
type routeTable struct {
	methods map[string]*routeNode
}

func newRouteTable(routes []Route) (*routeTable, error) {
	t := &routeTable{methods: make(map[string]*routeNode)}
	for i, r := range routes {
		if r.Method == "" || r.Method != strings.ToUpper(r.Method) {
			return nil, fmt.Errorf("route %d: method %q must be non-empty upper case", i, r.Method)
		}
		if r.Operation == "" {
			return nil, fmt.Errorf("route %d: empty operation", i)
		}
		segs, ok := splitPattern(r.Path)
		if !ok {
			return nil, fmt.Errorf("route %d: invalid path pattern %q", i, r.Path)
		}
		n := t.methods[r.Method]
		if n == nil {
			n = &routeNode{}
			t.methods[r.Method] = n
		}
		for _, s := range segs {
			if s == "*" {
				if n.wildcard == nil {
					n.wildcard = &routeNode{}
				}
				n = n.wildcard
				continue
			}
			if n.children == nil {
				n.children = make(map[string]*routeNode)
			}
			c := n.children[s]
			if c == nil {
				c = &routeNode{}
				n.children[s] = c
			}
			n = c
		}
		if n.operation != "" && n.operation != r.Operation {
			return nil, fmt.Errorf("route %d: %s %s maps to both %q and %q", i, r.Method, r.Path, n.operation, r.Operation)
		}
		n.operation = r.Operation
	}
	return t, nil
}

// splitPattern validates a route pattern: absolute, no empty, "." or ".."
// segments, no percent escapes (patterns are written decoded).
func splitPattern(p string) ([]string, bool) {
	if !strings.HasPrefix(p, "/") || strings.ContainsAny(p, "?#%\\") {
		return nil, false
	}
	if p == "/" {
		return nil, true
	}
	segs := strings.Split(p[1:], "/")
	for _, s := range segs {
		if s == "" || s == "." || s == ".." || (strings.Contains(s, "*") && s != "*") {
			return nil, false
		}
	}
	return segs, true
}

// Match returns the operation for method and the request path (as Envoy
// sends it in :path, query included), or "" when no route matches.
//
// The segments are parsed_path's (path.go): the query is cut at the first
// "?", leading slashes are dropped, the rest is split on "/" and each
// segment percent-decoded. On top of that the rule fails closed: a path
// that does not start with "/", or has a segment that parsed_path would
// read differently from an upstream, matches nothing instead of being
// rewritten. Such a segment is empty ("a//b", a trailing "/"), made only of
// dots and spaces (".", "..", "%2e%2e", ". ", and the fullwidth and leader
// dots some normalisers fold to "."), or contains after decoding "/" (an
// encoded %2F: one segment upstream, two in parsed_path), "\", ";" (path
// parameters: servlet containers read "..;" as ".."), "%" (a double
// encoding an upstream decoding twice reads differently), "#" (a fragment
// Envoy should have rejected), a control character, or bytes that are not
// UTF-8 (an overlong "%C0%AE" is "." to a lax decoder). Envoy
// (normalize_path, merge_slashes) should already have produced the
// canonical form, so a non-canonical path reaching us is suspicious.
// Matching is case-sensitive; "*" matches exactly one segment and a literal
// segment is preferred over "*".
func (t *routeTable) Match(method, path string) string {
	if t == nil {
		return ""
	}
	root := t.methods[method]
	if root == nil {
		return ""
	}
	path, _ = cutTarget(path)
	if len(path) > maxRoutePathBytes || !strings.HasPrefix(path, "/") {
		return ""
	}
	rest := strings.TrimLeft(path, "/")
	if rest == "" {
		return root.operation // parsed_path [""]
	}
	var buf [16]string
	segs := buf[:0]
	for {
		if len(segs) == maxRouteSegments {
			return ""
		}
		i := strings.IndexByte(rest, '/')
		raw := rest
		if i >= 0 {
			raw = rest[:i]
		}
		seg, ok := cleanSegment(raw)
		if !ok {
			return ""
		}
		segs = append(segs, seg)
		if i < 0 {
			break
		}
		rest = rest[i+1:]
	}
	return root.match(segs)
}

func cleanSegment(raw string) (string, bool) {
	seg := raw
	if strings.IndexByte(raw, '%') >= 0 {
		var err error
		seg, err = url.PathUnescape(raw)
		if err != nil {
			return "", false
		}
	}
	if !utf8.ValidString(seg) || onlyDots(seg) {
		return "", false
	}
	for i := 0; i < len(seg); i++ {
		switch c := seg[i]; {
		case c < 0x20, c == 0x7f, c == '/', c == '\\', c == ';', c == '%', c == '#':
			return "", false
		}
	}
	return seg, true
}

// onlyDots reports a segment that is empty or made only of spaces and
// characters that read as dots: ".", and the ones Unicode compatibility
// normalisation (NFKC) turns into dots (fullwidth "．", one-dot leader,
// two-dot leader, ellipsis, small full stop).
func onlyDots(seg string) bool {
	for _, r := range seg {
		switch r {
		case '.', ' ', '\uFF0E', '\u2024', '\u2025', '\u2026', '\uFE52':
		default:
			return false
		}
	}
	return true
}

// match walks the trie, preferring literal segments and backtracking to "*".
func (n *routeNode) match(segs []string) string {
	if len(segs) == 0 {
		return n.operation
	}
	if c := n.children[segs[0]]; c != nil {
		if op := c.match(segs[1:]); op != "" {
			return op
		}
	}
	if n.wildcard != nil {
		return n.wildcard.match(segs[1:])
	}
	return ""
}
