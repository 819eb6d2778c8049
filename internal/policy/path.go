package policy

import (
	"net/url"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
)

// One reading of :path serves parsed_path, parsed_query and the route table,
// and it is opa-envoy-plugin's (envoyauth/request.go, getParsedPathAndQuery):
// :path is cut at the first "?"; the part before is percent-decoded as a
// whole, stripped of every leading "/" and split on "/"; the part after is
// url.ParseQuery'd. No URL parser is involved, so "//admin/x" is the path
// admin/x (a URL parser reads host "admin", path "/x": a policy testing the
// first segment was bypassed that way), an absolute form keeps its scheme
// and host as segments, and a fragment stays inside the last segment or
// query value. A path or query that does not decode refuses the request:
// a parameter dropped from parsed_query is one the policy never sees.

// cutTarget splits :path into its path and query parts.
func cutTarget(target string) (path, query string) {
	path, query, _ = strings.Cut(target, "?")
	return path, query
}

// parsedPathTerm is input.parsed_path for the path part of :path.
func parsedPathTerm(path string) (*ast.Term, error) {
	p, err := url.PathUnescape(path) // no allocation without escapes
	if err != nil {
		return nil, err
	}
	p = strings.TrimLeft(p, "/")
	segs := make([]*ast.Term, 0, strings.Count(p, "/")+1)
	for {
		i := strings.IndexByte(p, '/')
		if i < 0 {
			segs = append(segs, ast.StringTerm(p))
			break
		}
		segs = append(segs, ast.StringTerm(p[:i]))
		p = p[i+1:]
	}
	return ast.ArrayTerm(segs...), nil
}

// parsedQueryTerm is input.parsed_query for the query part of :path: each
// key to the array of its values, in order.
func parsedQueryTerm(query string) (*ast.Term, error) {
	if query == "" {
		return ast.NewTerm(ast.NewObject()), nil
	}
	vals, err := url.ParseQuery(query)
	if err != nil {
		return nil, err
	}
	return ast.NewTerm(valuesObject(vals)), nil
}

// valuesObject converts query or form values.
func valuesObject(vals url.Values) ast.Object {
	kv := make([][2]*ast.Term, 0, len(vals))
	for k, vs := range vals {
		arr := make([]*ast.Term, len(vs))
		for i, v := range vs {
			arr[i] = ast.StringTerm(v)
		}
		kv = append(kv, ast.Item(ast.StringTerm(k), ast.ArrayTerm(arr...)))
	}
	return ast.NewObject(kv...)
}
