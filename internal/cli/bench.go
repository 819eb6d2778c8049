package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/agentauthz/agentauthz/internal/loadtest"
)

// newBenchCmd is `agentauthz bench`: the load harness (internal/loadtest).
func newBenchCmd() *cobra.Command {
	var (
		o                              loadtest.Options
		concurrencies, routes, revoked string
		mix, out, jsonOut, modes       string
		quick                          bool
		fleet                          loadtest.FleetOptions
		agents                         string
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Load-test the decision path against a no-op and a naive server and print a Markdown report",
		Long: `Generate a CA, agents, CRLs and policy data, start the real decision service,
a no-op Check server and the naive protobuf → map reference path as separate
processes, drive gRPC Check calls at each over loopback with one client, and
print requests/s, latency percentiles, server CPU, allocations and RSS per
Check, scaling curves (concurrency, route-table size, revoked serials), p99 at
half of the maximum throughput and revocation propagation time. See
docs/performance.md.

With --agents, measure the fleet curve instead: identity and policy in this
process, for fleets of each size whose agents make requests with a Zipf skew
(--zipf), and print the caches' hit rates and CPU per check.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if agents != "" {
				if fleet.Agents, err = parseInts("agents", agents); err != nil {
					return err
				}
				fleet.PoliciesDir, fleet.Progress = o.PoliciesDir, cmd.ErrOrStderr()
				pts, err := loadtest.RunFleet(cmd.Context(), fleet)
				if err != nil {
					return err
				}
				return writeReport(cmd, []byte(loadtest.FleetTable(fleet, pts)), out)
			}
			if quick {
				if !cmd.Flags().Changed("warmup") {
					o.Warmup = 300 * time.Millisecond
				}
				if !cmd.Flags().Changed("duration") {
					o.Duration = time.Second
				}
				if !cmd.Flags().Changed("concurrencies") {
					concurrencies = "1,16"
				}
				if !cmd.Flags().Changed("routes") {
					routes = "10,1000"
				}
				if !cmd.Flags().Changed("revoked") {
					revoked = "0,10000"
				}
				if !cmd.Flags().Changed("propagation-rounds") {
					o.PropagationRounds = 3
				}
				if !cmd.Flags().Changed("paired-rounds") {
					o.PairedRounds = 1
				}
				if !cmd.Flags().Changed("paced-rounds") {
					o.PacedRounds = 1
				}
			}
			if o.Concurrencies, err = parseInts("concurrencies", concurrencies); err != nil {
				return err
			}
			if o.RouteTables, err = parseInts("routes", routes); err != nil {
				return err
			}
			if o.RevokedSerials, err = parseInts("revoked", revoked); err != nil {
				return err
			}
			if o.Mix, err = loadtest.ParseMix(mix); err != nil {
				return withHint(err, "the default is %s", loadtest.DefaultMix)
			}
			for _, m := range strings.Split(modes, ",") {
				mode, err := loadtest.ParseMode(strings.TrimSpace(m))
				if err != nil {
					return err
				}
				o.Modes = append(o.Modes, mode)
			}
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find own executable: %w", err)
			}
			o.Command = func(ctx context.Context, args ...string) *exec.Cmd {
				return exec.CommandContext(ctx, exe, args...)
			}
			o.Progress = cmd.ErrOrStderr()
			rep, err := loadtest.Run(cmd.Context(), o)
			if err != nil {
				return err
			}
			var md bytes.Buffer
			if err := rep.Markdown(&md); err != nil {
				return err
			}
			if err := writeReport(cmd, md.Bytes(), out); err != nil {
				return err
			}
			if jsonOut != "" {
				if err := os.MkdirAll(filepath.Dir(jsonOut), 0o755); err != nil {
					return err
				}
				b, err := json.MarshalIndent(rep, "", "  ")
				if err != nil {
					return err
				}
				if err := os.WriteFile(jsonOut, append(b, '\n'), 0o644); err != nil {
					return err
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.DurationVar(&o.Duration, "duration", 10*time.Second, "measured window of each run")
	f.DurationVar(&o.Warmup, "warmup", 2*time.Second, "warm-up before each measured window")
	f.IntVar(&o.Concurrency, "concurrency", 16, "concurrency of the headline comparison")
	f.StringVar(&concurrencies, "concurrencies", "1,4,16,64", "concurrency curve")
	f.StringVar(&routes, "routes", "10,100,1000", "route-table sizes (the first is used by the other runs)")
	f.StringVar(&revoked, "revoked", "0,10000,1000000", "revoked serials in the CRL (the first is used by the other runs)")
	f.StringVar(&mix, "mix", loadtest.DefaultMix, "request mix, kind=weight,…")
	f.StringVar(&o.LogMode, "log-mode", "sync", "decision-log mode of the real server: sync (the target configuration) or async")
	f.StringVar(&modes, "modes", "noop,naive,real", "server modes to measure (the ratios need all three)")
	f.StringVar(&o.PoliciesDir, "policies", "policies", "shipped policy directory (authz.rego, data.json)")
	f.IntVar(&o.PropagationRounds, "propagation-rounds", 20, "revocations timed through ca serve and a replica (0 skips)")
	f.IntVar(&o.Connections, "connections", 1, "gRPC connections the client spreads its workers over (Envoy opens one per worker thread)")
	f.IntVar(&o.PairedRounds, "paired-rounds", 3, "rounds of (b) and (a) measured back to back at --concurrency, whose median ratio the (a)/(b) target reads (0 skips)")
	f.IntVar(&o.PacedRounds, "paced-rounds", 3, "rounds of (a) and (b) paced alike at half of (a)'s maximum, back to back, whose median p99 ratio the half-load target reads (0 skips)")
	f.Float64Var(&o.PacedRate, "paced-rate", 0, "run only the paced rounds (at least one), at this many req/s: a short trial for comparing builds")
	f.BoolVar(&o.SkipRateLimited, "skip-rate-limited", false, "skip the run at half of the maximum throughput")
	f.BoolVar(&o.SkipNoCache, "skip-no-cache", false, "skip the run of the real server with the policy decision cache off")
	f.StringVar(&o.ProfileDir, "profile-dir", "", "write a CPU profile of each server mode here")
	f.StringVar(&o.WorkDir, "work-dir", "", "keep generated files here instead of a temporary directory")
	f.StringVar(&out, "out", "", "also write the Markdown report to this file")
	f.StringVar(&jsonOut, "json", "", "also write the report as JSON to this file")
	f.BoolVar(&quick, "quick", false, "short runs (1 s) and fewer points, for a smoke test")
	f.StringVar(&agents, "agents", "", "measure the fleet curve for these fleet sizes instead, e.g. 1000,10000,100000,1000000")
	f.Float64Var(&fleet.Zipf, "zipf", loadtest.DefaultFleetZipf, "fleet curve: Zipf skew s > 1 of the agents' requests")
	f.IntVar(&fleet.Requests, "fleet-requests", loadtest.DefaultFleetRequests, "fleet curve: measured requests per fleet size (as many again warm up)")
	cmd.AddCommand(newBenchServerCmd())
	return cmd
}

// writeReport prints a Markdown report and, when out is set, writes it there.
func writeReport(cmd *cobra.Command, md []byte, out string) error {
	if _, err := cmd.OutOrStdout().Write(md); err != nil {
		return err
	}
	if out == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	return os.WriteFile(out, md, 0o644)
}

// newBenchServerCmd is the hidden server half of the harness, re-executed by
// `agentauthz bench` so that servers run in their own processes.
func newBenchServerCmd() *cobra.Command {
	var mode, configFile string
	cmd := &cobra.Command{
		Use:    "server",
		Short:  "Run one bench server (used by agentauthz bench)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := loadtest.ParseMode(mode)
			if err != nil {
				return err
			}
			if m == loadtest.ModeReal {
				tuneGC() // measure the real server as serve runs it
			}
			return loadtest.RunServer(cmd.Context(), loadtest.ServerOptions{
				Mode: m, ConfigFile: configFile, Stdout: cmd.OutOrStdout(), Stderr: cmd.ErrOrStderr(),
			})
		},
	}
	cmd.Flags().StringVar(&mode, "mode", "real", "real, noop or naive")
	cmd.Flags().StringVar(&configFile, "config", "", "serve configuration file")
	return cmd
}

func parseInts(name, s string) ([]int, error) {
	var out []int
	for _, p := range strings.Split(s, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("--%s: %q is not a non-negative integer", name, p)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--%s: empty list", name)
	}
	return out, nil
}
