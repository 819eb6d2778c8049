package cli

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/policy"
	"github.com/agentauthz/agentauthz/internal/simulate"
)

func newPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Work with policies: replay a proposed policy against recorded decisions",
	}
	cmd.AddCommand(newPolicySimulateCmd())
	return cmd
}

func newPolicySimulateCmd() *cobra.Command {
	var (
		logDir, dir, bundle, bundleKey, path, format, from, to string
		accept                                                 bool
	)
	cmd := &cobra.Command{
		Use:   "simulate",
		Short: "Replay recorded decisions under a proposed policy and report what would change",
		Long: `simulate decides every recorded request of the log again under the proposed policy (--policies
DIR or --bundle FILE, with the route table and restrictions in its data), with the identity and the time
the original decision had, through the same decision path serve uses. It reports the decisions that would
change — newly allowed, newly denied, otherwise changed — grouped by agent and operation with example
decision ids, the agents that would gain or lose an operation, and every record it could not replay and why.

Decisions that identity or revocation refused never reached the policy and are reported as not replayed.
When the proposed policy reads something records do not keep (a header, the query string, the body), the
report says so: a change may then be due to what the record lacks.

Exit status: 0 when nothing that was denied would be allowed, 1 when something would be (a CI gate; pass
--accept-newly-allowed to accept it), 2 on error. Records are read without checking signatures; run
agentauthz audit verify on the same log for that.`,
		Example: `  agentauthz policy simulate --log .agentauthz/log --policies ./policies --format markdown
  agentauthz policy simulate --log exported/log --bundle proposed.tar.gz --from 2026-12-01T00:00:00Z --to 24h`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (dir == "") == (bundle == "") {
				return withHint(errors.New("give exactly one of --policies and --bundle"), "the proposed policy: a directory of .rego and data files, or an OPA bundle")
			}
			switch format {
			case "text", "markdown", "json":
			default:
				return fmt.Errorf("--format %q: want text, markdown or json", format)
			}
			now := time.Now()
			fromT, err := parseWhen(from, now)
			if err != nil {
				return fmt.Errorf("--from: %w", err)
			}
			toT, err := parseWhen(to, now)
			if err != nil {
				return fmt.Errorf("--to: %w", err)
			}
			if !fromT.IsZero() && !toT.IsZero() && toT.Before(fromT) {
				return fmt.Errorf("--to %s is before --from %s", toT.Format(time.RFC3339), fromT.Format(time.RFC3339))
			}
			if err := checkLogDir(logDir); err != nil {
				return err
			}
			var clock time.Time
			engine, err := policy.New(policy.Config{
				Dir: dir, Bundle: bundle, BundleVerificationKey: bundleKey, Path: path,
				Now:           func() time.Time { return clock },
				DecisionCache: config.DefaultDecisionCacheEntries,
			})
			if err != nil {
				return fmt.Errorf("proposed policy: %w", err)
			}
			if !engine.Ready() {
				return errors.New("proposed policy: the bundle did not load")
			}
			rp, err := simulate.NewReplayer(engine, &clock)
			if err != nil {
				return err
			}
			acc := simulate.NewAccumulator(engine.Revision(), fromT, toT, simulate.Gaps(engine.InputReads()))
			r := simulate.NewLogSource(logDir)
			defer r.Close()
			if err := simulate.Run(cmd.Context(), r, rp, acc, fromT, toT); err != nil {
				return err
			}
			rep := acc.Report()
			if rep.Read == 0 {
				return withHint(fmt.Errorf("no decision records in %s for the given time range", logDir), "point --log at <data-dir>/log and check --from/--to")
			}
			out := cmd.OutOrStdout()
			switch format {
			case "json":
				err = rep.WriteJSON(out)
			case "markdown":
				err = rep.WriteMarkdown(out)
			default:
				err = rep.WriteText(out)
			}
			if err != nil {
				return err
			}
			if n := simulate.Count(rep.NewlyAllowed); n > 0 && !accept {
				fmt.Fprintf(cmd.ErrOrStderr(), "agentauthz: %d recorded decisions would become allowed (pass --accept-newly-allowed to accept)\n", n)
				return errNo
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&logDir, "log", defaultLogDir(), "decision log directory to replay (<data-dir>/log)")
	fl.StringVar(&dir, "policies", "", "proposed policy directory (.rego and data files)")
	fl.StringVar(&bundle, "bundle", "", "proposed policy as an OPA bundle file (.tar.gz)")
	fl.StringVar(&bundleKey, "bundle-verification-key", "", "PEM public key the bundle's signature must verify with")
	fl.StringVar(&path, "policy-path", config.DefaultPolicyPath, "rule to query, as opa-envoy-plugin's path")
	fl.StringVar(&from, "from", "", "replay records from this time: RFC 3339, or a duration ago like 24h")
	fl.StringVar(&to, "to", "", "replay records up to this time: RFC 3339, or a duration ago")
	fl.StringVar(&format, "format", "text", "output: text, markdown (a pull-request comment) or json")
	fl.BoolVar(&accept, "accept-newly-allowed", false, "exit 0 even when decisions would become allowed")
	return cmd
}
