package envoy

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
)

var manifestDirs = []string{"istio", "kubernetes"}

// grpcProviderFields are the fields Istio's EnvoyExternalAuthorizationGrpcProvider
// has, and requestBodyFields those of its EnvoyExternalAuthorizationRequestBody
// (istio/api mesh/v1alpha1/config.proto). istiod does not refuse an unknown
// field: it retries the mesh config allowing unknown fields, so a misspelt
// one is silently ignored. The test refuses them instead. Notably there is no
// includePeerCertificate.
var (
	grpcProviderFields = []string{"service", "port", "timeout", "failOpen", "clearRouteCache", "statusOnError", "includeRequestBodyInCheck"}
	requestBodyFields  = []string{"maxRequestBytes", "allowPartialMessage", "packAsBytes"}
)

// apiVersions pins each kind the kit uses to the API version it is written
// for; a new kind must be added here, with assertions below.
var apiVersions = map[string]string{
	"Namespace":           "v1",
	"ServiceAccount":      "v1",
	"ConfigMap":           "v1",
	"Service":             "v1",
	"StatefulSet":         "apps/v1",
	"PodDisruptionBudget": "policy/v1",
	"IstioOperator":       "install.istio.io/v1alpha1",
	"PeerAuthentication":  "security.istio.io/v1",
	"AuthorizationPolicy": "security.istio.io/v1",
	"Gateway":             "networking.istio.io/v1",
	"VirtualService":      "networking.istio.io/v1",
	"EnvoyFilter":         "networking.istio.io/v1alpha3",
	"NetworkPolicy":       "networking.k8s.io/v1",
}

// The only callers of Check in the kit: the Istio ingress gateway and the
// API's sidecars (service accounts), the standalone front proxy (pods).
const (
	gatewayPrincipal = "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
	apiPrincipal     = "cluster.local/ns/agents-api/sa/agent-api"
)

// checkManifests asserts what docs/istio.md relies on, across files.
func checkManifests(ms []manifest) error {
	var errs []error
	add := func(m manifest, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s %s: %s", m.file, m.kind(), m.name(), fmt.Sprintf(format, args...)))
	}
	byKind := map[string][]manifest{}
	for _, m := range ms {
		if m.kind() == "" || m.name() == "" {
			errs = append(errs, fmt.Errorf("%s: document without kind or metadata.name", m.file))
			continue
		}
		if want, ok := apiVersions[m.kind()]; !ok {
			add(m, "kind not known to the kit's checks")
		} else if got := dig(m.doc, "apiVersion"); got != want {
			add(m, "apiVersion %v, want %s", got, want)
		}
		byKind[m.kind()] = append(byKind[m.kind()], m)
	}
	one := func(kind, name string) (manifest, bool) {
		for _, m := range byKind[kind] {
			if m.name() == name {
				return m, true
			}
		}
		errs = append(errs, fmt.Errorf("no %s %s", kind, name))
		return manifest{}, false
	}

	// Kubernetes: Service ports are the contract everything else points at.
	svcPorts := map[string]map[string]int{} // "name.namespace" -> port name -> port
	for _, m := range byKind["Service"] {
		ports := map[string]int{}
		for _, p := range asList(dig(m.doc, "spec", "ports")) {
			name, _ := dig(p, "name").(string)
			port, _ := dig(p, "port").(int)
			ports[name] = port
		}
		if ports["grpc"] != 9191 || ports["http"] != 9192 {
			add(m, "ports = %v, want grpc 9191 and http 9192", ports)
		}
		if dig(m.doc, "spec", "selector", "app.kubernetes.io/name") != "agentauthz" {
			add(m, "selector does not select app.kubernetes.io/name=agentauthz")
		}
		svcPorts[m.name()+"."+m.namespace()] = ports
	}
	if h, ok := one("Service", "agentauthz-headless"); ok && dig(h.doc, "spec", "clusterIP") != "None" {
		add(h, "must be headless (clusterIP: None) so STRICT_DNS sees every replica")
	}

	if d, ok := one("StatefulSet", "agentauthz"); ok {
		errs = append(errs, checkWorkload(d, byKind)...)
	}
	errs = append(errs, checkConfigMaps(byKind["ConfigMap"])...)
	if np, ok := one("NetworkPolicy", "agentauthz"); ok {
		errs = append(errs, checkNetworkPolicy(np)...)
	}
	if p, ok := one("PodDisruptionBudget", "agentauthz"); ok && dig(p.doc, "spec", "minAvailable") != 1 {
		add(p, "minAvailable must be 1")
	}

	// Istio: the provider, the policies that use it, mTLS, the gateway.
	providers := map[string]bool{}
	if op, ok := one("IstioOperator", "agentauthz"); ok {
		for _, p := range asList(dig(op.doc, "spec", "meshConfig", "extensionProviders")) {
			name, _ := dig(p, "name").(string)
			g, ok := dig(p, "envoyExtAuthzGrpc").(map[string]any)
			if !ok {
				add(op, "provider %s is not envoyExtAuthzGrpc", name)
				continue
			}
			providers[name] = true
			for _, k := range sortedKeys(g) {
				if !slices.Contains(grpcProviderFields, k) {
					add(op, "provider %s: unknown envoyExtAuthzGrpc field %q (istiod would silently ignore it)", name, k)
				}
			}
			body, _ := g["includeRequestBodyInCheck"].(map[string]any)
			for _, k := range sortedKeys(body) {
				if !slices.Contains(requestBodyFields, k) {
					add(op, "provider %s: unknown includeRequestBodyInCheck field %q (istiod would silently ignore it)", name, k)
				}
			}
			if body["packAsBytes"] != true {
				add(op, "provider %s: includeRequestBodyInCheck.packAsBytes must be true (raw_body: the bytes as sent)", name)
			}
			svc, _ := g["service"].(string)
			ports, known := svcPorts[strings.TrimSuffix(svc, ".svc.cluster.local")]
			if !known {
				add(op, "provider %s: service %q is not a Service of the kit", name, svc)
			} else if g["port"] != ports["grpc"] {
				add(op, "provider %s: port %v is not the Service's grpc port %d", name, g["port"], ports["grpc"])
			}
			if g["failOpen"] != false {
				add(op, "provider %s: failOpen must be false", name)
			}
			if g["statusOnError"] != "503" {
				add(op, "provider %s: statusOnError must be \"503\"", name)
			}
			ts, _ := g["timeout"].(string)
			if d, err := time.ParseDuration(ts); err != nil || d <= 0 || d > MaxExtAuthzTimeout {
				add(op, "provider %s: timeout %q must be in (0, %s]", name, ts, MaxExtAuthzTimeout)
			}
			if n, _ := dig(g, "includeRequestBodyInCheck", "maxRequestBytes").(int); n <= 0 || n > MaxCheckBodyBytes {
				add(op, "provider %s: includeRequestBodyInCheck.maxRequestBytes must be in 1..%d", name, MaxCheckBodyBytes)
			}
		}
	}
	if op, ok := one("IstioOperator", "agentauthz"); ok {
		// The same path for policy and API: Istio's DECODE_AND_MERGE_SLASHES is
		// normalize_path, merge_slashes and UNESCAPE_AND_FORWARD for %2F and %5C.
		if n := dig(op.doc, "spec", "meshConfig", "pathNormalization", "normalization"); n != "DECODE_AND_MERGE_SLASHES" {
			add(op, "meshConfig.pathNormalization.normalization is %v, want DECODE_AND_MERGE_SLASHES (merge slashes, decode escaped slashes)", n)
		}
	}
	gatewayPolicy := false
	if cp, ok := one("AuthorizationPolicy", "agentauthz-callers"); ok {
		errs = append(errs, checkCallersPolicy(cp)...)
	}
	for _, m := range byKind["AuthorizationPolicy"] {
		for _, err := range checkPolicyHosts(m) {
			add(m, "%v", err)
		}
		if m.name() == "agentauthz-callers" {
			continue
		}
		if dig(m.doc, "spec", "action") != "CUSTOM" {
			add(m, "action must be CUSTOM")
		}
		if p, _ := dig(m.doc, "spec", "provider", "name").(string); !providers[p] {
			add(m, "provider %q is not registered in meshconfig", p)
		}
		if len(asList(dig(m.doc, "spec", "rules"))) == 0 {
			add(m, "no rules: a CUSTOM policy without rules matches nothing")
		}
		if dig(m.doc, "spec", "selector", "matchLabels", "istio") == "ingressgateway" {
			gatewayPolicy = true
		}
		// A CUSTOM policy may skip only the gateway, whose requests were decided there.
		for i, r := range asList(dig(m.doc, "spec", "rules")) {
			for _, f := range asList(dig(r, "from")) {
				for _, p := range asList(dig(f, "source", "notPrincipals")) {
					if p != gatewayPrincipal {
						add(m, "rules[%d] skips %v: only the gateway (%s) may be skipped", i, p, gatewayPrincipal)
					}
				}
			}
		}
	}
	if !gatewayPolicy {
		errs = append(errs, errors.New("no AuthorizationPolicy selects the ingress gateway"))
	}
	strict := map[string]bool{}
	for _, m := range byKind["PeerAuthentication"] {
		if dig(m.doc, "spec", "mtls", "mode") != "STRICT" {
			add(m, "mtls.mode must be STRICT")
		} else {
			strict[m.namespace()] = true
		}
	}
	for _, ns := range []string{"agentauthz", "agents-api"} {
		if !strict[ns] {
			errs = append(errs, fmt.Errorf("namespace %s has no STRICT PeerAuthentication", ns))
		}
	}
	if g, ok := one("Gateway", "agents"); ok {
		for i, s := range asList(dig(g.doc, "spec", "servers")) {
			if dig(s, "tls", "mode") != "MUTUAL" {
				add(g, "servers[%d].tls.mode must be MUTUAL (client certificate required)", i)
			}
			if dig(s, "tls", "credentialName") == nil {
				add(g, "servers[%d].tls.credentialName is missing", i)
			}
		}
	}
	if ef, ok := one("EnvoyFilter", "agents-gateway-xfcc"); ok {
		errs = append(errs, checkXFCCFilter(ef)...)
	}
	if ef, ok := one("EnvoyFilter", "agents-gateway-strip-headers"); ok {
		errs = append(errs, checkStripFilter(ef)...)
	}
	if ef, ok := one("EnvoyFilter", "agents-gateway-mcp-body"); ok {
		vs, _ := one("VirtualService", "agents")
		errs = append(errs, checkMCPBodyFilter(ef, vs)...)
	} else if _, istio := one("Gateway", "agents"); istio {
		errs = append(errs, errors.New("no EnvoyFilter agents-gateway-mcp-body: the gateway's MCP route would send agentauthz a partial body"))
	}
	return errors.Join(errs...)
}

func asList(v any) []any { l, _ := v.([]any); return l }

// checkPolicyHosts refuses a hosts or notHosts entry without its ":*" form.
// Istio compiles each entry into an exact (or prefix/suffix) match on
// :authority, while routes ignore the port: "Host: agents.example.com:443"
// reaches the API route but not a rule listing only "agents.example.com", so
// a CUSTOM rule is skipped and nothing decides. Istio's guidance is to list
// "host" and "host:*" (or not to match on hosts at all).
func checkPolicyHosts(m manifest) []error {
	var errs []error
	for i, r := range asList(dig(m.doc, "spec", "rules")) {
		for j, to := range asList(dig(r, "to")) {
			for _, field := range []string{"hosts", "notHosts"} {
				list := asList(dig(to, "operation", field))
				for _, h := range list {
					s, _ := h.(string)
					switch {
					case s == "*" || strings.HasSuffix(s, "*") || strings.Contains(s, ":"):
						continue // presence, a prefix match (covers any port), or a port form
					case strings.HasPrefix(s, "*"):
						// A suffix match cannot have a ":*" form (one wildcard per entry).
						errs = append(errs, fmt.Errorf("rules[%d].to[%d].operation.%s lists the suffix match %q, which a Host with a port never matches: list exact hosts with their \":*\" forms", i, j, field, s))
						continue
					}
					if !slices.Contains(list, any(s+":*")) {
						errs = append(errs, fmt.Errorf("rules[%d].to[%d].operation.%s lists %q without %q: a Host with a port would not match", i, j, field, s, s+":*"))
					}
				}
			}
		}
	}
	return errs
}

func checkWorkload(d manifest, byKind map[string][]manifest) []error {
	var errs []error
	add := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: StatefulSet %s: %s", d.file, d.name(), fmt.Sprintf(format, args...)))
	}
	spec := dig(d.doc, "spec")
	if dig(spec, "replicas") != 2 {
		add("replicas must be 2")
	}
	if dig(spec, "serviceName") != "agentauthz-headless" {
		add("serviceName must be the headless Service agentauthz-headless")
	}
	pod := dig(spec, "template", "spec")
	if dig(spec, "template", "metadata", "labels", "app.kubernetes.io/name") != "agentauthz" {
		add("pod template lacks the label the Services select")
	}
	if dig(pod, "securityContext", "runAsNonRoot") != true {
		add("securityContext.runAsNonRoot must be true")
	}
	containers := asList(dig(pod, "containers"))
	if len(containers) != 1 {
		add("want one container")
		return errs
	}
	c := containers[0]
	ports := map[string]int{}
	for _, p := range asList(dig(c, "ports")) {
		name, _ := dig(p, "name").(string)
		n, _ := dig(p, "containerPort").(int)
		ports[name] = n
	}
	if ports["grpc"] != 9191 || ports["http"] != 9192 {
		add("container ports = %v, want grpc 9191, http 9192", ports)
	}
	for probe, path := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz"} {
		if dig(c, probe, "httpGet", "path") != path || dig(c, probe, "httpGet", "port") != "http" {
			add("%s must be httpGet %s on port http", probe, path)
		}
	}
	for _, k := range []string{"requests", "limits"} {
		for _, r := range []string{"cpu", "memory"} {
			if dig(c, "resources", k, r) == nil {
				add("resources.%s.%s is missing", k, r)
			}
		}
	}
	sc := dig(c, "securityContext")
	if dig(sc, "readOnlyRootFilesystem") != true {
		add("readOnlyRootFilesystem must be true")
	}
	if dig(sc, "allowPrivilegeEscalation") != false {
		add("allowPrivilegeEscalation must be false")
	}
	if drop := asList(dig(sc, "capabilities", "drop")); !slices.Contains(drop, any("ALL")) {
		add("capabilities.drop must include ALL")
	}
	// --config must point into the mounted agentauthz-config ConfigMap.
	args := asList(dig(c, "args"))
	cfgPath := ""
	for i, a := range args {
		if a == "--config" && i+1 < len(args) {
			cfgPath, _ = args[i+1].(string)
		}
	}
	mounts := map[string]string{} // volume -> mountPath
	for _, m := range asList(dig(c, "volumeMounts")) {
		n, _ := dig(m, "name").(string)
		p, _ := dig(m, "mountPath").(string)
		mounts[n] = p
	}
	cfgVolume := ""
	for _, v := range asList(dig(pod, "volumes")) {
		if dig(v, "configMap", "name") == "agentauthz-config" {
			cfgVolume, _ = dig(v, "name").(string)
		}
	}
	if cfgVolume == "" || mounts[cfgVolume] == "" || cfgPath != mounts[cfgVolume]+"/config.yaml" {
		add("--config %q is not config.yaml inside the agentauthz-config volume", cfgPath)
	}

	image, _ := dig(c, "image").(string)
	if _, tag, _ := strings.Cut(image[strings.LastIndex(image, "/")+1:], ":"); !strings.Contains(image, "@sha256:") && (tag == "" || tag == "latest") {
		add("image %q is not pinned: use a release tag or a digest, never :latest", image)
	}
	limit, err := quantityBytes(fmt.Sprint(dig(c, "resources", "limits", "memory")))
	if err != nil {
		add("limits.memory: %v", err)
	}
	goLimit := int64(-1)
	for _, e := range asList(dig(c, "env")) {
		if dig(e, "name") == "GOMEMLIMIT" {
			if v, ok := dig(e, "value").(string); ok {
				goLimit, err = quantityBytes(strings.TrimSuffix(v, "B"))
				if err != nil {
					add("GOMEMLIMIT: %v", err)
				}
			}
		}
	}
	if goLimit <= 0 || goLimit > limit*9/10 {
		add("GOMEMLIMIT must be a literal at most 90%% of limits.memory (%d bytes): at the limit itself the kernel kills before the Go runtime collects", limit)
	}
	volumes := map[string]any{}
	for _, v := range asList(dig(pod, "volumes")) {
		n, _ := dig(v, "name").(string)
		volumes[n] = v
	}
	dataVolume := ""
	for n, p := range mounts {
		if p == "/var/lib/agentauthz" {
			dataVolume = n
		}
	}
	// The decision log outlives the pod: a deleted pod must not take its
	// unshipped records with it.
	persistent := false
	for _, tmpl := range asList(dig(spec, "volumeClaimTemplates")) {
		if dataVolume != "" && dig(tmpl, "metadata", "name") == dataVolume && dig(tmpl, "spec", "resources", "requests", "storage") != nil {
			persistent = true
		}
	}
	if _, shadowed := volumes[dataVolume]; !persistent || shadowed {
		add("the decision log's volume %q must come from volumeClaimTemplates (a persistent volume per replica), not a pod volume", dataVolume)
	}
	tlsVolume := ""
	for n, v := range volumes {
		if dig(v, "secret", "secretName") == "agentauthz-grpc-tls" {
			tlsVolume = n
		}
	}
	if tlsVolume == "" || mounts[tlsVolume] != grpcTLSMount {
		add("the Secret agentauthz-grpc-tls must be mounted at %s (the gRPC listener's certificate and proxy CA)", grpcTLSMount)
	}
	return errs
}

// quantityBytes parses the Kubernetes quantities the kit uses (Ki, Mi, Gi).
func quantityBytes(q string) (int64, error) {
	for suffix, mult := range map[string]int64{"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30} {
		if n, ok := strings.CutSuffix(q, suffix); ok {
			v, err := strconv.ParseInt(n, 10, 64)
			if err != nil || v <= 0 {
				return 0, fmt.Errorf("quantity %q", q)
			}
			return v * mult, nil
		}
	}
	return 0, fmt.Errorf("quantity %q: want Ki, Mi or Gi", q)
}

// checkConfigMaps checks every agentauthz-config: the standalone kit's
// (kubernetes/) and the mesh variant (istio/), which must differ only in the
// gRPC listener's TLS.
func checkConfigMaps(cms []manifest) []error {
	var errs []error
	byDir := map[string]map[string]any{}
	for _, m := range cms {
		if m.name() != "agentauthz-config" {
			continue
		}
		cfg, cerrs := checkConfigMap(m)
		errs = append(errs, cerrs...)
		if cfg != nil {
			byDir[filepath.Dir(m.file)] = cfg
		}
	}
	k, i := byDir["kubernetes"], byDir["istio"]
	if k == nil || i == nil {
		return append(errs, errors.New("want an agentauthz-config ConfigMap in kubernetes/ and one in istio/"))
	}
	// Standalone: mutual TLS, files from the Secret the StatefulSet mounts.
	for key, want := range map[string]string{
		"cert_file": grpcTLSMount + "/tls.crt", "key_file": grpcTLSMount + "/tls.key", "client_ca_file": grpcTLSMount + "/ca.crt",
	} {
		if got := dig(k, "grpc", "tls", key); got != want {
			errs = append(errs, fmt.Errorf("kubernetes/configmap.yaml: grpc.tls.%s is %v, want %s: only proxies with a certificate from the proxy CA may call Check", key, got, want))
		}
	}
	// Mesh: no TLS of its own (the sidecar terminates mTLS), otherwise equal.
	if dig(i, "grpc", "tls") != nil {
		errs = append(errs, errors.New("istio/agentauthz-config.yaml: grpc.tls must be unset: the mesh's mTLS ends at the sidecar, which forwards plaintext"))
	}
	kc, ic := deepCopy(k).(map[string]any), deepCopy(i).(map[string]any)
	delete(kc["grpc"].(map[string]any), "tls")
	if g, ok := ic["grpc"].(map[string]any); ok {
		delete(g, "tls")
	}
	if !reflect.DeepEqual(kc, ic) {
		errs = append(errs, errors.New("istio/agentauthz-config.yaml differs from kubernetes/configmap.yaml in more than grpc.tls"))
	}
	return errs
}

// grpcTLSMount is where the StatefulSet mounts the Secret agentauthz-grpc-tls.
const grpcTLSMount = "/etc/agentauthz/grpc-tls"

// checkConfigMap reads the agentauthz configuration inside the ConfigMap and
// checks it against the ports and mounts the rest of the kit uses.
func checkConfigMap(m manifest) (map[string]any, []error) {
	var errs []error
	add := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: ConfigMap %s: config.yaml: %s", m.file, m.name(), fmt.Sprintf(format, args...)))
	}
	raw, _ := dig(m.doc, "data", "config.yaml").(string)
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(raw), &cfg); err != nil || cfg == nil {
		add("not a YAML mapping: %v", err)
		return nil, errs
	}
	if dig(cfg, "grpc", "addr") != ":9191" || dig(cfg, "http", "addr") != ":9192" {
		add("listen addresses must be :9191 (grpc) and :9192 (http)")
	}
	if dig(cfg, "data_dir") != "/var/lib/agentauthz" {
		add("data_dir must be the writable data volume /var/lib/agentauthz")
	}
	if dig(cfg, "policy", "dir") != "/etc/agentauthz/policies" {
		add("policy.dir must be the policies mount")
	}
	sources := asList(dig(cfg, "identity", "sources"))
	if !slices.Equal(sources, []any{"peer_certificate", "xfcc"}) {
		add("identity.sources = %v, docs describe [peer_certificate xfcc]", sources)
	}
	for i, tb := range asList(dig(cfg, "trust_bundles")) {
		if f, _ := dig(tb, "file").(string); !strings.HasPrefix(f, "/etc/agentauthz/trust/") {
			add("trust_bundles[%d].file %q is outside the trust-bundles mount", i, f)
		}
		if len(asList(dig(tb, "revocation", "crl_files"))) == 0 && len(asList(dig(tb, "revocation", "crl_urls"))) == 0 &&
			dig(tb, "revocation", "watch_url") == nil {
			add("trust_bundles[%d] has no revocation source (crl_files, crl_urls or watch_url): a revoked agent would get in", i)
		}
	}
	return cfg, errs
}

// checkNetworkPolicy: the gRPC port admits only the kit's proxies, each named
// by namespace and pod labels; every rule names its ports.
func checkNetworkPolicy(m manifest) []error {
	var errs []error
	add := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: NetworkPolicy %s: %s", m.file, m.name(), fmt.Sprintf(format, args...)))
	}
	if dig(m.doc, "spec", "podSelector", "matchLabels", "app.kubernetes.io/name") != "agentauthz" {
		add("must select the agentauthz pods")
	}
	if !slices.Contains(asList(dig(m.doc, "spec", "policyTypes")), any("Ingress")) {
		add("policyTypes must include Ingress")
	}
	want := map[string]bool{
		"agents-edge/app.kubernetes.io/name=agentauthz-front-proxy": false,
		"istio-system/istio=ingressgateway":                         false,
		"agents-api/app=agent-api":                                  false,
	}
	grpcRule := false
	for i, r := range asList(dig(m.doc, "spec", "ingress")) {
		ports := asList(dig(r, "ports"))
		if len(ports) == 0 {
			add("ingress[%d] names no ports: it would admit its sources to the gRPC port", i)
			continue
		}
		grpc := false
		for _, p := range ports {
			if dig(p, "port") == 9191 || dig(p, "port") == "grpc" {
				grpc = true
			}
		}
		if !grpc {
			continue
		}
		grpcRule = true
		from := asList(dig(r, "from"))
		if len(from) == 0 {
			add("ingress[%d] admits anyone to the gRPC port 9191 (no from)", i)
		}
		for j, peer := range from {
			ns, _ := dig(peer, "namespaceSelector", "matchLabels", "kubernetes.io/metadata.name").(string)
			pods, _ := dig(peer, "podSelector", "matchLabels").(map[string]any)
			if ns == "" || len(pods) != 1 || dig(peer, "ipBlock") != nil {
				add("ingress[%d].from[%d] must name one namespace and one pod label, nothing wider", i, j)
				continue
			}
			for k, v := range pods {
				key := fmt.Sprintf("%s/%s=%v", ns, k, v)
				if _, known := want[key]; !known {
					add("ingress[%d].from[%d] admits %s, which is not a proxy of the kit", i, j, key)
				}
				want[key] = true
			}
		}
	}
	if !grpcRule {
		add("no rule for the gRPC port 9191: the proxies could not reach it")
	}
	for _, k := range sortedKeys(anyMap(want)) {
		if !want[k] {
			add("the proxy %s cannot reach the gRPC port", k)
		}
	}
	return errs
}

func anyMap(m map[string]bool) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// checkCallersPolicy: in the mesh, agentauthz's sidecar admits Checks only
// from the gateway's and the API's service accounts.
func checkCallersPolicy(m manifest) []error {
	var errs []error
	add := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: AuthorizationPolicy %s: %s", m.file, m.name(), fmt.Sprintf(format, args...)))
	}
	if dig(m.doc, "spec", "action") != "ALLOW" || m.namespace() != "agentauthz" ||
		dig(m.doc, "spec", "selector", "matchLabels", "app.kubernetes.io/name") != "agentauthz" {
		add("must be an ALLOW policy selecting app.kubernetes.io/name=agentauthz in namespace agentauthz")
	}
	allowed := []any{gatewayPrincipal, apiPrincipal}
	grpcRule := false
	for i, r := range asList(dig(m.doc, "spec", "rules")) {
		tos := asList(dig(r, "to"))
		if len(tos) == 0 {
			add("rules[%d] has no to: it admits its sources on every port, the gRPC port included", i)
		}
		grpc := false
		for j, to := range tos {
			ports := asList(dig(to, "operation", "ports"))
			if len(ports) == 0 {
				add("rules[%d].to[%d] names no ports: it admits the gRPC port", i, j)
			}
			if slices.Contains(ports, any("9191")) {
				grpc = true
			}
		}
		if !grpc {
			continue
		}
		grpcRule = true
		from := asList(dig(r, "from"))
		if len(from) == 0 {
			add("rules[%d] admits anyone to the gRPC port (no from)", i)
		}
		for j, f := range from {
			src, _ := dig(f, "source").(map[string]any)
			ps := asList(src["principals"])
			if len(src) != 1 || len(ps) == 0 {
				add("rules[%d].from[%d] must name principals and nothing else", i, j)
			}
			for _, p := range ps {
				if !slices.Contains(allowed, p) {
					add("rules[%d].from[%d] admits %v: only the gateway and the API may call Check", i, j, p)
				}
			}
		}
	}
	if !grpcRule {
		add("no rule admits the gateway and the API to the gRPC port 9191")
	}
	return errs
}

// checkXFCCFilter decodes the EnvoyFilter patch with Envoy's own types, so a
// misspelled field or enum fails here as it would in istiod.
func checkXFCCFilter(m manifest) []error {
	var errs []error
	add := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: EnvoyFilter %s: %s", m.file, m.name(), fmt.Sprintf(format, args...)))
	}
	if dig(m.doc, "spec", "workloadSelector", "labels", "istio") != "ingressgateway" {
		add("must select the ingress gateway")
	}
	patches := asList(dig(m.doc, "spec", "configPatches"))
	if len(patches) != 1 {
		add("want one config patch")
		return errs
	}
	p := patches[0]
	if dig(p, "applyTo") != "NETWORK_FILTER" || dig(p, "match", "context") != "GATEWAY" ||
		dig(p, "match", "listener", "filterChain", "filter", "name") != "envoy.filters.network.http_connection_manager" ||
		dig(p, "patch", "operation") != "MERGE" {
		add("patch must MERGE into the gateway's http_connection_manager")
	}
	js, err := json.Marshal(dig(p, "patch", "value"))
	if err != nil {
		add("patch value: %v", err)
		return errs
	}
	var f listenerv3.Filter
	if err := protojson.Unmarshal(js, &f); err != nil {
		add("patch value is not an Envoy Filter: %v", err)
		return errs
	}
	inner, err := f.GetTypedConfig().UnmarshalNew()
	if err != nil {
		add("patch typed_config: %v", err)
		return errs
	}
	h, ok := inner.(*hcmv3.HttpConnectionManager)
	if !ok {
		add("patch typed_config is %T", inner)
		return errs
	}
	if h.GetForwardClientCertDetails() != hcmv3.HttpConnectionManager_SANITIZE_SET {
		add("forward_client_cert_details must be SANITIZE_SET")
	}
	if s := h.GetSetCurrentClientCertDetails(); !s.GetCert() || !s.GetUri() || !s.GetSubject().GetValue() {
		add("set_current_client_cert_details must set cert, uri and subject")
	}
	return errs
}

// checkStripFilter: the gateway removes every header of StrippedHeaders
// first in its HTTP filter chain, so before Istio's ext_authz filter and on
// the routes that skip it. The patch is decoded with Envoy's own types.
func checkStripFilter(m manifest) []error {
	var errs []error
	add := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: EnvoyFilter %s: %s", m.file, m.name(), fmt.Sprintf(format, args...)))
	}
	if dig(m.doc, "spec", "workloadSelector", "labels", "istio") != "ingressgateway" {
		add("must select the ingress gateway")
	}
	patches := asList(dig(m.doc, "spec", "configPatches"))
	if len(patches) != 1 {
		add("want one config patch")
		return errs
	}
	p := patches[0]
	if dig(p, "applyTo") != "HTTP_FILTER" || dig(p, "match", "context") != "GATEWAY" ||
		dig(p, "match", "listener", "filterChain", "filter", "name") != "envoy.filters.network.http_connection_manager" ||
		dig(p, "patch", "operation") != "INSERT_FIRST" {
		add("patch must INSERT_FIRST an HTTP filter into the gateway's http_connection_manager (before ext_authz)")
	}
	js, err := json.Marshal(dig(p, "patch", "value"))
	if err != nil {
		add("patch value: %v", err)
		return errs
	}
	var f hcmv3.HttpFilter
	if err := protojson.Unmarshal(js, &f); err != nil {
		add("patch value is not an Envoy HttpFilter: %v", err)
		return errs
	}
	if f.GetName() != HeaderMutationFilterName || f.GetDisabled() || f.GetIsOptional() {
		add("patch must add an enabled %s", HeaderMutationFilterName)
	}
	inner, err := f.GetTypedConfig().UnmarshalNew()
	if err != nil {
		add("patch typed_config: %v", err)
		return errs
	}
	hm, ok := inner.(*headermutationv3.HeaderMutation)
	if !ok {
		add("patch typed_config is %T", inner)
		return errs
	}
	removed := RemovedHeaders(hm)
	for _, h := range StrippedHeaders() {
		if !removed[h] {
			add("does not remove client-sent %s", h)
		}
	}
	return errs
}

func TestManifests(t *testing.T) {
	if err := checkManifests(loadManifests(t, manifestDirs...)); err != nil {
		t.Fatal(err)
	}
}

// TestFrontProxyPointsAtHeadlessService ties envoy.yaml to service.yaml.
func TestFrontProxyPointsAtHeadlessService(t *testing.T) {
	b := readBootstrap(t, "envoy.yaml")
	ep := cluster(b, "agentauthz").GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint()
	var svc manifest
	for _, m := range loadManifests(t, "kubernetes") {
		if m.kind() == "Service" && m.name() == "agentauthz-headless" {
			svc = m
		}
	}
	want := fmt.Sprintf("%s.%s.svc.cluster.local", svc.name(), svc.namespace())
	if got := ep.GetAddress().GetSocketAddress().GetAddress(); got != want {
		t.Errorf("agentauthz cluster address %q, want the headless Service %q", got, want)
	}
}

type manifestMutation struct {
	name   string
	kind   string // the first document of this kind is mutated…
	target string // …or, when set, the one with this metadata.name or file
	mutate func(doc map[string]any)
	want   string
}

func set(doc map[string]any, v any, path ...any) {
	parent := dig(doc, path[:len(path)-1]...)
	switch k := path[len(path)-1].(type) {
	case string:
		parent.(map[string]any)[k] = v
	case int:
		parent.([]any)[k] = v
	}
}

func del(doc map[string]any, path ...any) {
	delete(dig(doc, path[:len(path)-1]...).(map[string]any), path[len(path)-1].(string))
}

func manifestMutations() []manifestMutation {
	ctr := []any{"spec", "template", "spec", "containers", 0}
	at := func(extra ...any) []any { return append(slices.Clone(ctr), extra...) }
	provider := []any{"spec", "meshConfig", "extensionProviders", 0, "envoyExtAuthzGrpc"}
	pv := func(extra ...any) []any { return append(slices.Clone(provider), extra...) }
	cfgSet := func(old, new string) func(map[string]any) {
		return func(d map[string]any) {
			s := dig(d, "data", "config.yaml").(string)
			set(d, strings.Replace(s, old, new, 1), "data", "config.yaml")
		}
	}
	return []manifestMutation{
		{"policy apiVersion typo", "AuthorizationPolicy", "", func(d map[string]any) { set(d, "security.istio.io/v1beta", "apiVersion") }, "apiVersion"},
		{"policy action ALLOW", "AuthorizationPolicy", "", func(d map[string]any) { set(d, "ALLOW", "spec", "action") }, "CUSTOM"},
		{"policy names an unknown provider", "AuthorizationPolicy", "", func(d map[string]any) { set(d, "opa", "spec", "provider", "name") }, "not registered"},
		{"policy host without its port form", "AuthorizationPolicy", "agentauthz-gateway", func(d map[string]any) {
			set(d, []any{"agents.example.com"}, "spec", "rules", 0, "to", 0, "operation", "hosts")
		}, `without "agents.example.com:*"`},
		{"policy host as a suffix match", "AuthorizationPolicy", "agentauthz-gateway", func(d map[string]any) {
			set(d, []any{"*.example.com"}, "spec", "rules", 0, "to", 0, "operation", "hosts")
		}, "suffix match"},
		{"mesh policy skips another caller", "AuthorizationPolicy", "agentauthz-mesh", func(d map[string]any) {
			set(d, []any{"cluster.local/ns/agents/sa/payments-agent"}, "spec", "rules", 0, "from", 0, "source", "notPrincipals")
		}, "only the gateway"},
		{"policy without rules", "AuthorizationPolicy", "", func(d map[string]any) { del(d, "spec", "rules") }, "no rules"},
		{"permissive mTLS", "PeerAuthentication", "", func(d map[string]any) { set(d, "PERMISSIVE", "spec", "mtls", "mode") }, "STRICT"},
		{"fail open", "IstioOperator", "", func(d map[string]any) { set(d, true, pv("failOpen")...) }, "failOpen"},
		{"status 403", "IstioOperator", "", func(d map[string]any) { set(d, "403", pv("statusOnError")...) }, "statusOnError"},
		{"timeout too long", "IstioOperator", "", func(d map[string]any) { set(d, "600s", pv("timeout")...) }, "timeout"},
		{"field Istio does not have", "IstioOperator", "", func(d map[string]any) { set(d, true, pv("includePeerCertificate")...) }, "includePeerCertificate"},
		{"body field misspelt", "IstioOperator", "", func(d map[string]any) {
			body := dig(d, pv("includeRequestBodyInCheck")...).(map[string]any)
			body["packAsByte"] = body["packAsBytes"]
			delete(body, "packAsBytes")
		}, "packAsByte"},
		{"body as a string", "IstioOperator", "", func(d map[string]any) { del(d, pv("includeRequestBodyInCheck", "packAsBytes")...) }, "packAsBytes"},
		{"paths not merged", "IstioOperator", "", func(d map[string]any) { set(d, "BASE", "spec", "meshConfig", "pathNormalization", "normalization") }, "DECODE_AND_MERGE_SLASHES"},
		{"provider port is not the Service's", "IstioOperator", "", func(d map[string]any) { set(d, 9192, pv("port")...) }, "grpc port"},
		{"provider service unknown", "IstioOperator", "", func(d map[string]any) { set(d, "authz.default.svc.cluster.local", pv("service")...) }, "not a Service"},
		{"gateway TLS without client certificates", "Gateway", "", func(d map[string]any) { set(d, "SIMPLE", "spec", "servers", 0, "tls", "mode") }, "MUTUAL"},
		{"gateway XFCC appended", "EnvoyFilter", "", func(d map[string]any) {
			set(d, "APPEND_FORWARD", "spec", "configPatches", 0, "patch", "value", "typed_config", "forward_client_cert_details")
		}, "SANITIZE_SET"},
		{"gateway XFCC forwarded as the client sent it", "EnvoyFilter", "agents-gateway-xfcc", func(d map[string]any) {
			set(d, "FORWARD_ONLY", "spec", "configPatches", 0, "patch", "value", "typed_config", "forward_client_cert_details")
		}, "SANITIZE_SET"},
		{"gateway XFCC without Cert", "EnvoyFilter", "", func(d map[string]any) {
			del(d, "spec", "configPatches", 0, "patch", "value", "typed_config", "set_current_client_cert_details", "cert")
		}, "cert, uri and subject"},
		{"gateway XFCC misspelled", "EnvoyFilter", "", func(d map[string]any) {
			set(d, true, "spec", "configPatches", 0, "patch", "value", "typed_config", "set_current_client_cert_detail")
		}, "unknown field"},
		{"gateway keeps a client's x-agent-id", "EnvoyFilter", "agents-gateway-strip-headers", func(d map[string]any) {
			rm := dig(d, "spec", "configPatches", 0, "patch", "value", "typed_config", "mutations").(map[string]any)
			rm["request_mutations"] = slices.DeleteFunc(slices.Clone(rm["request_mutations"].([]any)), func(e any) bool {
				return dig(e, "remove") == "x-agent-id"
			})
		}, "x-agent-id"},
		{"gateway strips after ext_authz", "EnvoyFilter", "agents-gateway-strip-headers", func(d map[string]any) {
			set(d, "INSERT_LAST", "spec", "configPatches", 0, "patch", "operation")
		}, "INSERT_FIRST"},
		{"gateway strip misspelled", "EnvoyFilter", "agents-gateway-strip-headers", func(d map[string]any) {
			set(d, []any{}, "spec", "configPatches", 0, "patch", "value", "typed_config", "mutation")
		}, "unknown field"},
		{"gateway MCP route with a partial body", "EnvoyFilter", "agents-gateway-mcp-body", func(d map[string]any) {
			set(d, true, "spec", "configPatches", 0, "patch", "value", "typed_per_filter_config", ExtAuthzFilterName, "check_settings", "with_request_body", "allow_partial_message")
		}, "allow_partial_message must be false"},
		{"gateway MCP patch on a route that does not exist", "EnvoyFilter", "agents-gateway-mcp-body", func(d map[string]any) {
			set(d, "mcp-v2", "spec", "configPatches", 0, "match", "routeConfiguration", "vhost", "route", "name")
		}, "is not a VirtualService route"},
		{"gateway MCP route renamed", "VirtualService", "agents", func(d map[string]any) { set(d, "tools", "spec", "http", 0, "name") }, "is not a VirtualService route"},
		{"gateway MCP body patch misspelled", "EnvoyFilter", "agents-gateway-mcp-body", func(d map[string]any) {
			set(d, map[string]any{}, "spec", "configPatches", 0, "patch", "value", "typed_per_filter_config", ExtAuthzFilterName, "check_setting")
		}, "unknown field"},
		{"one replica", "StatefulSet", "", func(d map[string]any) { set(d, 1, "spec", "replicas") }, "replicas"},
		{"readiness on /healthz", "StatefulSet", "", func(d map[string]any) { set(d, "/healthz", at("readinessProbe", "httpGet", "path")...) }, "readinessProbe"},
		{"liveness on the grpc port", "StatefulSet", "", func(d map[string]any) { set(d, "grpc", at("livenessProbe", "httpGet", "port")...) }, "livenessProbe"},
		{"no memory limit", "StatefulSet", "", func(d map[string]any) { del(d, at("resources", "limits", "memory")...) }, "limits.memory"},
		{"root allowed", "StatefulSet", "", func(d map[string]any) { set(d, false, "spec", "template", "spec", "securityContext", "runAsNonRoot") }, "runAsNonRoot"},
		{"writable root filesystem", "StatefulSet", "", func(d map[string]any) { set(d, false, at("securityContext", "readOnlyRootFilesystem")...) }, "readOnlyRootFilesystem"},
		{"config path outside the mount", "StatefulSet", "", func(d map[string]any) { set(d, "/etc/agentauthz.yaml", at("args", 2)...) }, "--config"},
		{"container grpc port moved", "StatefulSet", "", func(d map[string]any) { set(d, 8080, at("ports", 0, "containerPort")...) }, "container ports"},
		{"service grpc port moved", "Service", "", func(d map[string]any) { set(d, 9000, "spec", "ports", 0, "port") }, "grpc 9191"},
		{"headless Service with a cluster IP", "Service", "agentauthz-headless", func(d map[string]any) { del(d, "spec", "clusterIP") }, "headless"},
		{"config listens elsewhere", "ConfigMap", "", cfgSet(`":9191"`, `":9000"`), "listen addresses"},
		{"config sources reordered", "ConfigMap", "", cfgSet("[peer_certificate, xfcc]", "[xfcc, peer_certificate]"), "identity.sources"},
		{"config not YAML", "ConfigMap", "", func(d map[string]any) { set(d, "grpc: [", "data", "config.yaml") }, "not a YAML mapping"},
		{"standalone Check port without client certificates", "ConfigMap", "kubernetes/configmap.yaml",
			cfgSet("    client_ca_file: /etc/agentauthz/grpc-tls/ca.crt\n", ""), "grpc.tls.client_ca_file"},
		{"mesh config with TLS the sidecar cannot speak", "ConfigMap", "istio/agentauthz-config.yaml",
			cfgSet(`  addr: ":9191"`, "  addr: \":9191\"\n  tls: {cert_file: /c, key_file: /k}"), "grpc.tls must be unset"},
		{"mesh config drifts from the standalone one", "ConfigMap", "istio/agentauthz-config.yaml", cfgSet("mode: sync", "mode: async"), "more than grpc.tls"},
		{"tenant without a revocation source", "ConfigMap", "kubernetes/configmap.yaml", func(d map[string]any) {
			s := dig(d, "data", "config.yaml").(string)
			i := strings.Index(s, "  # Every tenant needs")
			j := strings.Index(s, "decision_log:")
			set(d, s[:i]+s[j:], "data", "config.yaml")
		}, "no revocation source"},
		{"image :latest", "StatefulSet", "", func(d map[string]any) { set(d, "ghcr.io/agentauthz/agentauthz:latest", at("image")...) }, "not pinned"},
		{"image without a tag", "StatefulSet", "", func(d map[string]any) { set(d, "ghcr.io/agentauthz/agentauthz", at("image")...) }, "not pinned"},
		{"GOMEMLIMIT equal to the limit", "StatefulSet", "", func(d map[string]any) {
			set(d, map[string]any{"name": "GOMEMLIMIT", "valueFrom": map[string]any{"resourceFieldRef": map[string]any{"resource": "limits.memory"}}}, at("env", 0)...)
		}, "GOMEMLIMIT"},
		{"GOMEMLIMIT without headroom", "StatefulSet", "", func(d map[string]any) { set(d, "500MiB", at("env", 0, "value")...) }, "GOMEMLIMIT"},
		{"decision log on an emptyDir", "StatefulSet", "", func(d map[string]any) {
			vols := asList(dig(d, "spec", "template", "spec", "volumes"))
			set(d, append(slices.Clone(vols), map[string]any{"name": "data", "emptyDir": map[string]any{"sizeLimit": "4Gi"}}), "spec", "template", "spec", "volumes")
			del(d, "spec", "volumeClaimTemplates")
		}, "volumeClaimTemplates"},
		{"decision log volume without a size", "StatefulSet", "", func(d map[string]any) {
			del(d, "spec", "volumeClaimTemplates", 0, "spec", "resources")
		}, "volumeClaimTemplates"},
		{"no headless service name", "StatefulSet", "", func(d map[string]any) { del(d, "spec", "serviceName") }, "serviceName"},
		{"gRPC TLS secret not mounted", "StatefulSet", "", func(d map[string]any) {
			mounts := asList(dig(d, at("volumeMounts")...))
			set(d, slices.DeleteFunc(slices.Clone(mounts), func(m any) bool { return dig(m, "name") == "grpc-tls" }), at("volumeMounts")...)
		}, "agentauthz-grpc-tls"},
		{"network policy admits anyone to 9191", "NetworkPolicy", "", func(d map[string]any) { del(d, "spec", "ingress", 0, "from") }, "admits anyone"},
		{"network policy admits a CIDR", "NetworkPolicy", "", func(d map[string]any) {
			set(d, map[string]any{"ipBlock": map[string]any{"cidr": "0.0.0.0/0"}}, "spec", "ingress", 0, "from", 0)
		}, "nothing wider"},
		{"network policy rule without ports", "NetworkPolicy", "", func(d map[string]any) { del(d, "spec", "ingress", 1, "ports") }, "names no ports"},
		{"network policy forgets the gateway", "NetworkPolicy", "", func(d map[string]any) {
			from := asList(dig(d, "spec", "ingress", 0, "from"))
			set(d, from[:1], "spec", "ingress", 0, "from")
		}, "istio-system/istio=ingressgateway cannot reach"},
		{"callers policy admits the default account", "AuthorizationPolicy", "agentauthz-callers", func(d map[string]any) {
			ps := dig(d, "spec", "rules", 0, "from", 0, "source", "principals").([]any)
			set(d, append(slices.Clone(ps), "cluster.local/ns/default/sa/default"), "spec", "rules", 0, "from", 0, "source", "principals")
		}, "only the gateway and the API"},
		{"callers policy admits a namespace", "AuthorizationPolicy", "agentauthz-callers", func(d map[string]any) {
			set(d, []any{"agents-api"}, "spec", "rules", 0, "from", 0, "source", "namespaces")
		}, "principals and nothing else"},
		{"callers policy rule on every port", "AuthorizationPolicy", "agentauthz-callers", func(d map[string]any) { del(d, "spec", "rules", 1, "to", 0, "operation", "ports") }, "names no ports"},
		{"callers policy missing", "AuthorizationPolicy", "agentauthz-callers", func(d map[string]any) { set(d, "agentauthz-callerz", "metadata", "name") }, "no AuthorizationPolicy agentauthz-callers"},
	}
}

// TestBrokenManifestsFail mutates a copy of the manifests, one change at a
// time, and shows the checks reject each.
func TestBrokenManifestsFail(t *testing.T) {
	orig := loadManifests(t, manifestDirs...)
	for _, mm := range manifestMutations() {
		t.Run(mm.name, func(t *testing.T) {
			changed := 0
			var ms []manifest
			for _, m := range orig {
				c := manifest{file: m.file, doc: deepCopy(m.doc).(map[string]any)}
				if c.kind() == mm.kind && (mm.target == "" || c.name() == mm.target || c.file == mm.target) && changed == 0 {
					mm.mutate(c.doc)
					if reflect.DeepEqual(c.doc, m.doc) {
						t.Fatal("mutation changed nothing: the manifest changed, update the mutation")
					}
					changed++
				}
				ms = append(ms, c)
			}
			if changed == 0 {
				t.Fatalf("no %s to mutate", mm.kind)
			}
			err := checkManifests(ms)
			if err == nil {
				t.Fatal("broken copy passed")
			}
			if !errorsContain(err, mm.want) {
				t.Fatalf("failed, but not for %q:\n%v", mm.want, err)
			}
		})
	}
}

// checkMCPBodyFilter: the gateway's MCP route has ext_authz send the whole
// body (envoy.CheckMCPBody, the invariant of the Envoy kit's MCP routes);
// the patch targets a route of the VirtualService that matches MCPPath
// exactly. The patch is decoded with Envoy's own types.
func checkMCPBodyFilter(m, vs manifest) []error {
	var errs []error
	add := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: EnvoyFilter %s: %s", m.file, m.name(), fmt.Sprintf(format, args...)))
	}
	if dig(m.doc, "spec", "workloadSelector", "labels", "istio") != "ingressgateway" {
		add("must select the ingress gateway")
	}
	patches := asList(dig(m.doc, "spec", "configPatches"))
	if len(patches) != 1 {
		add("want one config patch")
		return errs
	}
	p := patches[0]
	route, _ := dig(p, "match", "routeConfiguration", "vhost", "route", "name").(string)
	if dig(p, "applyTo") != "HTTP_ROUTE" || dig(p, "match", "context") != "GATEWAY" || route == "" || dig(p, "patch", "operation") != "MERGE" {
		add("patch must MERGE into the gateway's named MCP route")
	}
	found := false
	for _, r := range asList(dig(vs.doc, "spec", "http")) {
		if dig(r, "name") != route {
			continue
		}
		for _, mt := range asList(dig(r, "match")) {
			found = found || dig(mt, "uri", "exact") == MCPPath
		}
	}
	if !found {
		add("route %q is not a VirtualService route matching exactly %s", route, MCPPath)
	}
	js, err := json.Marshal(dig(p, "patch", "value"))
	if err != nil {
		add("patch value: %v", err)
		return errs
	}
	var r routev3.Route
	if err := protojson.Unmarshal(js, &r); err != nil {
		add("patch value is not an Envoy Route: %v", err)
		return errs
	}
	if err := CheckMCPBody(MCPBodySettings(&r)); err != nil {
		add("%v", err)
	}
	return errs
}
