package policy

import (
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/agentauthz/agentauthz/internal/identity"
)

var update = flag.Bool("update", false, "rewrite the committed fuzz seed corpora")

func testAgent() *identity.Agent {
	return &identity.Agent{
		ID: "payments-bot", SPIFFEID: "spiffe://dev.agentauthz.local/agent/payments-bot", Tenant: "dev.agentauthz.local",
		TrustLevel: 3, Scopes: []string{"payments:initiate", "payments:read"}, Owner: "team-payments",
		Serial: "1a2b", CertSHA256: "ab12", Issuer: "CN=dev CA,O=agentauthz",
		NotBefore: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), NotAfter: time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC),
		Profile: identity.ProfileNative, Source: identity.SourcePeerCertificate,
	}
}

// richRequest sets every kind of field AttributeContext can carry: nested
// peers, maps, 64-bit ints, bytes, enums, timestamps with nanos, Struct
// metadata with numbers and lists, an Any, a wrapper-typed field.
func richRequest() *authv3.CheckRequest {
	st, err := structpb.NewStruct(map[string]any{
		"jwt": map[string]any{"sub": "agent", "iat": 1.7e9, "amr": []any{"mtls", true, nil, 0.25}},
	})
	if err != nil {
		panic(err)
	}
	anyVal, err := anypb.New(wrapperspb.String("typed"))
	if err != nil {
		panic(err)
	}
	r := sampleRequest("POST", "/v1/loans/l-9/repayments?x=1&x=2&y=%2Fz#frag", "application/json; charset=utf-8", `{"amount": 12.5, "currency":"EUR", "tags":["a",1,null]}`)
	a := r.Attributes
	a.Request.Time = &timestamppb.Timestamp{Seconds: 1767225600, Nanos: 120000000}
	a.Request.Http.Size = 1 << 40
	a.Request.Http.RawBody = []byte{0, 1, 2, 0xff}
	a.Request.Http.Headers["content-length"] = "55"
	a.Request.Http.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
		{Key: "x-a", Value: "1"}, {Key: "x-b", RawValue: []byte("raw\xffvalue")},
	}}
	a.Source.Principal = "spiffe://dev.agentauthz.local/agent/payments-bot"
	a.Source.Certificate = "-----BEGIN CERTIFICATE-----%0AMIIB...%0A-----END CERTIFICATE-----%0A"
	a.Source.Labels = map[string]string{"app": "bot"}
	a.Destination = &authv3.AttributeContext_Peer{
		Address: &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: "/tmp/sock", Mode: 0o600}}},
		Service: "payments",
	}
	a.ContextExtensions = map[string]string{"virtual_host": "payments"}
	a.MetadataContext = &corev3.Metadata{
		FilterMetadata:      map[string]*structpb.Struct{"envoy.filters.http.jwt_authn": st},
		TypedFilterMetadata: map[string]*anypb.Any{"typed": anyVal},
	}
	a.TlsSession = &authv3.AttributeContext_TLSSession{Sni: "api.example"}
	a.Source.Address.GetSocketAddress().Protocol = corev3.SocketAddress_UDP
	a.Source.Address.GetSocketAddress().Ipv4Compat = true
	return r
}

func testRequests() map[string]*authv3.CheckRequest {
	form := sampleRequest("POST", "/v1/merchants", "application/x-www-form-urlencoded", "name=Acme&tag=a&tag=b")
	truncated := sampleRequest("POST", "/v1/payments", "application/json", `{"amount":`)
	truncated.Attributes.Request.Http.Headers["content-length"] = "100"
	rawOnly := sampleRequest("POST", "/v1/payments", "application/json", "")
	rawOnly.Attributes.Request.Http.RawBody = []byte(`{"raw":true}`)
	return map[string]*authv3.CheckRequest{
		"get":           sampleRequest("GET", "/v1/payments/p-1?expand=true", "", ""),
		"post json":     sampleRequest("POST", "/v1/payments", "application/json", `{"amount":1}`),
		"root":          sampleRequest("GET", "/", "", ""),
		"rich":          richRequest(),
		"form":          form,
		"truncated":     truncated,
		"raw body only": rawOnly,
		"no http":       {Attributes: &authv3.AttributeContext{Source: &authv3.AttributeContext_Peer{Principal: "p"}}},
		"empty":         {},
		"encoded path":  sampleRequest("GET", "//v1/payments/a%2Fb/%2e%2e//x?q=%2F&r=a+b#frag", "", ""),
	}
}

func TestBuildInputFields(t *testing.T) {
	req := sampleRequest("POST", "/v1/payments/?a=1&a=2&b", "application/json", `{"amount":1}`)
	v, err := BuildInput(req, testAgent(), "payments:initiate")
	if err != nil {
		t.Fatal(err)
	}
	want := ast.MustParseTerm(`{
		"parsed_path": ["v1", "payments", ""],
		"parsed_query": {"a": ["1", "2"], "b": [""]},
		"parsed_body": {"amount": 1},
		"truncated_body": false,
		"version": {"encoding": "protojson", "ext_authz": "v3"},
		"operation": "payments:initiate",
		"agent": {"id": "payments-bot", "spiffe_id": "spiffe://dev.agentauthz.local/agent/payments-bot",
			"tenant": "dev.agentauthz.local", "trust_level": "L3", "trust": 3,
			"scopes": ["payments:initiate", "payments:read"], "owner": "team-payments", "serial": "1a2b",
			"cert_sha256": "ab12", "issuer": "CN=dev CA,O=agentauthz", "not_before": "2026-01-01T00:00:00Z",
			"not_after": "2026-04-01T00:00:00Z", "profile": "native", "source": "peer_certificate"}
	}`).Value.(ast.Object)
	obj := v.(ast.Object)
	for _, k := range want.Keys() {
		if got := obj.Get(k); got == nil || got.Value.Compare(want.Get(k).Value) != 0 {
			t.Errorf("input.%v = %v, want %v", k, got, want.Get(k))
		}
	}
	if obj.Get(ast.StringTerm("attributes")) == nil {
		t.Error("input.attributes missing")
	}
}

func TestBuildInputErrors(t *testing.T) {
	badJSON := sampleRequest("POST", "/v1/payments", "application/json", `{"amount":`)
	badPath := sampleRequest("GET", "/v1/%zz", "", "")
	badQuery := sampleRequest("GET", "/v1?a=%zz&b=1", "", "")
	semicolon := sampleRequest("GET", "/v1?a=1;b=2", "", "")
	badLen := sampleRequest("POST", "/v1/payments", "application/json", `{}`)
	badLen.Attributes.Request.Http.Headers["content-length"] = "many"
	nan := sampleRequest("GET", "/", "", "")
	nan.Attributes.MetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
		"f": {Fields: map[string]*structpb.Value{"n": structpb.NewNumberValue(math.NaN())}}}}
	huge := sampleRequest("POST", "/v1/payments", "application/json", `"`+string(make([]byte, MaxBodyBytes))+`"`)
	for name, req := range map[string]*authv3.CheckRequest{
		"malformed json body": badJSON, "bad path escape": badPath, "bad query escape": badQuery, "semicolon in query": semicolon, "bad content-length": badLen,
		"NaN in metadata": nan, "body too large": huge,
	} {
		if _, err := BuildInput(req, nil, ""); err == nil {
			t.Errorf("%s: BuildInput succeeded, want error", name)
		}
	}
}

// TestWriteFuzzSeeds rewrites testdata/fuzz/FuzzBuildInput from testRequests
// when run with -update.
func TestWriteFuzzSeeds(t *testing.T) {
	if !*update {
		t.Skip("run with -update to rewrite the seed corpus")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzBuildInput")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, req := range testRequests() {
		bs, err := proto.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", bs)
		if err := os.WriteFile(filepath.Join(dir, "seed-"+slug(name)), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func slug(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c == ' ' {
			b[i] = '-'
		}
	}
	return string(b)
}

func BenchmarkBuildInput(b *testing.B) {
	req, agent := sampleRequest("POST", "/v1/payments", "", ""), testAgent()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := BuildInput(req, agent, "payments:initiate"); err != nil {
			b.Fatal(err)
		}
	}
}

// TestFastPathCoversAllFields fails when a go-control-plane upgrade adds a
// field to a message the hand-written converter handles.
func TestFastPathCoversAllFields(t *testing.T) {
	for _, m := range []proto.Message{
		&authv3.AttributeContext{}, &authv3.AttributeContext_Peer{}, &authv3.AttributeContext_Request{},
		&authv3.AttributeContext_HttpRequest{}, &corev3.SocketAddress{},
	} {
		d := m.ProtoReflect().Descriptor()
		want, ok := fastpathFieldCounts[string(d.FullName())]
		if !ok || d.Fields().Len() != want {
			t.Errorf("%s has %d fields, the fast path handles %d: update fastpath.go", d.FullName(), d.Fields().Len(), want)
		}
	}
}

// BenchmarkBuildInputCachedAgent is the input build as Eval does it: the
// agent object comes from the per-certificate cache.
func BenchmarkBuildInputCachedAgent(b *testing.B) {
	req, agent := sampleRequest("POST", "/v1/payments", "", ""), testAgent()
	c := newAgentTermCache()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := buildInput(req, c.term(agent), "payments:initiate"); err != nil {
			b.Fatal(err)
		}
	}
}

func TestAgentTermCache(t *testing.T) {
	c := newAgentTermCache()
	a := testAgent()
	if c.term(nil) != nil {
		t.Fatal("nil agent gave a term")
	}
	first := c.term(a)
	if c.term(testAgent()) != first {
		t.Fatal("an equal agent behind another pointer not served from the cache")
	}
	if first.Value.Compare(agentValue(a)) != 0 {
		t.Fatal("cached agent differs")
	}
	other := testAgent()
	other.Owner = "team-other"
	if got := c.term(other); got == first || got.Value.Compare(agentValue(other)) != 0 {
		t.Fatal("another agent got the first one's term")
	}
}
