package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/agentauthz/agentauthz/internal/demo"
	"github.com/agentauthz/agentauthz/policies"
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

Needs nothing running and no setup, from any directory: the shipped policies
are built in (--policies DIR plays it with others). Takes a few seconds. Exit
status 0 means every decision and answer was the expected one.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if verbose {
				opts.Logger = hclog.New(&hclog.LoggerOptions{Name: "demo", Output: cmd.ErrOrStderr(), Level: hclog.Info})
			}
			if opts.PoliciesDir == "" {
				dir, err := os.MkdirTemp("", "agentauthz-policies-")
				if err != nil {
					return fmt.Errorf("built-in policies: %w", err)
				}
				defer os.RemoveAll(dir)
				if err := policies.WriteTo(dir); err != nil {
					return err
				}
				opts.PoliciesDir = dir
				fmt.Fprintf(cmd.ErrOrStderr(), "agentauthz: policies: %s\n", policies.Embedded)
			} else {
				fmt.Fprintf(cmd.ErrOrStderr(), "agentauthz: policies: %s\n", opts.PoliciesDir)
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
				return withHint(err, "pass --policies a directory of .rego files, or leave it out to play the built-in policies")
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
	f.StringVar(&opts.PoliciesDir, "policies", "", "directory of .rego and data files to play the story with (default: the built-in shipped policies)")
	f.IntVar(&opts.Replicas, "replicas", demo.DefaultReplicas, "number of decision replicas (1-8)")
	f.BoolVar(&asJSON, "json", false, "print the outcome as JSON instead of the story")
	f.BoolVar(&verbose, "verbose", false, "show the services' logs on stderr")
	return cmd
}
