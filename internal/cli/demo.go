package cli

import (
	"encoding/json"
	"errors"
	"io"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/demo"
)

// newDemoCmd is `agentauthz demo`: a thin wrapper over demo.Run.
func newDemoCmd() *cobra.Command {
	var (
		opts    demo.Options
		asJSON  bool
		verbose bool
	)
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Play the whole story on loopback: agents, decisions, a revocation, the audit",
		Long: `Create a CA for Acme Payments and five agents (one rogue), start two decision
replicas on loopback with the shipped policies and a revocation push channel,
send requests exactly as Envoy would (peer certificate and XFCC) over gRPC,
revoke the rogue agent and time how fast every replica refuses it, verify the
decision logs, and answer an auditor's four questions from them.

Needs nothing running and no setup; takes a few seconds. Run it from the
repository root (or pass --policies). Exit status 0 means every decision and
answer was the expected one.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if verbose {
				opts.Logger = hclog.New(&hclog.LoggerOptions{Name: "demo", Output: cmd.ErrOrStderr(), Level: hclog.Info})
			}
			text := cmd.OutOrStdout()
			if asJSON {
				text = io.Discard
			}
			out, err := demo.Run(cmd.Context(), text, opts)
			if asJSON && out != nil {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if jerr := enc.Encode(out); jerr != nil && err == nil {
					err = jerr
				}
			}
			switch {
			case errors.Is(err, demo.ErrNoPolicies):
				return withHint(err, "run the demo from the repository root, or pass --policies DIR")
			case errors.Is(err, demo.ErrUnexpected):
				return err
			case errors.Is(err, demo.ErrDataDirInUse):
				return withHint(err, "the demo needs an empty --data-dir; omit it to use a temporary one")
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.DataDir, "data-dir", "", "keep everything (CA, agent certificates, logs) in this empty directory; default a temporary one")
	f.BoolVar(&opts.Keep, "keep", false, "keep the temporary data directory")
	f.StringVar(&opts.PoliciesDir, "policies", config.DefaultPoliciesDir, "directory of the shipped policies")
	f.IntVar(&opts.Replicas, "replicas", demo.DefaultReplicas, "number of decision replicas (1-8)")
	f.BoolVar(&asJSON, "json", false, "print the outcome as JSON instead of the story")
	f.BoolVar(&verbose, "verbose", false, "show the services' logs on stderr")
	return cmd
}
