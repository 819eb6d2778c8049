// Package policy owns Rego evaluation for the decision path: it loads a
// policy directory or a signed OPA bundle, prepares the decision query once,
// builds the opa-envoy-plugin compatible input document directly as an OPA
// ast.Value, maps routes to operations, and turns the policy's answer into a
// typed Result.
//
// Policies reload without a restart: a change is compiled and smoke-evaluated
// before it is swapped in atomically; a change that fails either step is
// refused and the previous policy keeps serving.
package policy
