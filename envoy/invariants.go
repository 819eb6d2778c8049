package envoy

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Names the kit and agentauthz agree on.
const (
	// ExtAuthzFilterName is the HTTP filter's canonical name, and the fixed
	// namespace Envoy's ext_authz filter stores agentauthz's dynamic metadata
	// under (whatever the filter is named in a configuration).
	ExtAuthzFilterName = "envoy.filters.http.ext_authz"
	// HeaderMutationFilterName is the filter that strips client-sent identity headers.
	HeaderMutationFilterName = "envoy.filters.http.header_mutation"
	// RouterFilterName is the terminal HTTP filter.
	RouterFilterName = "envoy.filters.http.router"
	// MaxExtAuthzTimeout is the longest Check deadline the invariants accept:
	// a slower budget holds requests (and Envoy's buffers) for too long.
	MaxExtAuthzTimeout = time.Second
	// MaxCheckBodyBytes bounds with_request_body.max_request_bytes.
	MaxCheckBodyBytes = 64 << 10
	// MCPPath is the MCP endpoint the kit routes (policies/data.json,
	// data.agentauthz.mcp.endpoints).
	MCPPath = "/mcp"
)

// identityHeaders are the request headers only agentauthz may set. A client
// that sends them must not reach the upstream with them.
var identityHeaders = [...]string{
	"x-agent-id", "x-agent-spiffe-id", "x-agent-trust-level", "x-agent-scopes",
	"x-agent-owner", "x-agent-receipt", "x-decision-id", "x-agent-mcp-tools",
}

// IdentityHeaders returns the request headers only agentauthz may set.
func IdentityHeaders() []string { return slices.Clone(identityHeaders[:]) }

// policyHeaders are request headers the shipped policy sets on allow
// (policies/authz.rego); a client-sent copy must not reach the upstream on a
// route where ext_authz is off.
var policyHeaders = [...]string{"x-agent-operation"}

// methodOverrideHeaders make some frameworks act on a method other than the
// one agentauthz authorized (a POST with x-http-method-override: DELETE).
var methodOverrideHeaders = [...]string{"x-http-method-override", "x-method-override", "x-http-method"}

// StrippedHeaders returns every request header a proxy must remove from the
// client's request before ext_authz runs: the identity headers, the headers
// the shipped policy sets, and the method-override headers.
func StrippedHeaders() []string {
	return slices.Concat(identityHeaders[:], policyHeaders[:], methodOverrideHeaders[:])
}

// RemovedHeaders returns the request headers hm removes, lower-cased.
func RemovedHeaders(hm *headermutationv3.HeaderMutation) map[string]bool {
	removed := map[string]bool{}
	for _, rm := range hm.GetMutations().GetRequestMutations() {
		if r := rm.GetRemove(); r != "" {
			removed[strings.ToLower(r)] = true
		}
	}
	return removed
}

// AccessLogFields are the access-log operators that tie an Envoy log line to
// agentauthz's decision record.
func AccessLogFields() []string {
	return []string{
		"%DYNAMIC_METADATA(" + ExtAuthzFilterName + ":agent_id)%",
		"%DYNAMIC_METADATA(" + ExtAuthzFilterName + ":decision_id)%",
	}
}

// CheckInvariants reports every way b departs from what agentauthz relies
// on. Each listener filter chain with an HTTP connection manager either
// decides (it has the ext_authz filter) or is a health listener (it has none).
// A deciding one must have:
//
//   - downstream TLS that requires a client certificate and validates it against a CA;
//   - x-forwarded-client-cert SANITIZE_SET with cert, URI and subject;
//   - identity, policy-set and method-override headers (StrippedHeaders)
//     stripped before ext_authz, with no per-route override, and ext_authz
//     before the router, once, not disabled and not optional;
//   - ext_authz over gRPC, V3, include_peer_certificate, fail-closed
//     (failure_mode_allow false, status_on_error 503), with a timeout in
//     (0, 1s] and a bounded request body sent as bytes (pack_as_bytes);
//   - an ext_authz cluster that exists, speaks HTTP/2, is health-checked with
//     healthy_panic_threshold 0, and is reached over mutual TLS with a SAN
//     match unless every endpoint is loopback;
//   - inline routes; ext_authz never disabled for a whole virtual host, and
//     a route that disables it matching one exact path;
//   - on an MCP route (named "mcp…", or matching MCPPath), ext_authz sent
//     the whole body: a per-route with_request_body of 1..MaxCheckBodyBytes,
//     allow_partial_message false, pack_as_bytes true (docs/mcp.md);
//   - an access log recording agent_id and decision_id from ext_authz metadata.
//
// A health listener strips the same headers and routes to an upstream only
// on exact paths; everything else is a direct response. At least one
// listener must decide.
//
// It assumes b passed ParseBootstrap; run Validate for the schema rules.
func CheckInvariants(b *bootstrapv3.Bootstrap) error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	clusters := map[string]*clusterv3.Cluster{}
	for _, c := range b.GetStaticResources().GetClusters() {
		clusters[c.GetName()] = c
	}
	deciding := 0
	for _, l := range b.GetStaticResources().GetListeners() {
		for i, fc := range l.GetFilterChains() {
			at := fmt.Sprintf("listener %s: filter_chains[%d]", l.GetName(), i)
			for _, f := range fc.GetFilters() {
				m, err := unpack(f.GetTypedConfig())
				if err != nil {
					add("%s: filter %s: %v", at, f.GetName(), err)
					continue
				}
				hcm, ok := m.(*hcmv3.HttpConnectionManager)
				if !ok {
					continue
				}
				if !hasFilter(hcm, ExtAuthzFilterName) {
					errs = append(errs, checkHealthHCM(at, hcm)...)
					continue
				}
				deciding++
				errs = append(errs, checkDownstreamTLS(at, fc)...)
				errs = append(errs, checkHCM(at, hcm, clusters)...)
			}
		}
	}
	if deciding == 0 {
		add("no listener has an http_connection_manager with %s", ExtAuthzFilterName)
	}
	return errors.Join(errs...)
}

func hasFilter(hcm *hcmv3.HttpConnectionManager, name string) bool {
	for _, f := range hcm.GetHttpFilters() {
		if f.GetName() == name {
			return true
		}
	}
	return false
}

// checkHealthHCM: a connection manager without ext_authz decides nothing, so
// it may reach an upstream only on exact paths (a health probe), and strips
// the same headers as a deciding one.
func checkHealthHCM(at string, hcm *hcmv3.HttpConnectionManager) []error {
	at += " (no " + ExtAuthzFilterName + ")"
	filters := hcm.GetHttpFilters()
	n := len(filters)
	if n == 0 || filters[n-1].GetName() != RouterFilterName {
		return []error{fmt.Errorf("%s: the last http filter must be %s", at, RouterFilterName)}
	}
	errs := checkHeaderStrip(at, filters, n-1)
	rc := hcm.GetRouteConfig()
	if rc == nil {
		return append(errs, fmt.Errorf("%s: route_config must be inline so what it serves without a decision can be checked", at))
	}
	errs = append(errs, checkStripOverrides(at, rc)...)
	for _, vh := range rc.GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			if r.GetDirectResponse() != nil {
				continue
			}
			if _, exact := r.GetMatch().GetPathSpecifier().(*routev3.RouteMatch_Path); !exact {
				errs = append(errs, fmt.Errorf("%s: route %s reaches an upstream without a decision and does not match one exact path", at, r.GetName()))
			}
		}
	}
	return errs
}

func unpack(a *anypb.Any) (proto.Message, error) {
	if a == nil {
		return nil, errors.New("no typed_config")
	}
	return a.UnmarshalNew()
}

func checkDownstreamTLS(at string, fc *listenerv3.FilterChain) []error {
	ts := fc.GetTransportSocket()
	if ts == nil {
		return []error{fmt.Errorf("%s: no transport_socket: agents must connect with mutual TLS", at)}
	}
	m, err := unpack(ts.GetTypedConfig())
	if err != nil {
		return []error{fmt.Errorf("%s: transport_socket: %w", at, err)}
	}
	tls, ok := m.(*tlsv3.DownstreamTlsContext)
	if !ok {
		return []error{fmt.Errorf("%s: transport_socket is %T, want DownstreamTlsContext", at, m)}
	}
	var errs []error
	if !tls.GetRequireClientCertificate().GetValue() {
		errs = append(errs, fmt.Errorf("%s: require_client_certificate must be true", at))
	}
	ctx := tls.GetCommonTlsContext()
	if ctx.GetValidationContext().GetTrustedCa() == nil && ctx.GetValidationContextSdsSecretConfig() == nil &&
		ctx.GetCombinedValidationContext() == nil {
		errs = append(errs, fmt.Errorf("%s: common_tls_context has no validation context (trusted_ca): client certificates would not be verified", at))
	}
	return errs
}

func checkHCM(at string, hcm *hcmv3.HttpConnectionManager, clusters map[string]*clusterv3.Cluster) []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(at+": "+format, args...)) }

	if got := hcm.GetForwardClientCertDetails(); got != hcmv3.HttpConnectionManager_SANITIZE_SET {
		add("forward_client_cert_details is %s, want SANITIZE_SET (a client could forge x-forwarded-client-cert)", got)
	}
	set := hcm.GetSetCurrentClientCertDetails()
	if !set.GetCert() || !set.GetUri() || !set.GetSubject().GetValue() {
		add("set_current_client_cert_details must set cert, uri and subject")
	}

	// Filter order: header_mutation (strip) < ext_authz < router (last).
	filters := hcm.GetHttpFilters()
	idx := func(name string) []int {
		var out []int
		for i, f := range filters {
			if f.GetName() == name {
				out = append(out, i)
			}
		}
		return out
	}
	authz := idx(ExtAuthzFilterName)
	if len(authz) != 1 {
		add("want exactly one %s http filter, found %d", ExtAuthzFilterName, len(authz))
		return errs
	}
	ai := authz[0]
	if n := len(filters); n == 0 || filters[n-1].GetName() != RouterFilterName {
		add("the last http filter must be %s", RouterFilterName)
	}
	if f := filters[ai]; f.GetDisabled() || f.GetIsOptional() {
		add("%s must be neither disabled nor optional", ExtAuthzFilterName)
	}
	errs = append(errs, checkHeaderStrip(at, filters, ai)...)
	errs = append(errs, checkExtProc(at, filters, ai, clusters)...)

	m, err := unpack(filters[ai].GetTypedConfig())
	if err != nil {
		add("%s: %v", ExtAuthzFilterName, err)
		return errs
	}
	ea, ok := m.(*extauthzv3.ExtAuthz)
	if !ok {
		add("%s typed_config is %T, want ExtAuthz", ExtAuthzFilterName, m)
		return errs
	}
	errs = append(errs, checkExtAuthz(at, ea, clusters)...)
	errs = append(errs, checkRoutes(at, hcm)...)

	logged := ""
	for _, al := range hcm.GetAccessLog() {
		if inner, err := unpack(al.GetTypedConfig()); err == nil {
			js, _ := protojson.Marshal(inner)
			logged += string(js)
		}
	}
	for _, want := range AccessLogFields() {
		if !strings.Contains(logged, want) {
			add("access_log must record %s", want)
		}
	}
	return errs
}

func checkHeaderStrip(at string, filters []*hcmv3.HttpFilter, authzIdx int) []error {
	removed := map[string]bool{}
	for _, f := range filters[:authzIdx] {
		if f.GetName() != HeaderMutationFilterName || f.GetDisabled() {
			continue
		}
		m, err := unpack(f.GetTypedConfig())
		if err != nil {
			continue
		}
		hm, ok := m.(*headermutationv3.HeaderMutation)
		if !ok {
			continue
		}
		for h := range RemovedHeaders(hm) {
			removed[h] = true
		}
	}
	var errs []error
	for _, h := range StrippedHeaders() {
		if !removed[h] {
			errs = append(errs, fmt.Errorf("%s: %s before %s must remove client-sent %s", at, HeaderMutationFilterName, ExtAuthzFilterName, h))
		}
	}
	return errs
}

func checkExtAuthz(at string, ea *extauthzv3.ExtAuthz, clusters map[string]*clusterv3.Cluster) []error {
	var errs []error
	add := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf(at+": "+ExtAuthzFilterName+": "+format, args...))
	}
	gs := ea.GetGrpcService()
	if gs == nil {
		add("must use grpc_service (agentauthz speaks envoy.service.auth.v3.Authorization)")
		return errs
	}
	if ea.GetTransportApiVersion().String() != "V3" {
		add("transport_api_version must be V3")
	}
	if !ea.GetIncludePeerCertificate() {
		add("include_peer_certificate must be true (agentauthz reads attributes.source.certificate first)")
	}
	if ea.GetFailureModeAllow() {
		add("failure_mode_allow must be false: fail closed")
	}
	if got := int(ea.GetStatusOnError().GetCode()); got != 503 {
		add("status_on_error must be 503, is %d", got)
	}
	if ea.GetFilterEnabled() != nil || ea.GetFilterEnabledMetadata() != nil {
		add("filter_enabled / filter_enabled_metadata would skip the check for some requests")
	}
	if t := gs.GetTimeout(); t == nil {
		add("grpc_service.timeout must be set")
	} else if d := t.AsDuration(); d <= 0 || d > MaxExtAuthzTimeout {
		add("grpc_service.timeout %s is outside (0, %s]", d, MaxExtAuthzTimeout)
	}
	if wb := ea.GetWithRequestBody(); wb != nil {
		if wb.GetMaxRequestBytes() == 0 || wb.GetMaxRequestBytes() > MaxCheckBodyBytes {
			add("with_request_body.max_request_bytes must be in 1..%d", MaxCheckBodyBytes)
		}
		if !wb.GetPackAsBytes() {
			add("with_request_body.pack_as_bytes must be true: as a string, a binary or cut-off UTF-8 body is not what the client sent")
		}
	}
	name := gs.GetEnvoyGrpc().GetClusterName()
	if name == "" {
		add("grpc_service must use envoy_grpc with a cluster_name")
		return errs
	}
	c, ok := clusters[name]
	if !ok {
		add("cluster %q is not defined", name)
		return errs
	}
	if !http2(c) {
		add("cluster %q must speak HTTP/2 (typed_extension_protocol_options explicit_http_config http2_protocol_options)", name)
	}
	if len(c.GetHealthChecks()) == 0 {
		add("cluster %q has no health_checks: Checks would go to replicas that are not ready", name)
	}
	if pt := c.GetCommonLbConfig().GetHealthyPanicThreshold(); pt == nil || pt.GetValue() != 0 {
		add("cluster %q: common_lb_config.healthy_panic_threshold must be 0: in panic mode Envoy sends Checks to unhealthy replicas too", name)
	}
	if err := checkAuthzChannel(c); err != nil {
		add("cluster %q: %v", name, err)
	}
	return errs
}

// checkAuthzChannel: whoever reaches agentauthz's gRPC port can obtain signed
// decisions, so agentauthz must know its caller is this proxy (a client
// certificate) and the proxy that it talks to agentauthz (a SAN match).
// Loopback endpoints (a sidecar layout) need neither.
func checkAuthzChannel(c *clusterv3.Cluster) error {
	if loopbackOnly(c) {
		return nil
	}
	ts := c.GetTransportSocket()
	if ts == nil {
		return errors.New("non-loopback endpoints need a transport_socket with mutual TLS (UpstreamTlsContext)")
	}
	m, err := unpack(ts.GetTypedConfig())
	if err != nil {
		return fmt.Errorf("transport_socket: %w", err)
	}
	up, ok := m.(*tlsv3.UpstreamTlsContext)
	if !ok {
		return fmt.Errorf("transport_socket is %T, want UpstreamTlsContext", m)
	}
	ctx := up.GetCommonTlsContext()
	if len(ctx.GetTlsCertificates()) == 0 && len(ctx.GetTlsCertificateSdsSecretConfigs()) == 0 {
		return errors.New("UpstreamTlsContext has no client certificate: agentauthz could not tell this proxy from anyone else")
	}
	vc := ctx.GetValidationContext()
	if vc.GetTrustedCa() == nil {
		return errors.New("UpstreamTlsContext has no validation_context.trusted_ca: agentauthz's certificate would not be verified")
	}
	if len(vc.GetMatchTypedSubjectAltNames()) == 0 {
		return errors.New("UpstreamTlsContext has no match_typed_subject_alt_names: any certificate from the CA would pass as agentauthz")
	}
	return nil
}

func loopbackOnly(c *clusterv3.Cluster) bool {
	n := 0
	for _, e := range c.GetLoadAssignment().GetEndpoints() {
		for _, lb := range e.GetLbEndpoints() {
			ip := net.ParseIP(lb.GetEndpoint().GetAddress().GetSocketAddress().GetAddress())
			if ip == nil || !ip.IsLoopback() {
				return false
			}
			n++
		}
	}
	return n > 0
}

func http2(c *clusterv3.Cluster) bool {
	a, ok := c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
	if !ok {
		return false
	}
	m, err := unpack(a)
	if err != nil {
		return false
	}
	po, ok := m.(*upstreamhttpv3.HttpProtocolOptions)
	return ok && po.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil
}

func checkRoutes(at string, hcm *hcmv3.HttpConnectionManager) []error {
	rc := hcm.GetRouteConfig()
	if rc == nil {
		return []error{fmt.Errorf("%s: route_config must be inline so the ext_authz bypasses can be checked", at)}
	}
	errs := checkStripOverrides(at, rc)
	for _, vh := range rc.GetVirtualHosts() {
		if disablesAuthz(vh.GetTypedPerFilterConfig()) {
			errs = append(errs, fmt.Errorf("%s: virtual_host %s disables %s for every route", at, vh.GetName(), ExtAuthzFilterName))
		}
		for _, r := range vh.GetRoutes() {
			if IsMCPRoute(r) {
				if err := checkMCPRoute(r); err != nil {
					errs = append(errs, fmt.Errorf("%s: route %s: %w", at, r.GetName(), err))
				}
			}
			if !disablesAuthz(r.GetTypedPerFilterConfig()) {
				continue
			}
			if _, exact := r.GetMatch().GetPathSpecifier().(*routev3.RouteMatch_Path); !exact {
				errs = append(errs, fmt.Errorf("%s: route %s disables %s but does not match one exact path", at, r.GetName(), ExtAuthzFilterName))
			}
		}
	}
	return errs
}

// checkStripOverrides refuses a per-virtual-host or per-route
// header_mutation config: it would replace the strip on those routes.
func checkStripOverrides(at string, rc *routev3.RouteConfiguration) []error {
	var errs []error
	for _, vh := range rc.GetVirtualHosts() {
		if _, ok := vh.GetTypedPerFilterConfig()[HeaderMutationFilterName]; ok {
			errs = append(errs, fmt.Errorf("%s: virtual_host %s overrides %s: the header strip must hold on every route", at, vh.GetName(), HeaderMutationFilterName))
		}
		for _, r := range vh.GetRoutes() {
			if _, ok := r.GetTypedPerFilterConfig()[HeaderMutationFilterName]; ok {
				errs = append(errs, fmt.Errorf("%s: route %s overrides %s: the header strip must hold on every route", at, r.GetName(), HeaderMutationFilterName))
			}
		}
	}
	return errs
}

// disablesAuthz reports whether a typed_per_filter_config turns ext_authz off.
func disablesAuthz(cfg map[string]*anypb.Any) bool {
	a, ok := cfg[ExtAuthzFilterName]
	if !ok {
		return false
	}
	m, err := unpack(a)
	if err != nil {
		return true // unreadable: treat as the worst case
	}
	pr, ok := m.(*extauthzv3.ExtAuthzPerRoute)
	return ok && pr.GetDisabled()
}

// UndecidedPaths lists the exact paths b sends to an upstream without an
// ext_authz decision: routes that disable ext_authz, and the routes of a
// connection manager without it (a health listener).
func UndecidedPaths(b *bootstrapv3.Bootstrap) []string {
	var out []string
	for _, l := range b.GetStaticResources().GetListeners() {
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				m, err := unpack(f.GetTypedConfig())
				if err != nil {
					continue
				}
				hcm, ok := m.(*hcmv3.HttpConnectionManager)
				if !ok {
					continue
				}
				deciding := hasFilter(hcm, ExtAuthzFilterName)
				for _, vh := range hcm.GetRouteConfig().GetVirtualHosts() {
					for _, r := range vh.GetRoutes() {
						if r.GetDirectResponse() != nil {
							continue
						}
						if !deciding || disablesAuthz(r.GetTypedPerFilterConfig()) {
							out = append(out, r.GetMatch().GetPath())
						}
					}
				}
			}
		}
	}
	return out
}

// IsMCPRoute reports whether r routes an MCP endpoint: named "mcp…", or
// matching MCPPath (exactly, or as a prefix that covers it).
func IsMCPRoute(r *routev3.Route) bool {
	m := r.GetMatch()
	return strings.HasPrefix(r.GetName(), "mcp") || m.GetPath() == MCPPath ||
		m.GetPrefix() != "" && m.GetPrefix() != "/" && strings.HasPrefix(MCPPath, m.GetPrefix())
}

// MCPBodySettings returns the per-route with_request_body of r's ext_authz
// override, or nil.
func MCPBodySettings(r *routev3.Route) *extauthzv3.BufferSettings {
	a, ok := r.GetTypedPerFilterConfig()[ExtAuthzFilterName]
	if !ok {
		return nil
	}
	m, err := unpack(a)
	if err != nil {
		return nil
	}
	pr, _ := m.(*extauthzv3.ExtAuthzPerRoute)
	return pr.GetCheckSettings().GetWithRequestBody()
}

// checkMCPRoute: agentauthz decides an MCP call from its JSON-RPC body, so
// the route must send all of it (a cut body is refused as invalid_jsonrpc;
// a larger one is better refused by Envoy with 413), as bytes.
func checkMCPRoute(r *routev3.Route) error {
	if disablesAuthz(r.GetTypedPerFilterConfig()) {
		return errors.New("an MCP route must be decided (ext_authz disabled)")
	}
	return CheckMCPBody(MCPBodySettings(r))
}

// CheckMCPBody checks the ext_authz body settings of an MCP route.
func CheckMCPBody(wb *extauthzv3.BufferSettings) error {
	switch {
	case wb == nil:
		return fmt.Errorf("no per-route %s check_settings.with_request_body: agentauthz needs the JSON-RPC body to decide each tool call", ExtAuthzFilterName)
	case wb.GetMaxRequestBytes() < 1 || wb.GetMaxRequestBytes() > MaxCheckBodyBytes:
		return fmt.Errorf("with_request_body.max_request_bytes must be in 1..%d", MaxCheckBodyBytes)
	case wb.GetAllowPartialMessage():
		return errors.New("with_request_body.allow_partial_message must be false: a call is authorized on its whole body or not at all")
	case !wb.GetPackAsBytes():
		return errors.New("with_request_body.pack_as_bytes must be true")
	}
	return nil
}

// MCPRoutes lists the MCP routes of b's deciding listeners.
func MCPRoutes(b *bootstrapv3.Bootstrap) []*routev3.Route {
	var out []*routev3.Route
	for _, l := range b.GetStaticResources().GetListeners() {
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				m, err := unpack(f.GetTypedConfig())
				if err != nil {
					continue
				}
				hcm, ok := m.(*hcmv3.HttpConnectionManager)
				if !ok || !hasFilter(hcm, ExtAuthzFilterName) {
					continue
				}
				for _, vh := range hcm.GetRouteConfig().GetVirtualHosts() {
					for _, r := range vh.GetRoutes() {
						if IsMCPRoute(r) {
							out = append(out, r)
						}
					}
				}
			}
		}
	}
	return out
}
