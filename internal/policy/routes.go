package policy

import (
	"fmt"
	"net/url"
	"strings"
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
// Normalisation rule (fail closed: anything ambiguous matches nothing):
// the query and fragment are dropped; the path must start with "/"; it is
// split on "/" BEFORE percent-decoding, so an encoded slash (%2F) stays inside
// its segment; each segment is then percent-decoded once and must not be
// empty ("//" or a trailing "/"), made only of dots and spaces (".", "..",
// "...", ". "), and must not contain "/", "\", ";" (path parameters: "..;"
// is ".." to servlet containers), "%" (a double encoding that an upstream
// decoding twice would read differently), NUL or other control characters
// after decoding. Such paths match no route
// rather than being rewritten: Envoy (normalize_path, merge_slashes) should
// already have produced the canonical form, so a non-canonical path reaching
// us is suspicious. Matching is case-sensitive; "*" matches exactly one
// segment and a literal segment is preferred over "*".
func (t *routeTable) Match(method, path string) string {
	if t == nil {
		return ""
	}
	root := t.methods[method]
	if root == nil {
		return ""
	}
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	if len(path) > maxRoutePathBytes || !strings.HasPrefix(path, "/") {
		return ""
	}
	if path == "/" {
		return root.operation
	}
	var buf [16]string
	segs := buf[:0]
	rest := path[1:]
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
	if strings.Trim(seg, ". ") == "" {
		return "", false // empty, ".", "..", "...", ". " and the like
	}
	for i := 0; i < len(seg); i++ {
		switch c := seg[i]; {
		case c < 0x20, c == 0x7f, c == '/', c == '\\', c == ';', c == '%':
			return "", false
		}
	}
	return seg, true
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
