// Package revocation owns revocation state on the decision path and the push
// channel that distributes it.
//
// A Checker holds, per tenant (trust domain), the newest verified CRL of each
// of the tenant's CAs plus the agent ids under an agent-level revocation, in
// an immutable snapshot swapped atomically. Check is a hash lookup (revoked
// serials are held in a compact SerialSet) that costs the same for zero and
// for a million revoked serials and does not allocate.
// Background loops keep the snapshot current from CRL files (fsnotify plus a
// periodic re-read), CRL URLs (conditional GETs) and a watch stream published
// by `agentauthz ca serve` (Publisher). Everything fails closed: data past
// nextUpdate+grace, or a configured source that never loaded, answers
// revocation_status_unknown.
package revocation
