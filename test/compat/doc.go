// Package compat is the opa-envoy-plugin compatibility suite: policies and
// CheckRequests in opa-envoy-plugin's own style (most taken from its tests,
// examples and README), run through the fully assembled decision path, with
// the input the policy saw and the answer Envoy gets compared with what
// opa-envoy-plugin computes, and a golden file of the whole input for an
// Envoy-shaped CheckRequest (go test ./test/compat -update rewrites it).
// docs/policies.md says how each expectation was derived and lists the
// deliberate differences.
package compat
