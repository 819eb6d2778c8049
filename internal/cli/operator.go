package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/agentauthz/agentauthz/internal/console"
	"github.com/agentauthz/agentauthz/internal/control"
)

func newOperatorCmd() *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   "operator",
		Short: "Issue control-plane certificates to operators and replicas",
		Long: `The control plane ("agentauthz control serve") serves its API only over mutual TLS to
certificates of its operator CA (<data-dir>/operator/, created on first use). Each certificate
carries one role: auditor (reads), responder (restricts and revokes), admin (everything),
replica (watches and ships its records only), or policy (reads the recorded decisions and records
policy simulation runs, for a CI pipeline).`,
	}
	cmd.PersistentFlags().StringVar(&dataDir, "data-dir", caEnvDataDir(), "control plane data directory (env AGENTAUTHZ_DATA_DIR)")
	cmd.AddCommand(newOperatorIssueCmd(&dataDir), newOperatorLoginLinkCmd(&dataDir))
	return cmd
}

func newOperatorIssueCmd(dataDir *string) *cobra.Command {
	var role, outDir, operator string
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "issue NAME --role admin|responder|auditor|replica|policy",
		Short: "Issue a client certificate for the control plane",
		Args:  caExactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := control.ParseRole(role)
			if err != nil {
				return withHint(err, "--role admin, responder, auditor, replica or policy")
			}
			if err := control.ValidateName(args[0]); err != nil {
				return withHint(err, "a lowercase name such as alice or replica-1")
			}
			a, err := caOpenInventory(*dataDir)
			if err != nil {
				return err
			}
			defer a.Close()
			op, err := control.OpenOperatorCA(*dataDir, true)
			if err != nil {
				return err
			}
			is, err := op.Issue(args[0], r, ttl)
			if err != nil {
				return withHint(err, "--ttl is at most %v", control.MaxOperatorTTL)
			}
			certPath, keyPath, err := control.WriteIssued(outDir, args[0], is)
			if err != nil {
				return withHint(fmt.Errorf("write certificate: %w", err), "an existing %s.pem or %s.key in --out-dir is never overwritten", args[0], args[0])
			}
			detail := fmt.Sprintf("name=%s role=%s not_after=%s", args[0], r, is.NotAfter.UTC().Format(time.RFC3339))
			if err := a.RecordEvent("", "", is.Serial, "operator_issue", operator, detail); err != nil {
				return caError(err, *dataDir)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "issued %s certificate for %s (until %s)\n  certificate: %s\n  key:         %s\n  control plane CA: %s\n",
				r, args[0], is.NotAfter.UTC().Format(time.RFC3339), certPath, keyPath, control.OperatorCAPath(*dataDir))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&role, "role", "", "admin, responder, auditor, replica or policy (required)")
	f.DurationVar(&ttl, "ttl", control.DefaultOperatorTTL, "validity")
	f.StringVar(&outDir, "out-dir", ".", "directory for NAME.pem and NAME.key")
	f.StringVar(&operator, "operator", caDefaultOperator(), "who runs this, for the change log (env AGENTAUTHZ_OPERATOR)")
	return cmd
}

// newOperatorLoginLinkCmd is `operator login-link`: a one-time link that
// signs a browser in to the console as NAME with a role.
func newOperatorLoginLinkCmd(dataDir *string) *cobra.Command {
	var role, server, operator string
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "login-link NAME --role auditor|responder|admin",
		Short: "Print a one-time link that signs a browser in to the console",
		Long: `Print a link to the control plane's console (/ui/) that signs one browser in as NAME with
the role. It works once, within --ttl, and the session lasts 8 hours. The link is stored, hashed,
in the control plane's inventory: <data-dir>/inventory.db, or the PostgreSQL database AGENTAUTHZ_STORE
names (as for the ca commands), where every control-plane instance on that store claims it. The link is a secret:
send it only to NAME. Each link and each sign-in is recorded in the change log.`,
		Args: caExactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := control.ParseRole(role)
			if err != nil || r == control.RoleReplica || r == control.RolePolicy {
				return withHint(fmt.Errorf("--role %q: a person signs in as auditor, responder or admin", role), "--role auditor, responder or admin")
			}
			if err := control.ValidateName(args[0]); err != nil {
				return withHint(err, "a lowercase name such as alice")
			}
			u, err := url.Parse(server)
			if err != nil || u.Scheme != "https" || u.Host == "" {
				return withHint(fmt.Errorf("--server %q is not an https:// URL", server), "the console needs the control plane's TLS address, e.g. https://127.0.0.1:9193")
			}
			a, err := caOpenInventory(*dataDir)
			if err != nil {
				return err
			}
			defer a.Close()
			tok, err := console.CreateLink(a, args[0], r, ttl, time.Now())
			if err != nil {
				return withHint(err, "--ttl is at most %v", console.MaxLinkTTL)
			}
			detail := fmt.Sprintf("name=%s role=%s valid=%s", args[0], r, ttl)
			if err := a.RecordEvent("", "", "", "console_link", operator, detail); err != nil {
				return caError(err, *dataDir)
			}
			u.Path, u.RawQuery = "/ui/login", url.Values{"token": {tok}}.Encode()
			fmt.Fprintf(cmd.OutOrStdout(), "%s\n", u)
			fmt.Fprintf(cmd.ErrOrStderr(), "one-time sign-in link for %s (%s), valid %s; open it in a browser\n", args[0], r, ttl)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&role, "role", "", "auditor, responder or admin (required)")
	f.DurationVar(&ttl, "ttl", console.DefaultLinkTTL, "how long the link stays valid (at most 1h)")
	defServer := os.Getenv("AGENTAUTHZ_SERVER")
	if defServer == "" {
		defServer = "https://127.0.0.1:9193"
	}
	f.StringVar(&server, "server", defServer, "the control plane's URL as the browser reaches it (env AGENTAUTHZ_SERVER)")
	f.StringVar(&operator, "operator", caDefaultOperator(), "who runs this, for the change log (env AGENTAUTHZ_OPERATOR)")
	return cmd
}

// serverFlags select the control plane a command talks to instead of a
// local data directory.
type serverFlags struct {
	server, cert, key, serverCA string
	hc                          *http.Client // made on first call, then reused (one TLS session for many pages)
}

func (s *serverFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&s.server, "server", os.Getenv("AGENTAUTHZ_SERVER"), "control plane URL (https://host:9193; env AGENTAUTHZ_SERVER); without it the command works on local files (--data-dir, --log)")
	f.StringVar(&s.cert, "cert", os.Getenv("AGENTAUTHZ_CERT"), "operator certificate for --server (env AGENTAUTHZ_CERT)")
	f.StringVar(&s.key, "key", os.Getenv("AGENTAUTHZ_KEY"), "key of --cert (env AGENTAUTHZ_KEY)")
	f.StringVar(&s.serverCA, "server-ca", os.Getenv("AGENTAUTHZ_SERVER_CA"), "operator CA that verifies --server (default <data-dir>/operator/ca.pem)")
}

// client returns an mTLS client for the control plane.
func (s *serverFlags) client(dataDir string) (*http.Client, error) {
	if s.cert == "" || s.key == "" {
		return nil, withHint(errors.New("--server needs --cert and --key"), "an operator certificate: agentauthz operator issue NAME --role responder")
	}
	cert, err := tls.LoadX509KeyPair(s.cert, s.key)
	if err != nil {
		return nil, withHint(fmt.Errorf("operator certificate: %w", err), "--cert and --key are the files operator issue wrote")
	}
	caFile := s.serverCA
	if caFile == "" {
		caFile = control.OperatorCAPath(dataDir)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, withHint(fmt.Errorf("control plane CA: %w", err), "pass --server-ca, the control plane's <data-dir>/operator/ca.pem")
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("control plane CA: %s holds no PEM certificate", caFile)
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13},
	}}, nil
}

// closeIdle closes the kept-alive connections to the control plane, so that
// none outlives the command.
func (s *serverFlags) closeIdle() {
	if s.hc != nil {
		s.hc.CloseIdleConnections()
	}
}

// call sends a JSON request to the control plane and decodes the answer
// into out; a refusal becomes an error with the server's message.
func (s *serverFlags) call(ctx context.Context, dataDir, method, path string, body, out any) error {
	if s.hc == nil {
		c, err := s.client(dataDir)
		if err != nil {
			return err
		}
		s.hc = c
	}
	c := s.hc
	p, query, _ := strings.Cut(path, "?")
	u, err := url.JoinPath(s.server, p)
	if query != "" {
		u += "?" + query
	}
	if err != nil {
		return withHint(fmt.Errorf("--server %q: %w", s.server, err), "e.g. --server https://127.0.0.1:9193")
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return withHint(fmt.Errorf("control plane: %w", err), "is agentauthz control serve running at %s, and is --server-ca its operator CA?", s.server)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("control plane: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error, Reason string }
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return withHint(fmt.Errorf("control plane refused (%s): %s", e.Reason, e.Error), "%s", refusalHint(e.Reason))
		}
		return fmt.Errorf("control plane: %s", resp.Status)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(data, out)
}

func refusalHint(reason string) string {
	switch reason {
	case control.AuthExpired:
		return "ask an admin for a new certificate: agentauthz operator issue NAME --role ROLE"
	case control.AuthWrongRole:
		return "this needs another role; see agentauthz operator --help"
	case control.AuthUnknownCA, control.AuthNoCertificate:
		return "use a certificate from this control plane's operator CA"
	case control.RefusedUnknownAgent:
		return "see what exists with agentauthz agent list"
	}
	return "nothing was changed"
}
