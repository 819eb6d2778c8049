package compat

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/hashicorp/go-hclog"

	"github.com/agentauthz/agentauthz/internal/checkreq"
	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/server"
	"github.com/agentauthz/agentauthz/internal/testca"
)

// env is one trusted CA and one agent certificate, shared by every case:
// identity is not what this suite compares.
type env struct {
	t        *testing.T // the test that owns the services (not a subtest)
	ca       *testca.CA
	bundle   string
	agentPEM []byte

	mu       sync.Mutex
	services map[string]server.Components // by decision path and policy text
}

func newEnv(t *testing.T) *env {
	ca := testca.New(t)
	leaf := ca.Issue("compat-bot", testca.Trust(4), testca.Scopes("payments:read", "payments:initiate"))
	return &env{t: t, ca: ca, bundle: ca.WriteBundle(), agentPEM: leaf.PEM(), services: map[string]server.Components{}}
}

// service assembles the decision path exactly as `agentauthz serve` does,
// for one policy module (plus data.json when data is not empty) queried at
// decisionPath.
func (e *env) service(t *testing.T, policy, data, decisionPath string) server.Components {
	t.Helper()
	key := decisionPath + "\x00" + policy + "\x00" + data
	e.mu.Lock()
	defer e.mu.Unlock()
	if c, ok := e.services[key]; ok {
		return c
	}
	dir := e.t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "policy.rego"), []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	if data != "" {
		if err := os.WriteFile(filepath.Join(dir, "data.json"), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg := config.Config{DataDir: e.t.TempDir(), GRPC: config.GRPC{Addr: "127.0.0.1:0"}, HTTP: config.HTTP{Addr: "127.0.0.1:0"}}
	cfg.Policy.Dir, cfg.Policy.Path = dir, decisionPath
	// Revocation is not what this suite compares: an explicit opt-out.
	cfg.TrustBundles = []config.TrustBundle{{TrustDomain: "example.test", File: e.bundle, Revocation: config.Revocation{Disabled: true}}}
	cfg.DecisionLog.Name = "compat"
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	comps, err := server.Assemble(cfg, hclog.NewNullLogger())
	if err != nil {
		t.Fatalf("assemble: %v", err)
	}
	e.t.Cleanup(func() { _ = comps.Close() })
	e.services[key] = comps
	return comps
}

// request is what Envoy sends for method and target from the agent (peer
// certificate, as include_peer_certificate sends it).
func (e *env) request(t *testing.T, method, target string, headers map[string]string, body string) *authv3.CheckRequest {
	t.Helper()
	req, err := checkreq.Build(checkreq.Request{Method: method, Path: "/", CertPEM: e.agentPEM, Via: checkreq.ViaPeer,
		Headers: headers, RequestID: "compat"})
	if err != nil {
		t.Fatal(err)
	}
	// The target verbatim: Build insists on a leading "/", Envoy's :path
	// need not (absolute form, an escaped first slash).
	h := req.Attributes.Request.Http
	h.Path, h.Headers[":path"] = target, target
	h.Body = body
	return req
}

// answer is a CheckResponse reduced to what opa-envoy-plugin's answer is
// compared on. Identity headers and agentauthz's own additions (x-agent-*,
// x-decision-id, x-agent-receipt, the JSON denial's content-type) are left
// out of Headers; they are checked on their own.
type answer struct {
	Allowed bool
	Status  int // denied: HTTP status
	Reason  string
	// JSON: the denial carries agentauthz's own JSON body (the policy set
	// none); otherwise Body is compared exactly.
	JSON     bool
	Body     string
	Headers  []header // policy headers, sorted
	Upstream map[string]header
	Remove   []string
	RespAdd  []header
	QuerySet []header
	QueryDel []string
	Metadata map[string]any
}

type header struct{ Key, Value, Action string }

func (h header) String() string { return h.Key + ": " + h.Value + " (" + h.Action + ")" }

var ownHeaders = map[string]bool{
	"x-agent-id": true, "x-agent-spiffe-id": true, "x-agent-trust-level": true, "x-agent-scopes": true,
	"x-agent-owner": true, "x-decision-id": true, "x-agent-receipt": true, "x-agent-mcp-tools": true,
}

func options(opts []*corev3.HeaderValueOption, own map[string]header) []header {
	var out []header
	for _, o := range opts {
		h := header{o.GetHeader().GetKey(), o.GetHeader().GetValue(), o.GetAppendAction().String()}
		// opa-envoy-plugin's answers leave the deprecated append field
		// unset; the harness shows it when it is set.
		if o.Append != nil { //nolint:staticcheck // checks the deprecated field on purpose
			h.Action = "append=" + map[bool]string{true: "true", false: "false"}[o.GetAppend().GetValue()] //nolint:staticcheck // as above
		}
		if ownHeaders[h.Key] {
			if own != nil {
				own[h.Key] = h
			}
			continue
		}
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

func reduce(t *testing.T, resp *authv3.CheckResponse) answer {
	t.Helper()
	a := answer{Upstream: map[string]header{}}
	md := resp.GetDynamicMetadata().AsMap()
	a.Metadata = md
	a.Reason, _ = md["reason"].(string)
	if ok := resp.GetOkResponse(); ok != nil {
		a.Allowed = resp.GetStatus().GetCode() == 0
		a.Headers = options(ok.GetHeaders(), a.Upstream)
		for _, h := range ok.GetHeadersToRemove() {
			if !ownHeaders[h] {
				a.Remove = append(a.Remove, h)
			}
		}
		a.RespAdd = options(ok.GetResponseHeadersToAdd(), nil)
		for _, q := range ok.GetQueryParametersToSet() {
			a.QuerySet = append(a.QuerySet, header{Key: q.GetKey(), Value: q.GetValue()})
		}
		a.QueryDel = ok.GetQueryParametersToRemove()
		return a
	}
	d := resp.GetDeniedResponse()
	a.Status, a.Body = int(d.GetStatus().GetCode()), d.GetBody()
	a.Headers = options(d.GetHeaders(), nil)
	return a
}

func (e *env) check(t *testing.T, comps server.Components, req *authv3.CheckRequest) answer {
	t.Helper()
	resp, err := comps.Authorization.Check(context.Background(), req)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	return reduce(t, resp)
}

// echoed is the input the echo policy saw (x-input, JSON).
func echoed(t *testing.T, a answer) map[string]json.RawMessage {
	t.Helper()
	for _, h := range a.Headers {
		if h.Key == "x-input" {
			var m map[string]json.RawMessage
			if err := json.Unmarshal([]byte(h.Value), &m); err != nil {
				t.Fatalf("x-input: %v", err)
			}
			return m
		}
	}
	t.Fatalf("no input echoed: allowed=%v status=%d reason=%s body=%s", a.Allowed, a.Status, a.Reason, a.Body)
	return nil
}

// sameJSON compares two JSON texts as values, numbers by their text.
func sameJSON(t *testing.T, got json.RawMessage, want string) bool {
	t.Helper()
	norm := func(b []byte) string {
		var x any
		d := json.NewDecoder(bytes.NewReader(b))
		d.UseNumber()
		if err := d.Decode(&x); err != nil {
			t.Fatalf("bad JSON %s: %v", b, err)
		}
		out, _ := json.Marshal(x) // map keys sorted
		return string(out)
	}
	return norm(got) == norm([]byte(want))
}
