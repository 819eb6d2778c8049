package envoy

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// bootstrapFiles is every Envoy bootstrap in the kit. The test below fails
// when a YAML file appears in envoy/ without being listed here.
var bootstrapFiles = []string{"envoy-sidecar.yaml", "envoy.yaml"}

func TestEveryEnvoyYAMLIsChecked(t *testing.T) {
	got, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if !slices.Equal(got, bootstrapFiles) {
		t.Fatalf("YAML files in envoy/ = %v, checked = %v; add the new file to bootstrapFiles", got, bootstrapFiles)
	}
}

// checkBootstrap is the whole pipeline: strict parse, schema validation of
// the bootstrap and every nested Any, agentauthz invariants, kit specifics.
func checkBootstrap(data []byte) error {
	b, err := ParseBootstrap(data)
	if err != nil {
		return fmt.Errorf("parse: %w", err)
	}
	if err := Validate(b); err != nil {
		return fmt.Errorf("validate: %w", err)
	}
	if err := CheckInvariants(b); err != nil {
		return fmt.Errorf("invariants: %w", err)
	}
	return checkKitBootstrap(b)
}

// checkKitBootstrap asserts what docs/envoy.md says about this kit beyond
// the general invariants.
func checkKitBootstrap(b *bootstrapv3.Bootstrap) error {
	if a := b.GetAdmin().GetAddress().GetSocketAddress().GetAddress(); a != "127.0.0.1" {
		return fmt.Errorf("admin listens on %q, want 127.0.0.1", a)
	}
	if p := UndecidedPaths(b); !slices.Equal(p, []string{"/healthz"}) {
		return fmt.Errorf("requests reach the upstream undecided on %v, want exactly [/healthz]", p)
	}
	c := cluster(b, "agentauthz")
	if c == nil {
		return fmt.Errorf("no agentauthz cluster")
	}
	ep := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint()
	if p := ep.GetAddress().GetSocketAddress().GetPortValue(); p != 9191 {
		return fmt.Errorf("agentauthz endpoint port %d, want 9191", p)
	}
	hc := c.GetHealthChecks()
	if len(hc) != 1 || hc[0].GetGrpcHealthCheck().GetServiceName() != "envoy.service.auth.v3.Authorization" {
		return fmt.Errorf("agentauthz cluster must health-check the Authorization service over gRPC (SERVING only when ready)")
	}
	vh := hcm(b).GetRouteConfig().GetVirtualHosts()[0]
	found := false
	for _, h := range vh.GetResponseHeadersToAdd() {
		if h.GetHeader().GetKey() == "x-decision-id" &&
			h.GetHeader().GetValue() == "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:decision_id)%" &&
			h.GetAppendAction() == corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
			found = true
		}
	}
	if !found {
		return fmt.Errorf("virtual host must return x-decision-id from ext_authz metadata to the client")
	}
	return nil
}

func cluster(b *bootstrapv3.Bootstrap, name string) *clusterv3.Cluster {
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() == name {
			return c
		}
	}
	return nil
}

// hcm returns the first listener's HTTP connection manager.
func hcm(b *bootstrapv3.Bootstrap) *hcmv3.HttpConnectionManager {
	for _, l := range b.GetStaticResources().GetListeners() {
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				if m, err := f.GetTypedConfig().UnmarshalNew(); err == nil {
					if h, ok := m.(*hcmv3.HttpConnectionManager); ok {
						return h
					}
				}
			}
		}
	}
	return nil
}

func mustUnpack[T any](t *testing.T, a *anypb.Any) T {
	t.Helper()
	m, err := a.UnmarshalNew()
	if err != nil {
		t.Fatal(err)
	}
	v, ok := m.(T)
	if !ok {
		t.Fatalf("typed_config is %T", m)
	}
	return v
}

func readBootstrap(t *testing.T, file string) *bootstrapv3.Bootstrap {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ParseBootstrap(data)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return b
}

func TestBootstrapsPassSchemaAndInvariants(t *testing.T) {
	for _, f := range bootstrapFiles {
		t.Run(f, func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if err := checkBootstrap(data); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestBootstrapFieldsDocsRelyOn spells out, field by field, the settings
// docs/envoy.md explains, so a change to one shows up by name.
func TestBootstrapFieldsDocsRelyOn(t *testing.T) {
	for _, f := range bootstrapFiles {
		t.Run(f, func(t *testing.T) {
			b := readBootstrap(t, f)
			l := b.GetStaticResources().GetListeners()
			if len(l) != 2 || len(l[0].GetFilterChains()) != 1 || l[1].GetName() != "health" {
				t.Fatalf("want the agent listener with one filter chain, then the health listener")
			}
			fc := l[0].GetFilterChains()[0]
			tls := mustUnpack[*tlsv3.DownstreamTlsContext](t, fc.GetTransportSocket().GetTypedConfig())
			if !tls.GetRequireClientCertificate().GetValue() {
				t.Error("require_client_certificate is not true")
			}
			if tls.GetCommonTlsContext().GetValidationContext().GetTrustedCa().GetFilename() != "/etc/envoy/tls/agent-ca.pem" {
				t.Error("validation_context.trusted_ca is not the agent CA file")
			}
			if v := tls.GetCommonTlsContext().GetTlsParams().GetTlsMinimumProtocolVersion(); v != tlsv3.TlsParameters_TLSv1_2 {
				t.Errorf("tls_minimum_protocol_version = %s", v)
			}

			h := mustUnpack[*hcmv3.HttpConnectionManager](t, fc.GetFilters()[0].GetTypedConfig())
			if h.GetForwardClientCertDetails() != hcmv3.HttpConnectionManager_SANITIZE_SET {
				t.Errorf("forward_client_cert_details = %s", h.GetForwardClientCertDetails())
			}
			cc := h.GetSetCurrentClientCertDetails()
			if !cc.GetCert() || !cc.GetUri() || !cc.GetSubject().GetValue() {
				t.Errorf("set_current_client_cert_details = %v", cc)
			}
			if !h.GetNormalizePath().GetValue() || !h.GetMergeSlashes() ||
				h.GetPathWithEscapedSlashesAction() != hcmv3.HttpConnectionManager_REJECT_REQUEST {
				t.Error("path normalisation is not on")
			}
			if h.GetCommonHttpProtocolOptions().GetHeadersWithUnderscoresAction() != corev3.HttpProtocolOptions_REJECT_REQUEST {
				t.Error("headers_with_underscores_action is not REJECT_REQUEST")
			}

			names := []string{}
			for _, f := range h.GetHttpFilters() {
				names = append(names, f.GetName())
			}
			if want := []string{HeaderMutationFilterName, ExtAuthzFilterName, ExtProcFilterName, RouterFilterName}; !slices.Equal(names, want) {
				t.Errorf("http_filters = %v, want %v", names, want)
			}
			ea := mustUnpack[*extauthzv3.ExtAuthz](t, h.GetHttpFilters()[1].GetTypedConfig())
			if ea.GetGrpcService().GetEnvoyGrpc().GetClusterName() != "agentauthz" {
				t.Error("ext_authz does not call cluster agentauthz over envoy_grpc")
			}
			if ea.GetTransportApiVersion() != corev3.ApiVersion_V3 {
				t.Error("transport_api_version is not V3")
			}
			if !ea.GetIncludePeerCertificate() {
				t.Error("include_peer_certificate is not true")
			}
			if ea.GetFailureModeAllow() {
				t.Error("failure_mode_allow is true")
			}
			if ea.GetStatusOnError().GetCode() != 503 {
				t.Errorf("status_on_error = %v", ea.GetStatusOnError())
			}
			if d := ea.GetGrpcService().GetTimeout().AsDuration(); d != 250*time.Millisecond {
				t.Errorf("grpc_service.timeout = %s, docs say 0.25s", d)
			}
			if wb := ea.GetWithRequestBody(); wb.GetMaxRequestBytes() != 8192 || !wb.GetAllowPartialMessage() || !wb.GetPackAsBytes() {
				t.Errorf("with_request_body = %v, docs say 8 KiB, partial allowed, as bytes", wb)
			}
			if !ea.GetValidateMutations() {
				t.Error("validate_mutations is not true")
			}

			mcpRoutes := 0
			for _, vh := range h.GetRouteConfig().GetVirtualHosts() {
				if vh.GetTypedPerFilterConfig() != nil {
					t.Errorf("virtual host %s has a per-filter override", vh.GetName())
				}
				for _, r := range vh.GetRoutes() {
					if IsMCPRoute(r) {
						// The one override: the MCP route sends the whole body (docs/mcp.md).
						if wb := MCPBodySettings(r); len(r.GetTypedPerFilterConfig()) != 1 || r.GetMatch().GetPath() != MCPPath ||
							wb.GetMaxRequestBytes() != 65536 || wb.GetAllowPartialMessage() || !wb.GetPackAsBytes() {
							t.Errorf("route %s: want only the ext_authz body override, 64 KiB, whole, as bytes, on %s", r.GetName(), MCPPath)
						}
						mcpRoutes++
						continue
					}
					if r.GetTypedPerFilterConfig() != nil {
						t.Errorf("route %s has a per-filter override: every request on the agent listener is decided", r.GetName())
					}
				}
			}
			if mcpRoutes != 1 {
				t.Errorf("%d MCP routes, want 1 (docs/mcp.md)", mcpRoutes)
			}
			if len(h.GetAccessLog()) != 1 {
				t.Error("want one access log")
			}

			// The health listener: plaintext, no ext_authz, GET /healthz only.
			hl := l[1]
			if hl.GetFilterChains()[0].GetTransportSocket() != nil {
				t.Error("the health listener must not ask for client certificates (load balancers have none)")
			}
			hh := mustUnpack[*hcmv3.HttpConnectionManager](t, hl.GetFilterChains()[0].GetFilters()[0].GetTypedConfig())
			routes := hh.GetRouteConfig().GetVirtualHosts()[0].GetRoutes()
			if len(routes) != 2 || routes[0].GetMatch().GetPath() != "/healthz" ||
				len(routes[0].GetMatch().GetHeaders()) != 1 || routes[0].GetMatch().GetHeaders()[0].GetStringMatch().GetExact() != "GET" ||
				routes[1].GetDirectResponse().GetStatus() != 404 {
				t.Errorf("health listener routes = %v, want GET /healthz then 404", routes)
			}
			if !hh.GetNormalizePath().GetValue() || !hh.GetMergeSlashes() ||
				hh.GetPathWithEscapedSlashesAction() != hcmv3.HttpConnectionManager_REJECT_REQUEST {
				t.Error("health listener: path normalisation is not on")
			}
		})
	}
}

func TestSidecarTalksToLocalhost(t *testing.T) {
	b := readBootstrap(t, "envoy-sidecar.yaml")
	for _, name := range []string{"agentauthz", "agent_api"} {
		c := cluster(b, name)
		if c.GetType() != clusterv3.Cluster_STATIC {
			t.Errorf("%s: type %s, want STATIC", name, c.GetType())
		}
		a := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetAddress()
		if a != "127.0.0.1" {
			t.Errorf("%s: address %s, want 127.0.0.1", name, a)
		}
	}
}

// TestValidateUnpacksNestedAny shows why Validate walks Any values: the
// bootstrap's own ValidateAll stops at typed_config and accepts a per-route
// ext_authz override that sets nothing, which Envoy rejects.
func TestValidateUnpacksNestedAny(t *testing.T) {
	b := readBootstrap(t, "envoy.yaml")
	h := hcm(b)
	empty, err := anypb.New(&extauthzv3.ExtAuthzPerRoute{})
	if err != nil {
		t.Fatal(err)
	}
	h.GetRouteConfig().GetVirtualHosts()[0].GetRoutes()[0].TypedPerFilterConfig = map[string]*anypb.Any{ExtAuthzFilterName: empty}
	hAny, err := anypb.New(h)
	if err != nil {
		t.Fatal(err)
	}
	b.GetStaticResources().GetListeners()[0].GetFilterChains()[0].GetFilters()[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: hAny}

	if err := b.ValidateAll(); err != nil {
		t.Fatalf("bootstrap ValidateAll alone already fails: %v", err)
	}
	if err := Validate(b); !errorsContain(err, "ExtAuthzPerRoute") {
		t.Fatalf("Validate = %v, want the nested ExtAuthzPerRoute violation", err)
	}
}

// mutation breaks a copy of a bootstrap; the pipeline must then fail with want.
type mutation struct {
	name   string
	mutate func(root any) int // returns how many places it changed
	want   string
	only   string // when set, the one bootstrap file the mutation applies to
}

func bootstrapMutations() []mutation {
	extAuthz := func(fn func(m map[string]any)) func(any) int {
		return typed("envoy.extensions.filters.http.ext_authz.v3.ExtAuthz", fn)
	}
	// hcmT changes the agent listener's connection manager (stat_prefix agents).
	hcmT := func(fn func(m map[string]any)) func(any) int {
		const hcmType = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
		return func(root any) int {
			return eachMap(root, func(m map[string]any) bool {
				if m["@type"] == hcmType && m["stat_prefix"] == "agents" {
					fn(m)
					return true
				}
				return false
			})
		}
	}
	tlsT := func(fn func(m map[string]any)) func(any) int {
		return typed("envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext", fn)
	}
	return []mutation{
		// Schema: strict decoding.
		{"misspelled field", extAuthz(func(m map[string]any) {
			m["include_peer_certificates"] = m["include_peer_certificate"]
			delete(m, "include_peer_certificate")
		}), "unknown field", ""},
		{"misspelled enum", hcmT(func(m map[string]any) { m["forward_client_cert_details"] = "SANITISE_SET" }), "enum", ""},
		{"unresolvable @type", extAuthz(func(m map[string]any) {
			m["@type"] = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzz"
		}), "unable to resolve", ""},
		{"duration that is not one", extAuthz(func(m map[string]any) {
			dig(m, "grpc_service").(map[string]any)["timeout"] = "250ms" // proto JSON wants "0.25s"
		}), "Duration", ""},
		// Schema: validation rules, some only reachable by unpacking Any.
		{"port out of range", named("agents_mtls", func(m map[string]any) {
			dig(m, "address", "socket_address").(map[string]any)["port_value"] = 70000
		}), "PortValue", ""},
		{"empty cluster_name", extAuthz(func(m map[string]any) {
			dig(m, "grpc_service", "envoy_grpc").(map[string]any)["cluster_name"] = ""
		}), "ClusterName", ""},
		{"undefined status code", extAuthz(func(m map[string]any) {
			m["status_on_error"] = map[string]any{"code": 999}
		}), "StatusOnError", ""},
		{"per-route override that sets nothing", agentRoute(func(m map[string]any) {
			m["typed_per_filter_config"] = map[string]any{ExtAuthzFilterName: map[string]any{
				"@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
			}}
		}), "ExtAuthzPerRoute", ""},
		// Invariants: an MCP route sends the whole JSON-RPC body (docs/mcp.md).
		{"MCP route with a partial body", mcpBody(func(wb map[string]any) { wb["allow_partial_message"] = true }), "allow_partial_message must be false", ""},
		{"MCP route body over 64 KiB", mcpBody(func(wb map[string]any) { wb["max_request_bytes"] = 1 << 20 }), "max_request_bytes must be in", ""},
		{"MCP route body as a string", mcpBody(func(wb map[string]any) { delete(wb, "pack_as_bytes") }), "pack_as_bytes must be true", ""},
		{"MCP route without body settings", named("mcp", func(m map[string]any) { delete(m, "typed_per_filter_config") }), "no per-route", ""},
		// Invariants: fail closed and identity.
		{"failure_mode_allow true", extAuthz(func(m map[string]any) { m["failure_mode_allow"] = true }), "failure_mode_allow", ""},
		{"include_peer_certificate off", extAuthz(func(m map[string]any) { delete(m, "include_peer_certificate") }), "include_peer_certificate", ""},
		{"status_on_error 403", extAuthz(func(m map[string]any) { m["status_on_error"] = map[string]any{"code": "Forbidden"} }), "status_on_error", ""},
		{"no timeout", extAuthz(func(m map[string]any) { delete(dig(m, "grpc_service").(map[string]any), "timeout") }), "timeout", ""},
		{"timeout too long", extAuthz(func(m map[string]any) { dig(m, "grpc_service").(map[string]any)["timeout"] = "5s" }), "timeout", ""},
		{"unbounded body", extAuthz(func(m map[string]any) {
			m["with_request_body"] = map[string]any{"max_request_bytes": 10 << 20}
		}), "max_request_bytes", ""},
		{"body as a string", extAuthz(func(m map[string]any) { delete(m["with_request_body"].(map[string]any), "pack_as_bytes") }), "pack_as_bytes", ""},
		{"runtime-sampled check", extAuthz(func(m map[string]any) {
			m["filter_enabled"] = map[string]any{"default_value": map[string]any{"numerator": 50}}
		}), "filter_enabled", ""},
		{"xfcc appended, not sanitized", hcmT(func(m map[string]any) { m["forward_client_cert_details"] = "APPEND_FORWARD" }), "forward_client_cert_details", ""},
		{"two-tier inner proxy forwarding the client's xfcc", hcmT(func(m map[string]any) { m["forward_client_cert_details"] = "FORWARD_ONLY" }), "forward_client_cert_details", ""},
		{"xfcc without Cert", hcmT(func(m map[string]any) {
			delete(m["set_current_client_cert_details"].(map[string]any), "cert")
		}), "set_current_client_cert_details", ""},
		{"client certificate optional", tlsT(func(m map[string]any) { m["require_client_certificate"] = false }), "require_client_certificate", ""},
		{"client certificate not verified", tlsT(func(m map[string]any) {
			delete(m["common_tls_context"].(map[string]any), "validation_context")
		}), "validation context", ""},
		{"router before ext_authz", hcmT(func(m map[string]any) {
			fs := m["http_filters"].([]any)
			fs[1], fs[len(fs)-1] = fs[len(fs)-1], fs[1]
		}), "last http filter", ""},
		{"ext_proc before ext_authz", hcmT(func(m map[string]any) {
			fs := m["http_filters"].([]any)
			fs[1], fs[2] = fs[2], fs[1]
		}), "must come after envoy.filters.http.ext_authz", ""},
		{"ext_proc fails open", typed("envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor", func(m map[string]any) {
			m["failure_mode_allow"] = true
		}), "failure_mode_allow must be false", ""},
		{"ext_proc without the request headers", typed("envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor", func(m map[string]any) {
			m["processing_mode"].(map[string]any)["request_header_mode"] = "SKIP"
		}), "request_header_mode must not be SKIP", ""},
		{"ext_proc not sent the body", typed("envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor", func(m map[string]any) {
			m["processing_mode"].(map[string]any)["response_body_mode"] = "NONE"
		}), "want BUFFERED_PARTIAL", ""},
		{"ext_proc without a message timeout", typed("envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor", func(m map[string]any) {
			delete(m, "message_timeout")
		}), "message_timeout must be set", ""},
		{"ext_proc to a missing cluster", typed("envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor", func(m map[string]any) {
			m["grpc_service"].(map[string]any)["envoy_grpc"].(map[string]any)["cluster_name"] = "nope"
		}), `cluster "nope" does not exist`, ""},
		{"ext_authz filter disabled", named(ExtAuthzFilterName, func(m map[string]any) { m["disabled"] = true }), "neither disabled nor optional", ""},
		{"receipt header not stripped", typed("envoy.extensions.filters.http.header_mutation.v3.HeaderMutation", func(m map[string]any) {
			rm := dig(m, "mutations").(map[string]any)
			rm["request_mutations"] = slices.DeleteFunc(rm["request_mutations"].([]any), func(e any) bool {
				return dig(e, "remove") == "x-agent-receipt"
			})
		}), "x-agent-receipt", ""},
		{"method override not stripped", typed("envoy.extensions.filters.http.header_mutation.v3.HeaderMutation", func(m map[string]any) {
			rm := dig(m, "mutations").(map[string]any)
			rm["request_mutations"] = slices.DeleteFunc(rm["request_mutations"].([]any), func(e any) bool {
				return dig(e, "remove") == "x-http-method-override"
			})
		}), "x-http-method-override", ""},
		{"policy header not stripped", typed("envoy.extensions.filters.http.header_mutation.v3.HeaderMutation", func(m map[string]any) {
			rm := dig(m, "mutations").(map[string]any)
			rm["request_mutations"] = slices.DeleteFunc(rm["request_mutations"].([]any), func(e any) bool {
				return dig(e, "remove") == "x-agent-operation"
			})
		}), "x-agent-operation", ""},
		{"access log without decision id", typed("envoy.extensions.access_loggers.file.v3.FileAccessLog", func(m map[string]any) {
			delete(dig(m, "log_format", "json_format").(map[string]any), "decision_id")
		}), "decision_id", ""},
		{"ext_authz cluster without HTTP/2", named("agentauthz", func(m map[string]any) {
			delete(m, "typed_extension_protocol_options")
		}), "HTTP/2", ""},
		{"ext_authz cluster missing", extAuthz(func(m map[string]any) {
			dig(m, "grpc_service", "envoy_grpc").(map[string]any)["cluster_name"] = "authz"
		}), "not defined", ""},
		{"undecided prefix on the health listener", named("upstream_health", func(m map[string]any) {
			m["match"] = map[string]any{"prefix": "/healthz"}
		}), "does not match one exact path", ""},
		{"bypass by prefix on the agent listener", agentRoute(func(m map[string]any) {
			m["typed_per_filter_config"] = disabledAuthz()
		}), "exact path", ""},
		{"bypass for the whole virtual host", named("agent_api", func(m map[string]any) {
			if _, isVHost := m["domains"]; isVHost {
				m["typed_per_filter_config"] = disabledAuthz()
			}
		}), "every route", ""},
		{"health listener keeps client identity headers", named("health", func(m map[string]any) {
			if _, isListener := m["filter_chains"]; isListener {
				hc := dig(m, "filter_chains", 0, "filters", 0, "typed_config").(map[string]any)
				hc["http_filters"] = hc["http_filters"].([]any)[1:]
			}
		}), "must remove client-sent x-agent-id", ""},
		{"health listener strip overridden", named("upstream_health", func(m map[string]any) {
			m["typed_per_filter_config"] = map[string]any{HeaderMutationFilterName: map[string]any{
				"@type":     "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute",
				"mutations": map[string]any{"request_mutations": []any{map[string]any{"remove": "x-unrelated"}}},
			}}
		}), "the header strip must hold on every route", ""},
		{"no deciding listener", named(ExtAuthzFilterName, func(m map[string]any) {
			m["name"] = "envoy.filters.http.ext_authz_off"
		}), "no listener has an http_connection_manager with", ""},
		// The channel to agentauthz.
		{"plaintext to a remote agentauthz", named("agentauthz", func(m map[string]any) {
			if _, isCluster := m["load_assignment"]; isCluster {
				delete(m, "transport_socket")
			}
		}), "need a transport_socket with mutual TLS", "envoy.yaml"},
		{"sidecar agentauthz moved off loopback", named("agentauthz", func(m map[string]any) {
			if _, isCluster := m["load_assignment"]; isCluster {
				dig(m, "load_assignment", "endpoints", 0, "lb_endpoints", 0, "endpoint", "address", "socket_address").(map[string]any)["address"] = "10.0.0.5"
			}
		}), "need a transport_socket with mutual TLS", "envoy-sidecar.yaml"},
		{"no client certificate to agentauthz", typed("envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", func(m map[string]any) {
			delete(dig(m, "common_tls_context").(map[string]any), "tls_certificates")
		}), "no client certificate", "envoy.yaml"},
		{"agentauthz's certificate name not checked", typed("envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", func(m map[string]any) {
			delete(dig(m, "common_tls_context", "validation_context").(map[string]any), "match_typed_subject_alt_names")
		}), "match_typed_subject_alt_names", "envoy.yaml"},
		{"panic mode sends Checks to unhealthy replicas", named("agentauthz", func(m map[string]any) {
			if _, isCluster := m["load_assignment"]; isCluster {
				delete(m, "common_lb_config")
			}
		}), "healthy_panic_threshold", ""},
		{"agentauthz not health-checked", named("agentauthz", func(m map[string]any) {
			if _, isCluster := m["load_assignment"]; isCluster {
				delete(m, "health_checks")
			}
		}), "no health_checks", ""},
		// Kit specifics.
		{"a second undecided path", named("health", func(m map[string]any) {
			if _, isVHost := m["domains"]; isVHost {
				rs := m["routes"].([]any)
				m["routes"] = append([]any{map[string]any{"name": "admin", "match": map[string]any{"path": "/admin"}, "route": map[string]any{"cluster": "agent_api"}}}, rs...)
			}
		}), "[/healthz]", ""},
		{"admin on every interface", func(root any) int {
			dig(root, "admin", "address", "socket_address").(map[string]any)["address"] = "0.0.0.0"
			return 1
		}, "admin", ""},
		{"readiness not checked over gRPC", named("agentauthz", func(m map[string]any) {
			if hc, ok := m["health_checks"].([]any); ok {
				dig(hc, 0).(map[string]any)["grpc_health_check"] = map[string]any{}
			}
		}), "Authorization service over gRPC", ""},
	}
}

// agentRoute selects the catch-all route of the agent listener.
func agentRoute(fn func(m map[string]any)) func(any) int {
	return named("agent_api", func(m map[string]any) {
		if _, isRoute := m["match"]; isRoute {
			fn(m)
		}
	})
}

func disabledAuthz() map[string]any {
	return map[string]any{ExtAuthzFilterName: map[string]any{
		"@type":    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
		"disabled": true,
	}}
}

// TestBrokenBootstrapsFail applies each mutation to a copy of each bootstrap
// and shows the pipeline rejects it for the expected reason.
func TestBrokenBootstrapsFail(t *testing.T) {
	for _, f := range bootstrapFiles {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var orig any
		if err := yaml.Unmarshal(data, &orig); err != nil {
			t.Fatal(err)
		}
		for _, m := range bootstrapMutations() {
			if m.only != "" && m.only != f {
				continue
			}
			t.Run(f+"/"+m.name, func(t *testing.T) {
				tree := deepCopy(orig)
				if n := m.mutate(tree); n == 0 {
					t.Fatal("mutation matched nothing: the fixture changed, update the mutation")
				}
				broken, err := yaml.Marshal(tree)
				if err != nil {
					t.Fatal(err)
				}
				err = checkBootstrap(broken)
				if err == nil {
					t.Fatal("broken copy passed")
				}
				if !errorsContain(err, m.want) {
					t.Fatalf("failed, but not for %q:\n%v", m.want, err)
				}
			})
		}
	}
}

// mcpBody changes the with_request_body of the MCP route.
func mcpBody(fn func(wb map[string]any)) func(any) int {
	return named("mcp", func(m map[string]any) {
		fn(dig(m, "typed_per_filter_config", ExtAuthzFilterName, "check_settings", "with_request_body").(map[string]any))
	})
}
