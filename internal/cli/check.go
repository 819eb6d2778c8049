package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/google/uuid"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/agentauthz/agentauthz/internal/checkreq"
)

type checkFlags struct {
	addr, cert, via, method, path, host, forged string
	headers                                     []string
	timeout                                     time.Duration
	tlsCA, tlsCert, tlsKey                      string
	asJSON                                      bool
}

func newCheckCmd() *cobra.Command {
	var f checkFlags
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Send one CheckRequest exactly as Envoy would and print the decision",
		Long: `Send one ext_authz CheckRequest exactly as Envoy would and print the decision.

Exit status: 0 allowed, 1 denied, 2 error.`,
		Example: `  agentauthz check --cert .agentauthz/dev/agents/payments-agent.pem --method POST --path /v1/payments
  agentauthz check --cert agent.pem --via xfcc --method GET --path /v1/payments/p-1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runCheck(cmd.Context(), cmd.OutOrStdout(), f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.addr, "addr", "127.0.0.1:9191", "agentauthz gRPC address")
	fl.StringVar(&f.cert, "cert", "", "agent certificate (PEM) to present")
	fl.StringVar(&f.via, "via", "peer", "how Envoy forwards the certificate: peer (include_peer_certificate), xfcc, spiffe (principal only) or none")
	fl.StringVar(&f.method, "method", "GET", "HTTP method")
	fl.StringVar(&f.path, "path", "/", "HTTP path and query")
	fl.StringVar(&f.host, "host", "api.example.internal", "HTTP host (:authority)")
	fl.StringArrayVar(&f.headers, "header", nil, "request header k=v (repeatable)")
	fl.StringVar(&f.forged, "forged-xfcc", "", "with --via xfcc: an earlier XFCC element a client forged")
	fl.DurationVar(&f.timeout, "timeout", 5*time.Second, "deadline for the call")
	fl.StringVar(&f.tlsCA, "tls-ca", "", "verify the server with this CA (enables TLS)")
	fl.StringVar(&f.tlsCert, "tls-cert", "", "client certificate for mTLS to the server")
	fl.StringVar(&f.tlsKey, "tls-key", "", "client key for mTLS to the server")
	fl.BoolVar(&f.asJSON, "json", false, "print the whole answer as JSON, the full receipt included")
	return cmd
}

func runCheck(ctx context.Context, out io.Writer, f checkFlags) error {
	via := checkreq.Via(f.via)
	r := checkreq.Request{
		Method: strings.ToUpper(f.method), Path: f.path, Host: f.host, Via: via,
		Headers: map[string]string{}, ForgedXFCC: f.forged, RequestID: uuid.NewString(),
	}
	for _, h := range f.headers {
		k, v, ok := strings.Cut(h, "=")
		if !ok || k == "" {
			return withHint(fmt.Errorf("--header %q is not k=v", h), "write headers as --header x-tenant=acme")
		}
		r.Headers[k] = v
	}
	if via != checkreq.ViaNone {
		if f.cert == "" {
			return withHint(errors.New("--cert is required"), "pass an agent certificate, e.g. --cert .agentauthz/dev/agents/payments-agent.pem, or --via none")
		}
		pemData, err := os.ReadFile(f.cert)
		if err != nil {
			return err
		}
		r.CertPEM = pemData
	}
	req, err := checkreq.Build(r)
	if err != nil {
		return err
	}
	creds := insecure.NewCredentials()
	if f.tlsCA != "" {
		tc, err := clientTLS(f.tlsCA, f.tlsCert, f.tlsKey)
		if err != nil {
			return err
		}
		creds = credentials.NewTLS(tc)
	}
	conn, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	resp, err := authv3.NewAuthorizationClient(conn).Check(ctx, req)
	if err != nil {
		return withHint(fmt.Errorf("check %s: %w", f.addr, err), "is `agentauthz serve` running? start it with `make run`")
	}
	allowed := resp.GetOkResponse() != nil && resp.GetStatus().GetCode() == 0
	if f.asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(checkAnswerOf(resp)); err != nil {
			return err
		}
	} else {
		printCheckResponse(out, resp)
	}
	if allowed {
		return nil
	}
	return errNo
}

// checkAnswer is check --json: the whole answer, nothing shortened.
type checkAnswer struct {
	Decision        string            `json:"decision"`
	Status          int32             `json:"status"`
	Reason          string            `json:"reason"`
	DecisionID      string            `json:"decision_id"`
	Receipt         string            `json:"receipt,omitempty"`
	UpstreamHeaders map[string]string `json:"upstream_headers,omitempty"`
	HeadersRemoved  []string          `json:"headers_removed,omitempty"`
	Body            string            `json:"body,omitempty"`
}

func checkAnswerOf(resp *authv3.CheckResponse) checkAnswer {
	meta := resp.GetDynamicMetadata().GetFields()
	a := checkAnswer{Reason: meta["reason"].GetStringValue(), DecisionID: meta["decision_id"].GetStringValue()}
	if ok := resp.GetOkResponse(); ok != nil && resp.GetStatus().GetCode() == 0 {
		a.Decision, a.Status = "allow", 200
		a.UpstreamHeaders = map[string]string{}
		for _, h := range ok.GetHeaders() {
			a.UpstreamHeaders[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
		}
		a.Receipt = a.UpstreamHeaders["x-agent-receipt"]
		a.HeadersRemoved = ok.GetHeadersToRemove()
		return a
	}
	d := resp.GetDeniedResponse()
	a.Decision, a.Status, a.Body = "deny", int32(d.GetStatus().GetCode()), d.GetBody()
	return a
}

// printCheckResponse prints the decision and reports whether it allowed.
func printCheckResponse(out io.Writer, resp *authv3.CheckResponse) bool {
	meta := resp.GetDynamicMetadata().GetFields()
	str := func(k string) string { return meta[k].GetStringValue() }
	if ok := resp.GetOkResponse(); ok != nil && resp.GetStatus().GetCode() == 0 {
		fmt.Fprintf(out, "decision:    allow\nstatus:      200\nreason:      %s\ndecision_id: %s\n", str("reason"), str("decision_id"))
		fmt.Fprintln(out, "upstream headers:")
		var lines []string
		for _, h := range ok.GetHeaders() {
			v := h.GetHeader().GetValue()
			if h.GetHeader().GetKey() == "x-agent-receipt" && len(v) > 48 {
				v = v[:48] + "…"
			}
			lines = append(lines, fmt.Sprintf("  %s: %s", h.GetHeader().GetKey(), v))
		}
		for _, h := range ok.GetHeadersToRemove() {
			lines = append(lines, fmt.Sprintf("  %s: (removed)", h))
		}
		sort.Strings(lines)
		fmt.Fprintln(out, strings.Join(lines, "\n"))
		return true
	}
	d := resp.GetDeniedResponse()
	fmt.Fprintf(out, "decision:    deny\nstatus:      %d\nreason:      %s\ndecision_id: %s\nbody:        %s\n",
		d.GetStatus().GetCode(), str("reason"), str("decision_id"), d.GetBody())
	return false
}

func clientTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	pemData, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemData) {
		return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
	}
	tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if certFile != "" || keyFile != "" {
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, err
		}
		tc.Certificates = []tls.Certificate{c}
	}
	return tc, nil
}
