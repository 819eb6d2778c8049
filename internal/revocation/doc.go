// Package revocation owns revocation state on the decision path and the push
// channel that distributes it.
//
// A Checker holds, per tenant (trust domain), the newest verified CRL of each
// of the tenant's CAs (per issuingDistributionPoint scope) plus the agent ids
// under an agent-level revocation, in an immutable snapshot swapped
// atomically. Check takes the verified chain of a certificate
// (identity.Agent.Chain) and, as `openssl verify -crl_check_all` does, checks
// every certificate below the trust anchor against the CRLs of the CA that
// issued it: revoked serials are keyed by (issuer, serial), in a compact
// SerialSet per CRL, so a check costs the same for zero and for a million
// revoked serials and does not allocate. Background loops keep the snapshot
// current from CRL files (fsnotify plus a periodic re-read; a PEM file may
// hold several CRLs), CRL URLs (conditional GETs) and a watch stream
// published by `agentauthz ca serve` (Publisher). The highest CRL number
// applied per CA and scope is kept in Config.StateDir, so a restart does not
// accept an older CRL. Everything fails closed: a certificate that no fresh
// CRL of its issuer covers, or a configured source that never loaded,
// answers revocation_status_unknown; a tenant with no source must opt out
// explicitly (TenantConfig.Disabled).
package revocation
