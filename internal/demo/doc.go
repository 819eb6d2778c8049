// Package demo owns `agentauthz demo`: the seed scenario (Acme Payments and
// five agents, one of them rogue) played end to end against the real service
// in one process, on loopback, in a few seconds.
//
// Nothing is simulated. The CA is internal/ca on a fresh data directory; two
// decision replicas are assembled by internal/server exactly as `serve`
// assembles them, with the shipped policies and a synchronous decision log
// each; revocations reach both replicas through a revocation.Publisher (what
// `ca serve` runs) on their watch_url; requests are CheckRequests built by
// internal/checkreq the way Envoy builds them, sent over real gRPC. The
// auditor's answers are read back from the decision logs and the CA
// inventory after the replicas have shut down.
//
// Run returns an Outcome that tests assert on; the text it writes is for
// people.
package demo
