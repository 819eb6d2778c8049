package edge_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/hashicorp/go-hclog"
	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/edge"
	"github.com/agentauthz/agentauthz/internal/server"
	"github.com/agentauthz/agentauthz/internal/testca"
)

// service starts agentauthz in process as `serve` does, with the shipped
// policy, on loopback gRPC and HTTP listeners; it returns the gRPC
// connection and the decision log directory.
func service(t *testing.T, ca *testca.CA) (*grpc.ClientConn, string) {
	t.Helper()
	dir := t.TempDir()
	crl := filepath.Join(dir, "ca.crl")
	if err := os.WriteFile(crl, ca.CRL(1, time.Now().Add(-time.Hour), time.Now().Add(time.Hour)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := config.Config{DataDir: dir}
	cfg.GRPC.Addr, cfg.HTTP.Addr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Policy.Dir = "../../policies"
	cfg.DecisionLog.Name, cfg.DecisionLog.Mode = "mcp-test", "sync"
	cfg.TrustBundles = []config.TrustBundle{{TrustDomain: "example.test", File: ca.WriteBundle(),
		Revocation: config.Revocation{CRLFiles: []string{crl}}}}
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	logger := hclog.New(&hclog.LoggerOptions{Output: testWriter{t}, Level: hclog.Warn})
	comps, err := server.Assemble(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(cfg, comps, logger)
	if err != nil {
		t.Fatal(err)
	}
	gl, err := net.Listen("tcp", cfg.GRPC.Addr)
	if err != nil {
		t.Fatal(err)
	}
	hl, err := net.Listen("tcp", cfg.HTTP.Addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, gl, hl, nil) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://" + hl.Addr().String() + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("agentauthz not ready: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	conn, err := grpc.NewClient(gl.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, cfg.DecisionLog.Dir
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

type paymentArgs struct {
	PaymentID string `json:"payment_id,omitempty"`
	Amount    int    `json:"amount,omitempty"`
	Creditor  string `json:"creditor,omitempty"`
}

// paymentsServer is an MCP server (the official Go SDK) with the read and
// write tools of the shipped policy; initiated counts initiate_payment runs.
func paymentsServer(initiated *atomic.Int32) http.Handler {
	s := mcp.NewServer(&mcp.Implementation{Name: "payments", Version: "1.0.0"}, nil)
	text := func(s string) *mcp.CallToolResult {
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: s}}}
	}
	mcp.AddTool(s, &mcp.Tool{Name: "get_payment", Description: "read one payment"},
		func(_ context.Context, _ *mcp.CallToolRequest, a paymentArgs) (*mcp.CallToolResult, any, error) {
			return text("payment " + a.PaymentID + ": 12.50 EUR, settled"), nil, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "list_payments", Description: "list payments"},
		func(context.Context, *mcp.CallToolRequest, paymentArgs) (*mcp.CallToolResult, any, error) {
			return text("p-1, p-2"), nil, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "initiate_payment", Description: "move money"},
		func(_ context.Context, _ *mcp.CallToolRequest, a paymentArgs) (*mcp.CallToolResult, any, error) {
			initiated.Add(1)
			return text("payment initiated"), nil, nil
		})
	return mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return s }, nil)
}

// connect opens an MCP session through the proxy as the agent holding leaf.
func connect(t *testing.T, proxy *httptest.Server, leaf *testca.Leaf) *mcp.ClientSession {
	t.Helper()
	cert, err := tls.X509KeyPair(leaf.PEM(), leaf.KeyPEM())
	if err != nil {
		t.Fatal(err)
	}
	// A transport of its own: a pooled connection carries the identity of
	// the certificate it was opened with.
	tr := proxy.Client().Transport.(*http.Transport).Clone()
	tr.TLSClientConfig.Certificates = []tls.Certificate{cert}
	hc := &http.Client{Transport: tr}
	c := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1.0.0"}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: proxy.URL + "/mcp", HTTPClient: hc, DisableStandaloneSSE: true}, nil)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func toolNames(t *testing.T, s *mcp.ClientSession) []string {
	t.Helper()
	res, err := s.ListTools(context.Background(), nil)
	if err != nil {
		t.Fatalf("tools/list: %v", err)
	}
	var names []string
	for _, tool := range res.Tools {
		names = append(names, tool.Name)
	}
	slices.Sort(names)
	return names
}

// TestMCPThroughEnvoyAndAgentauthz: the SDK's client calls the SDK's
// server through a proxy that asks agentauthz's Check (body included, over
// a real gRPC socket) and runs its ext_proc on the answers, as Envoy does.
// A reader lists only the read tools and is refused initiate_payment with
// a JSON-RPC error; the payer may call it; the record names the tool.
func TestMCPThroughEnvoyAndAgentauthz(t *testing.T) {
	ca := testca.New(t)
	reader := ca.Issue("payments-reader", testca.Trust(1), testca.Scopes("payments:read"))
	payer := ca.Issue("payments-bot", testca.Trust(3), testca.Scopes("payments:initiate", "payments:read"))
	conn, logDir := service(t, ca)

	var initiated atomic.Int32
	upstream := httptest.NewServer(paymentsServer(&initiated))
	t.Cleanup(upstream.Close)
	u, _ := url.Parse(upstream.URL)
	p, err := edge.New(edge.Options{Upstream: u, Authz: authv3.NewAuthorizationClient(conn), Processor: extprocv3.NewExternalProcessorClient(conn)})
	if err != nil {
		t.Fatal(err)
	}
	proxy := httptest.NewUnstartedServer(p)
	proxy.TLS = &tls.Config{ClientAuth: tls.RequireAnyClientCert}
	proxy.StartTLS()
	t.Cleanup(proxy.Close)

	// The reader sees the read tools only, and may use them.
	rs := connect(t, proxy, reader)
	if got := toolNames(t, rs); !slices.Equal(got, []string{"get_payment", "list_payments"}) {
		t.Fatalf("reader lists %v", got)
	}
	res, err := rs.CallTool(context.Background(), &mcp.CallToolParams{Name: "get_payment", Arguments: map[string]any{"payment_id": "p-1"}})
	if err != nil || res.IsError || !strings.Contains(res.Content[0].(*mcp.TextContent).Text, "settled") {
		t.Fatalf("get_payment: %+v, %v", res, err)
	}

	// initiate_payment: refused with a JSON-RPC error the client surfaces.
	_, err = rs.CallTool(context.Background(), &mcp.CallToolParams{Name: "initiate_payment",
		Arguments: map[string]any{"amount": 125000, "creditor": "DE89370400440532013000"}})
	var we *jsonrpc.Error
	if !errors.As(err, &we) {
		t.Fatalf("initiate_payment by the reader: err %v, want a JSON-RPC error", err)
	}
	var data struct {
		Reason     string `json:"reason"`
		DecisionID string `json:"decision_id"`
	}
	if err := json.Unmarshal(we.Data, &data); err != nil || we.Code != 403 || data.Reason != "insufficient_trust_level" || data.DecisionID == "" ||
		!strings.Contains(we.Message, "initiate_payment") {
		t.Fatalf("JSON-RPC error %d %q %s", we.Code, we.Message, we.Data)
	}
	if initiated.Load() != 0 {
		t.Fatal("the server ran initiate_payment for the reader")
	}
	// The session survives the refusal.
	if got := toolNames(t, rs); len(got) != 2 {
		t.Fatalf("after the refusal the reader lists %v", got)
	}

	// The payer sees and calls initiate_payment.
	ps := connect(t, proxy, payer)
	if got := toolNames(t, ps); !slices.Equal(got, []string{"get_payment", "initiate_payment", "list_payments"}) {
		t.Fatalf("payer lists %v", got)
	}
	res, err = ps.CallTool(context.Background(), &mcp.CallToolParams{Name: "initiate_payment", Arguments: map[string]any{"amount": 100}})
	if err != nil || res.IsError || initiated.Load() != 1 {
		t.Fatalf("payer initiate_payment: %+v, %v (ran %d times)", res, err, initiated.Load())
	}

	// The log: the refusal names the tool, its operation and the digest
	// of the arguments, never the arguments.
	r := decisionlog.NewReader(logDir)
	defer r.Close()
	var denied *decisionlog.Record
	var raw []byte
	for {
		e, err := r.Next()
		if err != nil {
			break
		}
		if e.Record.DecisionID == data.DecisionID {
			denied = e.Record
			raw, _ = json.Marshal(e.Record)
		}
	}
	if denied == nil {
		t.Fatalf("no record for decision %s", data.DecisionID)
	}
	m := denied.Request.MCP
	if len(m) != 1 || m[0].Method != "tools/call" || m[0].Tool != "initiate_payment" || m[0].Operation != "payments:initiate" ||
		len(m[0].ArgumentsSHA256) != 64 || denied.Request.Operation != "payments:initiate" || denied.Decision.Allowed {
		t.Fatalf("record %s", raw)
	}
	if strings.Contains(string(raw), "DE89370400440532013000") || strings.Contains(string(raw), "125000") {
		t.Fatalf("arguments recorded: %s", raw)
	}
}
