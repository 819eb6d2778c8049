// Package envoy owns the Envoy and Istio integration kit for agentauthz: the
// Envoy bootstraps in this directory (envoy.yaml, envoy-sidecar.yaml), the
// Istio resources in istio/ and the Kubernetes manifests in kubernetes/.
//
// No Envoy binary is available where the kit is built, so the package checks
// the configuration against Envoy's own schema instead: ParseBootstrap decodes
// a bootstrap strictly into go-control-plane's proto types, Validate runs the
// protoc-gen-validate rules on it and on every typed extension nested inside,
// and CheckInvariants enforces the settings agentauthz depends on (mutual TLS,
// the forwarded client certificate, fail-closed ext_authz). The package tests
// run all three on every YAML file here, and show each one failing on
// deliberately broken copies.
package envoy
