package adversarial

import (
	"context"
	"encoding/json"
	"flag"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/server"
)

var verbose = flag.Bool("verbose-server", false, "log server output in tests")

// service is one fully assembled decision service, served over gRPC and
// HTTP on loopback listeners the test owns.
type service struct {
	cfg      config.Config
	comps    server.Components
	conn     *grpc.ClientConn
	client   authv3.AuthorizationClient
	grpcAddr string
	httpAddr string
	stop     func() error // stops the server and returns Serve's error
}

// shippedPolicies is the repository's policy directory.
func shippedPolicies() string { return filepath.Join("..", "..", "policies") }

// newConfig is a valid configuration trusting bundle for example.test with
// the shipped policy, with revocation checking off (an explicit opt-out:
// these tests are about other things); mutate adjusts it before defaults
// and validation.
func newConfig(t testing.TB, bundle string, mutate func(*config.Config)) config.Config {
	t.Helper()
	cfg := config.Config{DataDir: t.TempDir(), GRPC: config.GRPC{Addr: "127.0.0.1:0"}, HTTP: config.HTTP{Addr: "127.0.0.1:0"}}
	cfg.Policy.Dir = shippedPolicies()
	cfg.TrustBundles = []config.TrustBundle{{TrustDomain: "example.test", File: bundle, Revocation: config.Revocation{Disabled: true}}}
	cfg.DecisionLog.Name = "adversarial"
	if mutate != nil {
		mutate(&cfg)
	}
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// startService assembles cfg exactly as `agentauthz serve` does and serves it.
func startService(t testing.TB, cfg config.Config) *service {
	t.Helper()
	logger := hclog.NewNullLogger()
	if *verbose {
		logger = hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Debug})
	}
	comps, err := server.Assemble(cfg, logger)
	if err != nil {
		t.Fatalf("assemble: %v", err)
	}
	srv, err := server.New(cfg, comps, logger)
	if err != nil {
		t.Fatal(err)
	}
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, gl, hl, nil) }()
	stopped := false
	var serveErr error
	stop := func() error {
		if !stopped {
			stopped = true
			cancel()
			serveErr = <-done
		}
		return serveErr
	}
	conn, err := grpc.NewClient(gl.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		if err := stop(); err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return &service{
		cfg: cfg, comps: comps, conn: conn, client: authv3.NewAuthorizationClient(conn),
		grpcAddr: gl.Addr().String(), httpAddr: hl.Addr().String(), stop: stop,
	}
}

// verifyLog stops nothing; it checks that the service's log verifies and
// returns every decision id in it.
func (s *service) verifyLog(t *testing.T) map[string]*decisionlog.Record {
	t.Helper()
	keys, err := decisionlog.LoadKeySet(filepath.Join(s.cfg.DataDir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := decisionlog.Verify(s.cfg.DecisionLog.Dir, keys)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if res.Problem != nil {
		t.Fatalf("log does not verify: %v", res.Problem)
	}
	return readLog(t, s.cfg.DecisionLog.Dir)
}

func readLog(t *testing.T, dir string) map[string]*decisionlog.Record {
	t.Helper()
	out := map[string]*decisionlog.Record{}
	r := decisionlog.NewReader(dir)
	defer r.Close()
	for {
		e, err := r.Next()
		if err != nil {
			if strings.Contains(err.Error(), "EOF") {
				return out
			}
			t.Fatalf("read log: %v", err)
		}
		out[e.Record.DecisionID] = e.Record
	}
}

// verdict is a CheckResponse reduced to what the catalogue asserts.
type verdict struct {
	Allowed    bool
	Status     int
	Reason     string
	DecisionID string
	Operation  string
	AgentID    string            // metadata agent_id
	Upstream   map[string]string // allowed: headers set for the upstream
	Removed    []string          // allowed: headers removed upstream
	Body       string            // denied: body
	Headers    map[string]string // denied: headers to the client
}

func reduce(resp *authv3.CheckResponse) verdict {
	md := resp.GetDynamicMetadata().GetFields()
	v := verdict{
		Reason:     md["reason"].GetStringValue(),
		DecisionID: md["decision_id"].GetStringValue(),
		Operation:  md["operation"].GetStringValue(),
		AgentID:    md["agent_id"].GetStringValue(),
	}
	if ok := resp.GetOkResponse(); ok != nil && resp.GetStatus().GetCode() == 0 {
		v.Allowed, v.Status = true, 200
		v.Upstream = map[string]string{}
		for _, h := range ok.GetHeaders() {
			v.Upstream[strings.ToLower(h.GetHeader().GetKey())] = h.GetHeader().GetValue()
		}
		v.Removed = ok.GetHeadersToRemove()
		return v
	}
	d := resp.GetDeniedResponse()
	v.Status = int(d.GetStatus().GetCode())
	v.Body = d.GetBody()
	v.Headers = map[string]string{}
	for _, h := range d.GetHeaders() {
		v.Headers[strings.ToLower(h.GetHeader().GetKey())] = h.GetHeader().GetValue()
	}
	return v
}

// leakRE matches what must never reach a client: Go error strings, stack
// traces, panics, file positions, policy source and library names.
var leakRE = regexp.MustCompile(`(?i)goroutine \d|panic|runtime error|\.go:\d|x509:|asn1:|tls:|rego|opa|package agentauthz|eval_|undefined|conflict|stack|invalid memory|nil pointer|errors?\.|%!|\bfunc\b|/work/|/tmp/`)

// checkNoLeak asserts the invariant of every answer: a decision id, a
// denial body that is the fixed JSON shape, and nothing internal in any
// header or body.
func checkNoLeak(t *testing.T, resp *authv3.CheckResponse) {
	t.Helper()
	v := reduce(resp)
	if v.DecisionID == "" || v.Reason == "" {
		t.Errorf("answer without decision id or reason: %v", resp)
	}
	var texts []string
	if v.Allowed {
		for k, val := range v.Upstream {
			if k == "x-agent-receipt" {
				continue // a JWS; checked by the log tests
			}
			texts = append(texts, k, val)
		}
	} else {
		var body map[string]string
		if err := json.Unmarshal([]byte(v.Body), &body); err != nil || len(body) != 3 ||
			body["reason"] != v.Reason || body["decision_id"] != v.DecisionID ||
			(body["error"] != "unauthenticated" && body["error"] != "forbidden" && body["error"] != "unavailable" && body["error"] != "bad_request") {
			t.Errorf("denial body %q is not {error, reason, decision_id}", v.Body)
		}
		texts = append(texts, v.Body)
		for k, val := range v.Headers {
			texts = append(texts, k, val)
		}
	}
	for _, s := range texts {
		if leakRE.MatchString(s) {
			t.Errorf("internal detail leaks to the client: %q", s)
		}
		if strings.ContainsAny(s, "\r\n\x00") {
			t.Errorf("control characters in an answer header or body: %q", s)
		}
	}
	for k, val := range resp.GetDynamicMetadata().GetFields() {
		if leakRE.MatchString(k + " " + val.GetStringValue()) {
			t.Errorf("internal detail in dynamic metadata: %s=%q", k, val.GetStringValue())
		}
	}
}
