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
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
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
	if p := DisabledAuthzPaths(b); !slices.Equal(p, []string{"/healthz"}) {
		return fmt.Errorf("ext_authz disabled for %v, want exactly [/healthz]", p)
	}
	c := cluster(b, "agentauthz")
	if c == nil {
		return fmt.Errorf("no agentauthz cluster")
	}
	ep := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint()
	if p := ep.GetAddress().GetSocketAddress().GetPortValue(); p != 9191 {
		return fmt.Errorf("agentauthz endpoint port %d, want 9191", p)
	}
	if p := ep.GetHealthCheckConfig().GetPortValue(); p != 9192 {
		return fmt.Errorf("agentauthz health check port %d, want 9192", p)
	}
	hc := c.GetHealthChecks()
	if len(hc) != 1 || hc[0].GetHttpHealthCheck().GetPath() != "/readyz" {
		return fmt.Errorf("agentauthz cluster must health-check /readyz")
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
			if len(l) != 1 || len(l[0].GetFilterChains()) != 1 {
				t.Fatalf("want one listener with one filter chain")
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
			if want := []string{HeaderMutationFilterName, ExtAuthzFilterName, RouterFilterName}; !slices.Equal(names, want) {
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
			if wb := ea.GetWithRequestBody(); wb.GetMaxRequestBytes() != 8192 || !wb.GetAllowPartialMessage() {
				t.Errorf("with_request_body = %v, docs say 8 KiB, partial allowed", wb)
			}
			if !ea.GetValidateMutations() {
				t.Error("validate_mutations is not true")
			}

			var health *routev3.Route
			for _, r := range h.GetRouteConfig().GetVirtualHosts()[0].GetRoutes() {
				if r.GetName() == "upstream_health" {
					health = r
				}
			}
			if health == nil || health.GetMatch().GetPath() != "/healthz" {
				t.Fatal("no exact /healthz route")
			}
			pr := mustUnpack[*extauthzv3.ExtAuthzPerRoute](t, health.GetTypedPerFilterConfig()[ExtAuthzFilterName])
			if !pr.GetDisabled() {
				t.Error("ext_authz is not disabled on the health route")
			}
			if len(h.GetAccessLog()) != 1 {
				t.Error("want one access log")
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
	h.GetRouteConfig().GetVirtualHosts()[0].GetRoutes()[0].TypedPerFilterConfig[ExtAuthzFilterName] = empty
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
}

func bootstrapMutations() []mutation {
	extAuthz := func(fn func(m map[string]any)) func(any) int {
		return typed("envoy.extensions.filters.http.ext_authz.v3.ExtAuthz", fn)
	}
	hcmT := func(fn func(m map[string]any)) func(any) int {
		return typed("envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager", fn)
	}
	tlsT := func(fn func(m map[string]any)) func(any) int {
		return typed("envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext", fn)
	}
	return []mutation{
		// Schema: strict decoding.
		{"misspelled field", extAuthz(func(m map[string]any) {
			m["include_peer_certificates"] = m["include_peer_certificate"]
			delete(m, "include_peer_certificate")
		}), "unknown field"},
		{"misspelled enum", hcmT(func(m map[string]any) { m["forward_client_cert_details"] = "SANITISE_SET" }), "enum"},
		{"unresolvable @type", extAuthz(func(m map[string]any) {
			m["@type"] = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzz"
		}), "unable to resolve"},
		{"duration that is not one", extAuthz(func(m map[string]any) {
			dig(m, "grpc_service").(map[string]any)["timeout"] = "250ms" // proto JSON wants "0.25s"
		}), "Duration"},
		// Schema: validation rules, some only reachable by unpacking Any.
		{"port out of range", named("agents_mtls", func(m map[string]any) {
			dig(m, "address", "socket_address").(map[string]any)["port_value"] = 70000
		}), "PortValue"},
		{"empty cluster_name", extAuthz(func(m map[string]any) {
			dig(m, "grpc_service", "envoy_grpc").(map[string]any)["cluster_name"] = ""
		}), "ClusterName"},
		{"undefined status code", extAuthz(func(m map[string]any) {
			m["status_on_error"] = map[string]any{"code": 999}
		}), "StatusOnError"},
		{"per-route override that sets nothing", typed("envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute", func(m map[string]any) {
			delete(m, "disabled")
		}), "ExtAuthzPerRoute"},
		// Invariants: fail closed and identity.
		{"failure_mode_allow true", extAuthz(func(m map[string]any) { m["failure_mode_allow"] = true }), "failure_mode_allow"},
		{"include_peer_certificate off", extAuthz(func(m map[string]any) { delete(m, "include_peer_certificate") }), "include_peer_certificate"},
		{"status_on_error 403", extAuthz(func(m map[string]any) { m["status_on_error"] = map[string]any{"code": "Forbidden"} }), "status_on_error"},
		{"no timeout", extAuthz(func(m map[string]any) { delete(dig(m, "grpc_service").(map[string]any), "timeout") }), "timeout"},
		{"timeout too long", extAuthz(func(m map[string]any) { dig(m, "grpc_service").(map[string]any)["timeout"] = "5s" }), "timeout"},
		{"unbounded body", extAuthz(func(m map[string]any) {
			m["with_request_body"] = map[string]any{"max_request_bytes": 10 << 20}
		}), "max_request_bytes"},
		{"runtime-sampled check", extAuthz(func(m map[string]any) {
			m["filter_enabled"] = map[string]any{"default_value": map[string]any{"numerator": 50}}
		}), "filter_enabled"},
		{"xfcc appended, not sanitized", hcmT(func(m map[string]any) { m["forward_client_cert_details"] = "APPEND_FORWARD" }), "forward_client_cert_details"},
		{"xfcc without Cert", hcmT(func(m map[string]any) {
			delete(m["set_current_client_cert_details"].(map[string]any), "cert")
		}), "set_current_client_cert_details"},
		{"client certificate optional", tlsT(func(m map[string]any) { m["require_client_certificate"] = false }), "require_client_certificate"},
		{"client certificate not verified", tlsT(func(m map[string]any) {
			delete(m["common_tls_context"].(map[string]any), "validation_context")
		}), "validation context"},
		{"router before ext_authz", hcmT(func(m map[string]any) {
			fs := m["http_filters"].([]any)
			fs[1], fs[2] = fs[2], fs[1]
		}), "last http filter"},
		{"ext_authz filter disabled", named(ExtAuthzFilterName, func(m map[string]any) { m["disabled"] = true }), "neither disabled nor optional"},
		{"receipt header not stripped", typed("envoy.extensions.filters.http.header_mutation.v3.HeaderMutation", func(m map[string]any) {
			rm := dig(m, "mutations").(map[string]any)
			rm["request_mutations"] = slices.DeleteFunc(rm["request_mutations"].([]any), func(e any) bool {
				return dig(e, "remove") == "x-agent-receipt"
			})
		}), "x-agent-receipt"},
		{"method override not stripped", typed("envoy.extensions.filters.http.header_mutation.v3.HeaderMutation", func(m map[string]any) {
			rm := dig(m, "mutations").(map[string]any)
			rm["request_mutations"] = slices.DeleteFunc(rm["request_mutations"].([]any), func(e any) bool {
				return dig(e, "remove") == "x-http-method-override"
			})
		}), "x-http-method-override"},
		{"policy header not stripped", typed("envoy.extensions.filters.http.header_mutation.v3.HeaderMutation", func(m map[string]any) {
			rm := dig(m, "mutations").(map[string]any)
			rm["request_mutations"] = slices.DeleteFunc(rm["request_mutations"].([]any), func(e any) bool {
				return dig(e, "remove") == "x-agent-operation"
			})
		}), "x-agent-operation"},
		{"header strip overridden on the health route", named("upstream_health", func(m map[string]any) {
			m["typed_per_filter_config"].(map[string]any)[HeaderMutationFilterName] = map[string]any{
				"@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute",
				"mutations": map[string]any{"request_mutations": []any{map[string]any{"remove": "x-unrelated"}}},
			}
		}), "the header strip must hold on every route"},
		{"access log without decision id", typed("envoy.extensions.access_loggers.file.v3.FileAccessLog", func(m map[string]any) {
			delete(dig(m, "log_format", "json_format").(map[string]any), "decision_id")
		}), "decision_id"},
		{"ext_authz cluster without HTTP/2", named("agentauthz", func(m map[string]any) {
			delete(m, "typed_extension_protocol_options")
		}), "HTTP/2"},
		{"ext_authz cluster missing", extAuthz(func(m map[string]any) {
			dig(m, "grpc_service", "envoy_grpc").(map[string]any)["cluster_name"] = "authz"
		}), "not defined"},
		{"bypass by prefix", named("upstream_health", func(m map[string]any) {
			m["match"] = map[string]any{"prefix": "/healthz"}
		}), "exact path"},
		{"bypass for the whole virtual host", named("agent_api", func(m map[string]any) {
			if _, isVHost := m["domains"]; isVHost {
				m["typed_per_filter_config"] = deepCopy(dig(m, "routes", 0, "typed_per_filter_config"))
			}
		}), "every route"},
		// Kit specifics.
		{"health path checked after all", named("upstream_health", func(m map[string]any) { delete(m, "typed_per_filter_config") }), "[/healthz]"},
		{"admin on every interface", func(root any) int {
			dig(root, "admin", "address", "socket_address").(map[string]any)["address"] = "0.0.0.0"
			return 1
		}, "admin"},
		{"readiness not checked", named("agentauthz", func(m map[string]any) {
			if hc, ok := m["health_checks"].([]any); ok {
				dig(hc, 0, "http_health_check").(map[string]any)["path"] = "/healthz"
			}
		}), "/readyz"},
	}
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
