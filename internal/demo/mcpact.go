package demo

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentauthz/agentauthz/internal/edge"
	"github.com/agentauthz/agentauthz/internal/reason"
)

// MCPAct is the MCP act: the payments agent and the rogue agent use the
// tools of one MCP server (the official Go SDK's, both sides) through a
// proxy configured as the shipped Envoy (internal/edge), which asks a
// replica's ext_authz (with the JSON-RPC body) and ext_proc.
type MCPAct struct {
	Endpoint string `json:"endpoint"`
	// Tools each agent was shown by tools/list.
	PaymentsTools []string `json:"payments_agent_tools"`
	RogueTools    []string `json:"rogue_agent_tools"`
	// PaymentsResult is what initiate_payment answered the payments agent.
	PaymentsResult string `json:"payments_agent_result"`
	// RogueRefusal is the JSON-RPC error the rogue agent got for
	// initiate_payment; nil if it got none.
	RogueRefusal *MCPRefusal `json:"rogue_agent_refusal"`
	// Initiated counts the payments the MCP server made: exactly one, the
	// payments agent's.
	Initiated int `json:"payments_initiated"`
	// Decided counts the HTTP requests the proxy had decided (each one a
	// decision record); Allowed those that reached the MCP server (each one
	// also a signed-response record).
	Decided int `json:"decided"`
	Allowed int `json:"allowed"`
}

// MCPRefusal is a JSON-RPC error as the MCP client surfaced it.
type MCPRefusal struct {
	Code       int64  `json:"code"`
	Message    string `json:"message"`
	Reason     string `json:"reason"`
	DecisionID string `json:"decision_id"`
}

const mcpPaymentTool = "initiate_payment"

func (a *MCPAct) problems() []string {
	if a == nil {
		return []string{"MCP act did not run"}
	}
	var out []string
	if !slices.Contains(a.PaymentsTools, mcpPaymentTool) {
		out = append(out, fmt.Sprintf("MCP: %s was not shown %s (tools %v)", PaymentsAgent, mcpPaymentTool, a.PaymentsTools))
	}
	if slices.Contains(a.RogueTools, mcpPaymentTool) || len(a.RogueTools) == 0 {
		out = append(out, fmt.Sprintf("MCP: %s was shown tools %v, want the read tools without %s", RogueAgent, a.RogueTools, mcpPaymentTool))
	}
	if r := a.RogueRefusal; r == nil || r.Reason != string(reason.InsufficientTrustLevel) || r.DecisionID == "" {
		out = append(out, fmt.Sprintf("MCP: %s was not refused %s with insufficient_trust_level: %+v", RogueAgent, mcpPaymentTool, r))
	}
	if a.Initiated != 1 {
		out = append(out, fmt.Sprintf("MCP: the server initiated %d payments, want 1 (the payments agent's)", a.Initiated))
	}
	return out
}

type paymentArgs struct {
	Amount   string `json:"amount,omitempty"`
	Currency string `json:"currency,omitempty"`
	Creditor string `json:"creditor,omitempty"`
	ID       string `json:"payment_id,omitempty"`
}

// paymentsMCPServer is the API's MCP face: the tools of the shipped
// data.agentauthz.mcp for payments.
func paymentsMCPServer(initiated *atomic.Int32) http.Handler {
	s := mcp.NewServer(&mcp.Implementation{Name: "acme-payments", Version: "1.0.0"}, nil)
	text := func(t string) *mcp.CallToolResult {
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: t}}}
	}
	mcp.AddTool(s, &mcp.Tool{Name: "get_payment", Description: "Read one payment."},
		func(_ context.Context, _ *mcp.CallToolRequest, a paymentArgs) (*mcp.CallToolResult, any, error) {
			return text("payment " + a.ID + ": 12.50 EUR, settled"), nil, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "list_payments", Description: "List recent payments."},
		func(context.Context, *mcp.CallToolRequest, paymentArgs) (*mcp.CallToolResult, any, error) {
			return text("pay_7Hq2, pay_9Kx1"), nil, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: mcpPaymentTool, Description: "Initiate a payment (moves money)."},
		func(_ context.Context, _ *mcp.CallToolRequest, a paymentArgs) (*mcp.CallToolResult, any, error) {
			n := initiated.Add(1)
			return text(fmt.Sprintf("payment pay_mcp_%d initiated: %s %s to %s", n, a.Amount, a.Currency, a.Creditor)), nil, nil
		})
	return mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return s }, nil)
}

// runMCPAct serves the MCP server and the proxy on loopback, plays both
// agents, and stops them.
func runMCPAct(ctx context.Context, r *replica, agents map[string]AgentInfo) (*MCPAct, error) {
	var initiated, decided, allowed atomic.Int32
	upLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	mcpServer := paymentsMCPServer(&initiated)
	up := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		allowed.Add(1)
		mcpServer.ServeHTTP(w, r)
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = up.Serve(upLis) }()
	defer up.Close()

	p, err := edge.New(edge.Options{Upstream: &url.URL{Scheme: "http", Host: upLis.Addr().String()},
		Authz: authv3.NewAuthorizationClient(r.conn), Processor: extprocv3.NewExternalProcessorClient(r.conn)})
	if err != nil {
		return nil, err
	}
	serverCert, err := selfSigned()
	if err != nil {
		return nil, err
	}
	pxLis, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{serverCert},
		ClientAuth: tls.RequireAnyClientCert, MinVersion: tls.VersionTLS12})
	if err != nil {
		return nil, err
	}
	px := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		decided.Add(1)
		p.ServeHTTP(w, r)
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = px.Serve(pxLis) }()
	defer px.Close()

	act := &MCPAct{Endpoint: "https://" + pxLis.Addr().String() + "/mcp"}
	roots := x509.NewCertPool()
	roots.AddCert(serverCert.Leaf)
	session := func(id string) (*mcp.ClientSession, error) {
		a := agents[id]
		cert, err := tls.X509KeyPair(a.certPEM, a.keyPEM)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", id, err)
		}
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: roots, MinVersion: tls.VersionTLS12}}}
		c := mcp.NewClient(&mcp.Implementation{Name: id, Version: "1.0.0"}, nil)
		return c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: act.Endpoint, HTTPClient: hc, DisableStandaloneSSE: true}, nil)
	}
	tools := func(s *mcp.ClientSession) ([]string, error) {
		res, err := s.ListTools(ctx, nil)
		if err != nil {
			return nil, err
		}
		var names []string
		for _, t := range res.Tools {
			names = append(names, t.Name)
		}
		slices.Sort(names)
		return names, nil
	}
	//nolint:gosec // G101: an example IBAN, not a credential
	pay := &mcp.CallToolParams{Name: mcpPaymentTool, Arguments: map[string]any{"amount": "250.00", "currency": "EUR", "creditor": "DE89370400440532013000"}}

	ps, err := session(PaymentsAgent)
	if err != nil {
		return nil, fmt.Errorf("MCP session of %s: %w", PaymentsAgent, err)
	}
	defer ps.Close()
	if act.PaymentsTools, err = tools(ps); err != nil {
		return nil, fmt.Errorf("MCP tools/list of %s: %w", PaymentsAgent, err)
	}
	res, err := ps.CallTool(ctx, pay)
	if err != nil {
		return nil, fmt.Errorf("MCP %s of %s: %w", mcpPaymentTool, PaymentsAgent, err)
	}
	for _, c := range res.Content {
		if t, ok := c.(*mcp.TextContent); ok {
			act.PaymentsResult = t.Text
		}
	}

	rs, err := session(RogueAgent)
	if err != nil {
		return nil, fmt.Errorf("MCP session of %s: %w", RogueAgent, err)
	}
	defer rs.Close()
	if act.RogueTools, err = tools(rs); err != nil {
		return nil, fmt.Errorf("MCP tools/list of %s: %w", RogueAgent, err)
	}
	_, err = rs.CallTool(ctx, pay)
	var we *jsonrpc.Error
	if errors.As(err, &we) {
		ref := &MCPRefusal{Code: we.Code, Message: we.Message}
		var data struct {
			Reason     string `json:"reason"`
			DecisionID string `json:"decision_id"`
		}
		if json.Unmarshal(we.Data, &data) == nil {
			ref.Reason, ref.DecisionID = data.Reason, data.DecisionID
		}
		act.RogueRefusal = ref
	} else if err != nil {
		return nil, fmt.Errorf("MCP %s of %s: %w", mcpPaymentTool, RogueAgent, err)
	}
	// Close both sessions (DELETE /mcp, decided too) before counting.
	_ = ps.Close()
	_ = rs.Close()
	act.Initiated, act.Decided, act.Allowed = int(initiated.Load()), int(decided.Load()), int(allowed.Load())
	return act, nil
}

// selfSigned is the proxy's serving certificate (the agents trust it
// directly; it plays the front proxy's certificate).
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mcp.acme.example"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

func (p *printer) mcpAct(a *MCPAct) {
	p.section("3c. MCP: agents call tools through Envoy (one POST /mcp, each tool call decided)")
	p.line("MCP endpoint     %s  (the official Go SDK on both sides)", a.Endpoint)
	p.line("%-16s tools/list shows %v", PaymentsAgent, a.PaymentsTools)
	p.line("%-16s %s -> %s", PaymentsAgent, mcpPaymentTool, a.PaymentsResult)
	p.line("%-16s tools/list shows %v  (never told about %s)", RogueAgent, a.RogueTools, mcpPaymentTool)
	if r := a.RogueRefusal; r != nil {
		p.line("%-16s %s -> JSON-RPC error %d: %s (decision %s)", RogueAgent, mcpPaymentTool, r.Code, r.Message, r.DecisionID)
	} else {
		p.line("%-16s %s -> NOT REFUSED (DEFECT)", RogueAgent, mcpPaymentTool)
	}
}
