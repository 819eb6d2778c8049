// Package identity turns what Envoy forwards about a client (the peer
// certificate, the x-forwarded-client-cert header or a SPIFFE principal) into
// a verified Agent, or an Error with a stable reason code.
//
// It verifies the certificate chain against the trust bundle of the agent's
// tenant, the validity window, the clientAuth extended key usage and the
// certificate profile (native, AgentPass or SPIFFE), and caches verified
// identities keyed by the SHA-256 of the certificate (and Chain=) exactly as
// forwarded, until the chain's earliest NotAfter or the next trust bundle
// swap. Revocation is not checked here: the caller checks it on every
// request, so a cached identity can never outlive its revocation.
// docs/identity.md describes the behaviour in full.
package identity
