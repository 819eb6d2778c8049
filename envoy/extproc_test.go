package envoy

import (
	"encoding/json"
	"slices"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/agentauthz/agentauthz/internal/config"
)

// TestExtProcAsDocumented: the settings docs/responses.md and docs/envoy.md
// explain, in both bootstraps.
func TestExtProcAsDocumented(t *testing.T) {
	for _, f := range bootstrapFiles {
		t.Run(f, func(t *testing.T) {
			b := readBootstrap(t, f)
			l := b.GetStaticResources().GetListeners()[0]
			if got := l.GetPerConnectionBufferLimitBytes().GetValue(); got < config.DefaultResponseMaxBody {
				t.Errorf("listener %s buffers %d bytes, less than response_signing.max_body_bytes %d: bodies would reach the processor cut",
					l.GetName(), got, config.DefaultResponseMaxBody)
			}
			var ep *extprocv3.ExternalProcessor
			for _, hf := range hcm(b).GetHttpFilters() {
				if hf.GetName() == ExtProcFilterName {
					ep = mustUnpack[*extprocv3.ExternalProcessor](t, hf.GetTypedConfig())
				}
			}
			if ep == nil {
				t.Fatal("no ext_proc filter")
			}
			checkShippedExtProc(t, ep, "agentauthz")
		})
	}
}

func checkShippedExtProc(t *testing.T, ep *extprocv3.ExternalProcessor, cluster string) {
	t.Helper()
	pm := ep.GetProcessingMode()
	if ep.GetFailureModeAllow() || !ep.GetAllowModeOverride() || ep.GetGrpcService().GetEnvoyGrpc().GetClusterName() != cluster ||
		pm.GetResponseBodyMode() != extprocv3.ProcessingMode_BUFFERED_PARTIAL || pm.GetRequestBodyMode() != extprocv3.ProcessingMode_NONE ||
		pm.GetResponseTrailerMode() != extprocv3.ProcessingMode_SEND || pm.GetRequestHeaderMode() != extprocv3.ProcessingMode_SEND ||
		ep.GetMessageTimeout().AsDuration() <= 0 ||
		!slices.Equal(ep.GetMetadataOptions().GetForwardingNamespaces().GetUntyped(), []string{ExtAuthzFilterName}) {
		t.Errorf("ext_proc settings differ from docs/responses.md: %v", ep)
	}
}

// TestIstioGatewaySignsResponses decodes the gateway's EnvoyFilter with
// Envoy's own types and checks it inserts the processor right after
// ext_authz and widens the listener buffer.
func TestIstioGatewaySignsResponses(t *testing.T) {
	var ef *manifest
	for _, m := range loadManifests(t, "istio") {
		if m.kind() == "EnvoyFilter" && m.name() == "agents-gateway-sign-responses" {
			ef = &m
		}
	}
	if ef == nil {
		t.Fatal("no EnvoyFilter agents-gateway-sign-responses")
	}
	if dig(ef.doc, "spec", "workloadSelector", "labels", "istio") != "ingressgateway" {
		t.Error("must select the ingress gateway")
	}
	patches := asList(dig(ef.doc, "spec", "configPatches"))
	if len(patches) != 2 {
		t.Fatalf("want 2 patches, got %d", len(patches))
	}
	p := patches[0]
	if dig(p, "applyTo") != "HTTP_FILTER" || dig(p, "match", "context") != "GATEWAY" ||
		dig(p, "match", "listener", "filterChain", "filter", "subFilter", "name") != ExtAuthzFilterName ||
		dig(p, "patch", "operation") != "INSERT_AFTER" {
		t.Error("the filter must be inserted right after the gateway's ext_authz filter")
	}
	js, err := json.Marshal(dig(p, "patch", "value"))
	if err != nil {
		t.Fatal(err)
	}
	var hf hcmv3.HttpFilter
	if err := protojson.Unmarshal(js, &hf); err != nil {
		t.Fatalf("patch value is not an Envoy HttpFilter: %v", err)
	}
	if hf.GetName() != ExtProcFilterName {
		t.Errorf("filter name %q", hf.GetName())
	}
	ep := mustUnpack[*extprocv3.ExternalProcessor](t, hf.GetTypedConfig())
	if err := ep.ValidateAll(); err != nil {
		t.Fatal(err)
	}
	checkShippedExtProc(t, ep, "outbound|9191||agentauthz.agentauthz.svc.cluster.local")

	l := patches[1]
	js, _ = json.Marshal(dig(l, "patch", "value"))
	var lis listenerv3.Listener
	if err := protojson.Unmarshal(js, &lis); err != nil {
		t.Fatalf("listener patch: %v", err)
	}
	if dig(l, "applyTo") != "LISTENER" || dig(l, "patch", "operation") != "MERGE" || lis.GetPerConnectionBufferLimitBytes().GetValue() < config.DefaultResponseMaxBody {
		t.Errorf("the gateway listener must buffer at least %d bytes", config.DefaultResponseMaxBody)
	}
}
