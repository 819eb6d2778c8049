package cli

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/control"
)

// newAgentRestrictCmd is `agent restrict`: a fleet-wide restriction stored
// in the control plane's inventory and pushed, signed, to every replica.
func newAgentRestrictCmd(dataDir *string) *cobra.Command {
	var (
		td, maxTrust, until, reason, operator string
		quarantine                            bool
		removeScopes                          []string
		srv                                   serverFlags
	)
	cmd := &cobra.Command{
		Use:   "restrict AGENT_ID --reason TEXT [--quarantine] [--max-trust Ln] [--remove-scope S]... [--until 2h|RFC3339]",
		Short: "Quarantine an agent, lower its trust level or take scopes away, on every replica",
		Long: `Restrict one agent without touching its certificate or any other agent. The restriction
replaces the agent's previous one, is stored in the inventory of --data-dir, and "agentauthz
control serve" pushes it (signed by the trust domain's CA) to every replica, where policy sees
it as data.agentauthz.restrictions. A restriction can only take away: --max-trust above the
certificate's level, or a scope the agent does not hold, is refused. Lift it with
"agentauthz agent lift".`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := ca.RestrictRequest{AgentID: args[0], Quarantine: quarantine, RemoveScopes: removeScopes, Reason: reason, Operator: operator}
			if maxTrust != "" {
				n, err := ca.ParseTrust(maxTrust)
				if err != nil {
					return caError(err, *dataDir)
				}
				req.MaxTrust = &n
			}
			if until != "" {
				u, err := ca.ParseUntil(until, time.Now())
				if err != nil {
					return withHint(err, "--until takes a duration (30m, 2h) or an RFC 3339 time in the future")
				}
				req.Until = &u
			}
			if strings.TrimSpace(reason) == "" {
				return withHint(fmt.Errorf("--reason is required"), `say why, for the change log: --reason "ticket INC-42: suspected key leak"`)
			}
			if err := ca.ValidateAgentID(args[0]); err != nil {
				return caError(err, *dataDir)
			}
			var r *ca.Restriction
			if srv.server != "" {
				if td == "" {
					return withHint(errors.New("--server needs --trust-domain"), "name the agent's trust domain, e.g. --trust-domain acme.example")
				}
				body := control.RestrictBody{Quarantine: quarantine, MaxTrust: req.MaxTrust, RemoveScopes: removeScopes, Reason: reason}
				if req.Until != nil {
					body.Until = req.Until.UTC().Format(time.RFC3339)
				}
				r = &ca.Restriction{}
				if err := srv.call(cmd.Context(), *dataDir, http.MethodPost, agentPath(td, args[0], "restrict"), body, r); err != nil {
					return err
				}
			} else {
				a, err := caOpenInventory(*dataDir)
				if err != nil {
					return err
				}
				defer a.Close()
				if req.TrustDomain, err = caResolveTrustDomain(a, td, args[0]); err != nil {
					return caError(err, *dataDir)
				}
				if r, err = a.Restrict(req); err != nil {
					return caError(err, *dataDir)
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "restricted agent %s: %s\n", ca.SPIFFEID(r.TrustDomain, r.AgentID), describeRestriction(r))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&td, "trust-domain", "", "trust domain (default: the agent's)")
	f.BoolVar(&quarantine, "quarantine", false, "deny everything the agent asks for (agent_quarantined)")
	f.StringVar(&maxTrust, "max-trust", "", "lower the effective trust level to L0..L4 (never above the certificate's)")
	f.StringArrayVar(&removeScopes, "remove-scope", nil, "take a scope away (repeatable)")
	f.StringVar(&until, "until", "", "end the restriction after a duration (2h) or at an RFC 3339 time; default: until lifted")
	f.StringVar(&reason, "reason", "", "why, for the change log (required)")
	f.StringVar(&operator, "operator", caDefaultOperator(), "who runs this, for the change log (env AGENTAUTHZ_OPERATOR)")
	srv.add(cmd)
	return cmd
}

// agentPath is the API path of an agent, escaped.
func agentPath(td, id, action string) string {
	p := "/v1/agents/" + url.PathEscape(td) + "/" + url.PathEscape(id)
	if action != "" {
		p += "/" + action
	}
	return p
}

func newAgentLiftCmd(dataDir *string) *cobra.Command {
	var td, reason, operator string
	var srv serverFlags
	cmd := &cobra.Command{
		Use:   "lift AGENT_ID --reason TEXT",
		Short: "Remove an agent's restriction on every replica",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if strings.TrimSpace(reason) == "" {
				return withHint(fmt.Errorf("--reason is required"), `say why, for the change log: --reason "INC-42 closed"`)
			}
			if err := ca.ValidateAgentID(args[0]); err != nil {
				return caError(err, *dataDir)
			}
			if srv.server != "" {
				if td == "" {
					return withHint(errors.New("--server needs --trust-domain"), "name the agent's trust domain, e.g. --trust-domain acme.example")
				}
				if err := srv.call(cmd.Context(), *dataDir, http.MethodPost, agentPath(td, args[0], "lift"), control.ReasonBody{Reason: reason}, nil); err != nil {
					return err
				}
			} else {
				a, err := caOpenInventory(*dataDir)
				if err != nil {
					return err
				}
				defer a.Close()
				if td, err = caResolveTrustDomain(a, td, args[0]); err != nil {
					return caError(err, *dataDir)
				}
				if err := a.Lift(td, args[0], reason, operator); err != nil {
					return caError(err, *dataDir)
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "lifted the restriction of agent %s\n", ca.SPIFFEID(td, args[0]))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&td, "trust-domain", "", "trust domain (default: the agent's)")
	f.StringVar(&reason, "reason", "", "why, for the change log (required)")
	f.StringVar(&operator, "operator", caDefaultOperator(), "who runs this, for the change log (env AGENTAUTHZ_OPERATOR)")
	srv.add(cmd)
	return cmd
}

func describeRestriction(r *ca.Restriction) string {
	var parts []string
	if r.Quarantined {
		parts = append(parts, "quarantined")
	}
	if r.MaxTrust != nil {
		parts = append(parts, "max trust "+ca.TrustLabel(*r.MaxTrust))
	}
	if len(r.RemovedScopes) > 0 {
		parts = append(parts, "scopes removed: "+strings.Join(r.RemovedScopes, ", "))
	}
	if r.Until != nil {
		parts = append(parts, "until "+r.Until.UTC().Format(time.RFC3339))
	} else {
		parts = append(parts, "until lifted")
	}
	return strings.Join(parts, "; ")
}
