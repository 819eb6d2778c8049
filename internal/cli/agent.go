package cli

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/control"
)

func newAgentCmd() *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Issue, renew, reissue, revoke, restrict and list agent certificates",
	}
	cmd.PersistentFlags().StringVar(&dataDir, "data-dir", caEnvDataDir(), "data directory (env AGENTAUTHZ_DATA_DIR)")
	cmd.AddCommand(
		newAgentIssueCmd(&dataDir),
		newAgentRenewCmd(&dataDir),
		newAgentReissueCmd(&dataDir),
		newAgentRevokeCmd(&dataDir),
		newAgentRestrictCmd(&dataDir),
		newAgentLiftCmd(&dataDir),
		newAgentListCmd(&dataDir),
		newAgentShowCmd(&dataDir),
	)
	return cmd
}

// agentOutput is where issued certificates and keys go.
type agentOutput struct {
	outDir  string
	keyType string
	csr     string
}

func (o *agentOutput) flags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.outDir, "out-dir", ".", "directory for <agent-id>.pem and <agent-id>.key")
	f.StringVar(&o.keyType, "key-type", "", "generated key: ecdsa-p256 (default) or ed25519")
	f.StringVar(&o.csr, "csr", "", "sign this PKCS#10 request instead of generating a key (the key stays with the agent)")
}

func (o *agentOutput) load() (ca.KeyType, []byte, error) {
	if o.csr != "" && o.keyType != "" {
		return "", nil, withHint(errors.New("--csr and --key-type exclude each other"), "the key type of a CSR is its own")
	}
	var kt ca.KeyType
	if o.keyType != "" {
		var err error
		if kt, err = ca.ParseKeyType(o.keyType); err != nil {
			return "", nil, caError(err, "")
		}
	}
	if o.csr == "" {
		return kt, nil, nil
	}
	b, err := caReadSmallFile(o.csr)
	if err != nil {
		return "", nil, withHint(fmt.Errorf("read csr: %w", err), "--csr takes a PEM or DER PKCS#10 file")
	}
	if _, err := ca.ParseCSR(b); err != nil { // before the store is touched
		return "", nil, caError(err, "")
	}
	return kt, b, nil
}

// write hands out an issued certificate. The inventory record is already
// committed; if the files cannot be written the certificate is revoked so a
// certificate nobody received never stays valid.
func (o *agentOutput) write(cmd *cobra.Command, a *ca.Authority, iss *ca.Issued, operator string) error {
	r := iss.Record
	certPath := filepath.Join(o.outDir, r.AgentID+".pem")
	keyPath := filepath.Join(o.outDir, r.AgentID+".key")
	err := os.MkdirAll(o.outDir, 0o750)
	if err == nil && iss.KeyPEM != nil {
		err = caWriteFile(keyPath, iss.KeyPEM, 0o600)
	}
	if err == nil {
		err = caWriteFile(certPath, iss.CertPEM, 0o644)
	}
	if err != nil {
		rerr := a.RevokeSerial(r.TrustDomain, r.Serial, ca.ReasonCessationOfOperation, operator)
		if rerr != nil {
			return fmt.Errorf("write certificate: %w (and revoking the undelivered serial %s failed: %v)", err, r.Serial, rerr)
		}
		return withHint(fmt.Errorf("write certificate: %w", err),
			"the undelivered certificate %s was revoked; fix --out-dir, then agentauthz agent renew %s --trust-domain %s",
			r.Serial, r.AgentID, r.TrustDomain)
	}
	w := cmd.OutOrStdout()
	fmt.Fprintf(w, "%s: trust %s, scopes %s\n", r.SPIFFEID, r.Trust, strings.Join(r.Scopes, " "))
	fmt.Fprintf(w, "serial:      %s\n", r.Serial)
	fmt.Fprintf(w, "not after:   %s\n", r.NotAfter.UTC().Format(time.RFC3339))
	fmt.Fprintf(w, "certificate: %s\n", certPath)
	if iss.KeyPEM != nil {
		fmt.Fprintf(w, "key:         %s (0600)\n", keyPath)
	}
	return nil
}

// attrFlags are the attributes locked into a certificate.
type attrFlags struct {
	td, trust, owner, operator string
	scopes                     []string
	ttl                        time.Duration
}

func (f *attrFlags) register(cmd *cobra.Command, withAttrs bool) {
	fl := cmd.Flags()
	fl.StringVar(&f.td, "trust-domain", "", "trust domain (default: the only one, or the agent's)")
	fl.StringVar(&f.operator, "operator", caDefaultOperator(), "who runs this, for the inventory (env AGENTAUTHZ_OPERATOR)")
	if withAttrs {
		fl.StringVar(&f.trust, "trust", "", "trust level L0..L4")
		fl.StringArrayVar(&f.scopes, "scope", nil, "scope <resource>:<action> (repeatable)")
		fl.StringVar(&f.owner, "owner", "", "accountable human or team, e.g. alice@acme.example")
		fl.DurationVar(&f.ttl, "ttl", 24*time.Hour, "certificate lifetime (at most the CA's max ttl)")
	} else {
		fl.DurationVar(&f.ttl, "ttl", 0, "certificate lifetime (default: the agent's recorded one)")
	}
}

// request validates the attribute flags before anything is opened, so bad
// input changes nothing.
func (f *attrFlags) request(agentID string) (ca.IssueRequest, error) {
	req := ca.IssueRequest{AgentID: agentID, Owner: f.owner, TTL: f.ttl, Operator: f.operator}
	if err := ca.ValidateAgentID(agentID); err != nil {
		return req, caError(err, "")
	}
	if f.trust == "" {
		return req, withHint(errors.New("--trust is required"), "use --trust L0, L1, L2, L3 or L4")
	}
	t, err := ca.ParseTrust(f.trust)
	if err != nil {
		return req, caError(err, "")
	}
	req.Trust = t
	if req.Scopes, err = ca.NormalizeScopes(f.scopes); err != nil {
		return req, caError(err, "")
	}
	if err := ca.ValidateOwner(f.owner); err != nil {
		return req, caError(err, "")
	}
	return req, nil
}

func caOpenInventory(dataDir string) (*ca.Authority, error) {
	a, err := caOpen(dataDir, ca.MustExist())
	if err != nil {
		return nil, caError(err, dataDir)
	}
	return a, nil
}

func newAgentIssueCmd(dataDir *string) *cobra.Command {
	return newAgentIssuingCmd(dataDir, false, &cobra.Command{
		Use:   "issue AGENT_ID --trust L<n> --scope <resource>:<action>... [--owner O] [--ttl D]",
		Short: "Issue the first native-profile certificate of a new agent",
	})
}

func newAgentReissueCmd(dataDir *string) *cobra.Command {
	return newAgentIssuingCmd(dataDir, true, &cobra.Command{
		Use:   "reissue AGENT_ID --trust L<n> --scope <resource>:<action>...",
		Short: "Issue a certificate with new attributes and revoke the agent's active ones (reason superseded)",
	})
}

// newAgentIssuingCmd completes issue (a new agent) and reissue (new
// attributes for an existing agent, its active certificates superseded).
func newAgentIssuingCmd(dataDir *string, reissue bool, cmd *cobra.Command) *cobra.Command {
	var af attrFlags
	var out agentOutput
	cmd.Args = caExactArgs(1, "AGENT_ID")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		req, err := af.request(args[0])
		if err != nil {
			return err
		}
		if req.KeyType, req.CSR, err = out.load(); err != nil {
			return err
		}
		a, err := caOpenInventory(*dataDir)
		if err != nil {
			return err
		}
		defer a.Close()
		existing := ""
		if reissue {
			existing = req.AgentID // resolve the trust domain from the agent it names
		}
		if req.TrustDomain, err = caResolveTrustDomain(a, af.td, existing); err != nil {
			return caError(err, *dataDir)
		}
		issue := a.Issue
		if reissue {
			issue = a.Reissue
			if !cmd.Flags().Changed("owner") { // the owner carries over unless changed
				d, err := a.Show(req.TrustDomain, req.AgentID)
				if err != nil {
					return caError(err, *dataDir)
				}
				req.Owner = d.Agent.Owner
			}
		}
		iss, err := issue(req)
		if err != nil {
			return caError(err, *dataDir)
		}
		return out.write(cmd, a, iss, af.operator)
	}
	af.register(cmd, true)
	out.flags(cmd)
	return cmd
}

func newAgentRenewCmd(dataDir *string) *cobra.Command {
	var af attrFlags
	var out agentOutput
	cmd := &cobra.Command{
		Use:   "renew AGENT_ID",
		Short: "Issue a new certificate with the agent's recorded attributes (lifts an agent revocation)",
		Args:  caExactArgs(1, "AGENT_ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := ca.ValidateAgentID(args[0]); err != nil {
				return caError(err, *dataDir)
			}
			req := ca.RenewRequest{AgentID: args[0], TTL: af.ttl, Operator: af.operator}
			var err error
			if req.KeyType, req.CSR, err = out.load(); err != nil {
				return err
			}
			a, err := caOpenInventory(*dataDir)
			if err != nil {
				return err
			}
			defer a.Close()
			if req.TrustDomain, err = caResolveTrustDomain(a, af.td, req.AgentID); err != nil {
				return caError(err, *dataDir)
			}
			iss, err := a.Renew(req)
			if err != nil {
				return caError(err, *dataDir)
			}
			return out.write(cmd, a, iss, af.operator)
		},
	}
	af.register(cmd, false)
	out.flags(cmd)
	return cmd
}

func newAgentRevokeCmd(dataDir *string) *cobra.Command {
	var td, serial, reasonName, operator string
	var srv serverFlags
	cmd := &cobra.Command{
		Use:   "revoke AGENT_ID | --serial S [--reason R]",
		Short: "Revoke every active certificate of an agent (and the agent id), or one certificate by serial",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (len(args) == 1) == (serial != "") {
				return withHint(errors.New("give either an agent id or --serial"),
					"agentauthz agent revoke payments-bot --reason keyCompromise, or agentauthz agent revoke --serial 3f2a… --reason superseded")
			}
			reason, err := ca.ParseReason(reasonName)
			if err != nil {
				return caError(err, *dataDir)
			}
			if serial != "" {
				if serial, err = ca.ParseSerial(serial); err != nil {
					return caError(err, *dataDir)
				}
			} else if err := ca.ValidateAgentID(args[0]); err != nil {
				return caError(err, *dataDir)
			}
			if srv.server != "" {
				if serial != "" || td == "" {
					return withHint(errors.New("--server revokes an agent by id and needs --trust-domain"),
						"agentauthz agent revoke payments-bot --trust-domain acme.example --reason keyCompromise --server …")
				}
				var res struct {
					Serials []string `json:"serials"`
				}
				if err := srv.call(cmd.Context(), *dataDir, http.MethodPost, agentPath(td, args[0], "revoke"), control.RevokeBody{Reason: reason.String()}, &res); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "revoked agent %s (%s): %d certificate(s)\n", ca.SPIFFEID(td, args[0]), reason, len(res.Serials))
				return nil
			}
			a, err := caOpenInventory(*dataDir)
			if err != nil {
				return err
			}
			defer a.Close()
			w := cmd.OutOrStdout()
			if serial != "" {
				if td == "" {
					tds, err := a.FindSerial(serial)
					if err != nil {
						return caError(err, *dataDir)
					}
					switch len(tds) {
					case 0:
						return caError(fmt.Errorf("%w: no certificate with serial %s", ca.ErrNotFound, serial), *dataDir)
					case 1:
						td = tds[0]
					default:
						return withHint(fmt.Errorf("serial %s exists in several trust domains", serial), "pass --trust-domain (one of %s)", strings.Join(tds, ", "))
					}
				}
				if err := a.RevokeSerial(td, serial, reason, operator); err != nil {
					return caError(err, *dataDir)
				}
				fmt.Fprintf(w, "revoked certificate %s in %s (%s)\n", serial, td, reason)
				return nil
			}
			if td, err = caResolveTrustDomain(a, td, args[0]); err != nil {
				return caError(err, *dataDir)
			}
			serials, err := a.Revoke(td, args[0], reason, operator)
			if err != nil {
				return caError(err, *dataDir)
			}
			fmt.Fprintf(w, "revoked agent %s (%s): %d certificate(s)\n", ca.SPIFFEID(td, args[0]), reason, len(serials))
			for _, s := range serials {
				fmt.Fprintf(w, "  %s\n", s)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&td, "trust-domain", "", "trust domain (default: the agent's or serial's)")
	f.StringVar(&serial, "serial", "", "revoke only this certificate (hex serial)")
	f.StringVar(&reasonName, "reason", "unspecified", "RFC 5280 reason: "+strings.Join(ca.ReasonNames(), ", "))
	f.StringVar(&operator, "operator", caDefaultOperator(), "who runs this, for the inventory (env AGENTAUTHZ_OPERATOR)")
	srv.add(cmd)
	return cmd
}

func newAgentListCmd(dataDir *string) *cobra.Command {
	var td string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List every certificate in the inventory with its status",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := caOpenInventory(*dataDir)
			if err != nil {
				return err
			}
			defer a.Close()
			certs, err := a.List(ca.ListFilter{TrustDomain: td})
			if err != nil {
				return caError(err, *dataDir)
			}
			if asJSON {
				if certs == nil {
					certs = []ca.Certificate{}
				}
				return caWriteJSON(cmd, certs)
			}
			caPrintCerts(cmd.OutOrStdout(), certs)
			return nil
		},
	}
	cmd.Flags().StringVar(&td, "trust-domain", "", "only this trust domain")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func caPrintCerts(w io.Writer, certs []ca.Certificate) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TRUST DOMAIN\tAGENT\tSERIAL\tTRUST\tSCOPES\tOWNER\tNOT AFTER\tSTATUS")
	for _, c := range certs {
		status := c.Status
		if c.RevocationReason != "" {
			status += " (" + c.RevocationReason + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.TrustDomain, c.AgentID, c.Serial, c.Trust,
			strings.Join(c.Scopes, ","), caDash(c.Owner), c.NotAfter.UTC().Format(time.RFC3339), status)
	}
	tw.Flush()
}

func newAgentShowCmd(dataDir *string) *cobra.Command {
	var td string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show AGENT_ID",
		Short: "Show an agent, its certificates and its lifecycle events",
		Args:  caExactArgs(1, "AGENT_ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := ca.ValidateAgentID(args[0]); err != nil {
				return caError(err, *dataDir)
			}
			a, err := caOpenInventory(*dataDir)
			if err != nil {
				return err
			}
			defer a.Close()
			if td, err = caResolveTrustDomain(a, td, args[0]); err != nil {
				return caError(err, *dataDir)
			}
			d, err := a.Show(td, args[0])
			if err != nil {
				return caError(err, *dataDir)
			}
			if asJSON {
				return caWriteJSON(cmd, d)
			}
			w := cmd.OutOrStdout()
			ag := d.Agent
			fmt.Fprintf(w, "agent:     %s\nspiffe id: %s\ntrust:     %s\nscopes:    %s\nowner:     %s\nstatus:    %s\n",
				ag.ID, ag.SPIFFEID, ag.TrustLabel, strings.Join(ag.Scopes, " "), caDash(ag.Owner), ag.Status)
			if ag.RevokedAt != nil {
				fmt.Fprintf(w, "revoked:   %s (%s)\n", ag.RevokedAt.UTC().Format(time.RFC3339), ag.RevocationReason)
			}
			if r := d.Restriction; r != nil {
				fmt.Fprintf(w, "restricted: %s (by %s: %s)\n", describeRestriction(r), r.Operator, r.Reason)
			}
			fmt.Fprintln(w, "\ncertificates:")
			caPrintCerts(w, d.Certificates)
			fmt.Fprintln(w, "\nevents:")
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SEQ\tTIME\tEVENT\tSERIAL\tOPERATOR\tDETAIL")
			for _, e := range d.Events {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", e.Seq, e.At.UTC().Format(time.RFC3339), e.Event, caDash(e.Serial), e.Operator, e.Detail)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&td, "trust-domain", "", "trust domain (default: the agent's)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// exactArgs is cobra.ExactArgs with a usage hint.
func caExactArgs(n int, name string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return withHint(fmt.Errorf("%s takes exactly %d argument (%s), got %d", cmd.CommandPath(), n, name, len(args)),
				"usage: %s", cmd.UseLine())
		}
		return nil
	}
}
