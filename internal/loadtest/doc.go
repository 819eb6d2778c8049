// Package loadtest is the load harness behind `agentauthz bench` and `make
// bench`. It generates its own CA, agents, CRLs and policy data, starts the
// decision service in separate processes (the real service, a no-op Check
// server as the ceiling, and the naive protobuf → map reference path), drives real
// gRPC Check calls at them over loopback with one client, and reports
// throughput, latency percentiles, server CPU, allocations and RSS per Check as
// Markdown. It also measures how long a revocation takes to reach a replica.
//
// Server CPU and allocations are read by the server process itself (getrusage
// and runtime/metrics) and served on its HTTP listener, so the client's own
// cost never pollutes the per-Check figures.
package loadtest
