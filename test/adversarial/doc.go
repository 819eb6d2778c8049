// Package adversarial holds the hardening tests of the decision service: a
// catalogue of hostile CheckRequests (forged and oversized XFCC headers,
// pathological certificates, path tricks, method overrides, header
// injection), a randomised mutation property test, resource-limit tests and
// service-level fault tests. Everything runs against the fully assembled
// service (server.Assemble), directly and over gRPC on a loopback listener
// the test owns. docs/security.md maps each guarantee to its test here.
package adversarial
