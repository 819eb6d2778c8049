package envoy

import (
	"fmt"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// ExtProcFilterName is the HTTP filter that has agentauthz sign responses
// (docs/responses.md).
const ExtProcFilterName = "envoy.filters.http.ext_proc"

// MaxExtProcMessageTimeout bounds ext_proc's per-message timeout.
const MaxExtProcMessageTimeout = 5 * time.Second

// checkExtProc: where a deciding connection manager has the response
// signing filter, it runs after ext_authz (so only allowed requests reach it)
// and before the router, fails closed, talks to an existing cluster, sends
// the request headers (the decision binds the response), and buffers the
// response body so the signature can cover it.
func checkExtProc(at string, filters []*hcmv3.HttpFilter, authzIdx int, clusters map[string]*clusterv3.Cluster) []error {
	var errs []error
	add := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf(at+": "+ExtProcFilterName+": "+format, args...))
	}
	for i, f := range filters {
		if f.GetName() != ExtProcFilterName {
			continue
		}
		if i < authzIdx {
			add("must come after %s: a request it did not allow must never reach the processor", ExtAuthzFilterName)
		}
		if f.GetDisabled() || f.GetIsOptional() {
			add("must be neither disabled nor optional")
		}
		m, err := unpack(f.GetTypedConfig())
		if err != nil {
			add("%v", err)
			continue
		}
		ep, ok := m.(*extprocv3.ExternalProcessor)
		if !ok {
			add("typed_config is %T, want ExternalProcessor", m)
			continue
		}
		if ep.GetFailureModeAllow() {
			add("failure_mode_allow must be false: an unsigned response would pass")
		}
		if ep.GetObservabilityMode() {
			add("observability_mode must be off: its answers (the signature) would be ignored")
		}
		if c := ep.GetGrpcService().GetEnvoyGrpc().GetClusterName(); c == "" {
			add("grpc_service must name an envoy_grpc cluster")
		} else if _, ok := clusters[c]; !ok {
			add("cluster %q does not exist", c)
		}
		if t := ep.GetMessageTimeout(); t == nil || t.AsDuration() <= 0 || t.AsDuration() > MaxExtProcMessageTimeout {
			add("message_timeout must be set, in (0, %v]", MaxExtProcMessageTimeout)
		}
		pm := ep.GetProcessingMode()
		if pm.GetRequestHeaderMode() == extprocv3.ProcessingMode_SKIP {
			add("request_header_mode must not be SKIP: the request headers bind the response to its decision")
		}
		if pm.GetResponseHeaderMode() == extprocv3.ProcessingMode_SKIP {
			add("response_header_mode must not be SKIP")
		}
		switch pm.GetResponseBodyMode() {
		case extprocv3.ProcessingMode_BUFFERED, extprocv3.ProcessingMode_BUFFERED_PARTIAL:
		default:
			add("response_body_mode is %s, want BUFFERED_PARTIAL (or BUFFERED): the body's digest is signed with the headers", pm.GetResponseBodyMode())
		}
		if ep.GetSendBodyWithoutWaitingForHeaderResponse() {
			add("send_body_without_waiting_for_header_response must be off")
		}
	}
	return errs
}
