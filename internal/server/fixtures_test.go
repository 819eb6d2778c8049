package server

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/agentauthz/agentauthz/internal/checkreq"
	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/testca"
)

var verbose = flag.Bool("verbose-server", false, "log server output in tests")

// fixture is one protojson CheckRequest with its expected decision. The
// request is a template: certificates are issued by the test CA per run and
// put in place of {{CERT}}, {{XFCC}}, {{FORGED_XFCC}} and {{SPIFFE_ID}}.
type fixture struct {
	Description string          `json:"description"`
	Config      string          `json:"config"`
	Cert        *fixtureCert    `json:"cert"`
	Request     json.RawMessage `json:"request"`
	Expect      struct {
		Allowed bool              `json:"allowed"`
		Status  int               `json:"status"`
		Reason  string            `json:"reason"`
		Headers map[string]string `json:"headers"`
		Body    string            `json:"body"`
	} `json:"expect"`
}

type fixtureCert struct {
	ID      string   `json:"id"`
	Trust   int      `json:"trust"`
	Scopes  []string `json:"scopes"`
	Owner   string   `json:"owner"`
	CA      string   `json:"ca"`      // "" (trusted) or "other"
	Variant string   `json:"variant"` // expired, not_yet_valid, wrong_eku, two_uris, cn_mismatch, two_trust, malformed_pem
}

// env is one assembled service per fixture configuration.
type env struct {
	comps  Components
	client authv3.AuthorizationClient
	logDir string
	keyDir string
}

type harness struct {
	t       *testing.T
	trusted *testca.CA
	other   *testca.CA
	bundle  string
	mu      sync.Mutex
	envs    map[string]*env
}

func newHarness(t *testing.T) *harness {
	trusted := testca.New(t)
	return &harness{t: t, trusted: trusted, other: testca.New(t), bundle: trusted.WriteBundle(), envs: map[string]*env{}}
}

func (h *harness) config(name string) config.Config {
	t := h.t
	cfg := config.Config{DataDir: t.TempDir(), GRPC: config.GRPC{Addr: "127.0.0.1:0"}, HTTP: config.HTTP{Addr: "127.0.0.1:0"}}
	cfg.Policy.Dir = filepath.Join("..", "..", "policies")
	cfg.TrustBundles = []config.TrustBundle{{TrustDomain: "example.test", File: h.bundle, Revocation: config.Revocation{Disabled: true}}}
	switch name {
	case "default":
	case "spiffe":
		cfg.Identity.Sources = []string{"peer_certificate", "xfcc", "spiffe_id"}
		cfg.TrustBundles = append(cfg.TrustBundles, config.TrustBundle{TrustDomain: "dev.agentauthz.local", Profile: "spiffe", Revocation: config.Revocation{Disabled: true}})
	case "envoy_bool", "envoy_object":
		cfg.Policy.Dir = filepath.Join("testdata", "policies", name)
		cfg.Policy.Path = "envoy/authz/allow"
	case "faulty":
		cfg.Policy.Dir = filepath.Join("testdata", "policies", name)
	default:
		t.Fatalf("unknown fixture config %q", name)
	}
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// env assembles the real decision path for a configuration and serves it
// over gRPC on a loopback listener the test owns.
func (h *harness) env(name string) *env {
	h.mu.Lock()
	defer h.mu.Unlock()
	if e := h.envs[name]; e != nil {
		return e
	}
	t := h.t
	cfg := h.config(name)
	logger := hclog.NewNullLogger()
	if *verbose {
		logger = hclog.New(&hclog.LoggerOptions{Name: name, Level: hclog.Debug})
	}
	comps, err := Assemble(cfg, logger)
	if err != nil {
		t.Fatalf("assemble %s: %v", name, err)
	}
	srv, err := New(cfg, comps, logger)
	if err != nil {
		t.Fatal(err)
	}
	grpcLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, grpcLis, httpLis, nil) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve %s: %v", name, err)
		}
	})
	conn, err := grpc.NewClient(grpcLis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	e := &env{comps: comps, client: authv3.NewAuthorizationClient(conn), logDir: cfg.DecisionLog.Dir, keyDir: filepath.Join(cfg.DataDir, "keys")}
	h.envs[name] = e
	return e
}

// issue makes the fixture's certificate.
func (h *harness) issue(c *fixtureCert) (certPEM []byte, leaf *x509.Certificate) {
	ca := h.trusted
	if c.CA == "other" {
		ca = h.other
	}
	opts := []testca.Option{testca.Trust(c.Trust), testca.Scopes(c.Scopes...)}
	if c.Owner != "" {
		opts = append(opts, testca.Owner(c.Owner))
	}
	now := time.Now()
	switch c.Variant {
	case "", "malformed_pem":
	case "expired":
		opts = append(opts, testca.Validity(now.Add(-2*time.Hour), now.Add(-time.Hour)))
	case "not_yet_valid":
		opts = append(opts, testca.Validity(now.Add(time.Hour), now.Add(2*time.Hour)))
	case "wrong_eku":
		opts = append(opts, testca.EKU(x509.ExtKeyUsageServerAuth))
	case "two_uris":
		opts = append(opts, testca.URIs("spiffe://example.test/agent/"+c.ID, "spiffe://example.test/agent/admin"))
	case "cn_mismatch":
		opts = append(opts, testca.CN("admin"))
	case "two_trust":
		opts = append(opts, testca.Template(func(x *x509.Certificate) {
			x.Subject.OrganizationalUnit = append(x.Subject.OrganizationalUnit, "trust:L4")
		}))
	default:
		h.t.Fatalf("unknown variant %q", c.Variant)
	}
	l := ca.Issue(c.ID, opts...)
	if c.Variant == "malformed_pem" {
		return []byte("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"), l.Cert
	}
	return l.PEM(), l.Cert
}

func (h *harness) request(f *fixture, requestID string) *authv3.CheckRequest {
	t := h.t
	repl := []string{"{{REQUEST_ID}}", requestID}
	if f.Cert != nil {
		certPEM, leaf := h.issue(f.Cert)
		admin := h.trusted.Issue("admin", testca.Trust(4), testca.Scopes("payments:initiate"))
		spiffe := ""
		if len(leaf.URIs) > 0 {
			spiffe = leaf.URIs[0].String()
		}
		repl = append(repl,
			"{{CERT}}", url.QueryEscape(string(certPEM)),
			"{{XFCC}}", jsonEscape(checkreq.XFCCElement(leaf, certPEM)),
			"{{FORGED_XFCC}}", jsonEscape(checkreq.XFCCElement(admin.Cert, admin.PEM())),
			"{{SPIFFE_ID}}", spiffe,
		)
	}
	body := strings.NewReplacer(repl...).Replace(string(f.Request))
	req := &authv3.CheckRequest{}
	if err := protojson.Unmarshal([]byte(body), req); err != nil {
		t.Fatalf("fixture request: %v", err)
	}
	return req
}

func jsonEscape(s string) string {
	b, _ := json.Marshal(s)
	return string(b[1 : len(b)-1])
}

func loadFixtures(t *testing.T) map[string]*fixture {
	paths, err := filepath.Glob(filepath.Join("testdata", "fixtures", "*.json"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	out := map[string]*fixture{}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		f := &fixture{}
		if err := json.Unmarshal(data, f); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		out[strings.TrimSuffix(filepath.Base(p), ".json")] = f
	}
	return out
}

// TestFixtures runs every fixture twice: calling Check directly, and over a
// real gRPC server on a loopback listener. Both must give the same decision,
// and every decision must be in the log, which must verify.
func TestFixtures(t *testing.T) {
	h := newHarness(t)
	fixtures := loadFixtures(t)
	checks := map[string]int{}
	for name, f := range fixtures {
		for _, via := range []string{"direct", "grpc"} {
			t.Run(name+"/"+via, func(t *testing.T) {
				e := h.env(f.Config)
				requestID := fmt.Sprintf("%s-%s", name, via)
				req := h.request(f, requestID)
				var resp *authv3.CheckResponse
				var err error
				if via == "direct" {
					resp, err = e.comps.Authorization.Check(context.Background(), req)
				} else {
					resp, err = e.client.Check(context.Background(), req)
				}
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				checks[f.Config]++
				assertDecision(t, f, resp)
			})
		}
	}
	// Every decision was recorded, and each log verifies.
	for name, e := range h.envs {
		keys, err := decisionlog.LoadKeySet(e.keyDir)
		if err != nil {
			t.Fatal(err)
		}
		res, err := decisionlog.Verify(e.logDir, keys)
		if err != nil {
			t.Fatalf("%s: verify log: %v", name, err)
		}
		if res.Problem != nil {
			t.Errorf("%s: log does not verify: %+v", name, res)
		}
		if int(res.Records) != checks[name] {
			t.Errorf("%s: %d records for %d checks", name, res.Records, checks[name])
		}
	}
}

func assertDecision(t *testing.T, f *fixture, resp *authv3.CheckResponse) {
	t.Helper()
	meta := resp.GetDynamicMetadata().GetFields()
	if got := meta["reason"].GetStringValue(); got != f.Expect.Reason {
		t.Errorf("reason = %q, want %q (%s)", got, f.Expect.Reason, f.Description)
	}
	if meta["decision_id"].GetStringValue() == "" {
		t.Error("no decision_id in dynamic metadata")
	}
	if f.Expect.Allowed {
		ok := resp.GetOkResponse()
		if ok == nil || resp.GetStatus().GetCode() != 0 {
			t.Fatalf("want allow, got %v", resp)
		}
		got := map[string]string{}
		for _, hv := range ok.GetHeaders() {
			k := strings.ToLower(hv.GetHeader().GetKey())
			if _, dup := got[k]; dup && strings.HasPrefix(k, "x-agent-") {
				t.Errorf("identity header %s set twice", k)
			}
			got[k] = hv.GetHeader().GetValue()
		}
		for k, want := range f.Expect.Headers {
			if got[k] != want {
				t.Errorf("upstream header %s = %q, want %q", k, got[k], want)
			}
		}
		if got["x-agent-receipt"] == "" || got["x-decision-id"] != meta["decision_id"].GetStringValue() {
			t.Errorf("receipt and decision id must reach the upstream: %v", got)
		}
		return
	}
	d := resp.GetDeniedResponse()
	if d == nil || resp.GetStatus().GetCode() == 0 {
		t.Fatalf("want deny, got %v", resp)
	}
	if got := int(d.GetStatus().GetCode()); got != f.Expect.Status {
		t.Errorf("status = %d, want %d", got, f.Expect.Status)
	}
	if f.Expect.Body != "" {
		if d.GetBody() != f.Expect.Body {
			t.Errorf("body = %q, want %q", d.GetBody(), f.Expect.Body)
		}
	} else {
		var body map[string]string
		if err := json.Unmarshal([]byte(d.GetBody()), &body); err != nil {
			t.Fatalf("deny body %q: %v", d.GetBody(), err)
		}
		if body["reason"] != f.Expect.Reason || body["decision_id"] == "" || body["error"] == "" || len(body) != 3 {
			t.Errorf("deny body = %v", body)
		}
	}
	got := map[string]string{}
	for _, hv := range d.GetHeaders() {
		got[strings.ToLower(hv.GetHeader().GetKey())] = hv.GetHeader().GetValue()
	}
	for k, want := range f.Expect.Headers {
		if got[k] != want {
			t.Errorf("denial header %s = %q, want %q", k, got[k], want)
		}
	}
}
