package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/agentauthz/agentauthz/internal/anomaly"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/durable"
	"github.com/agentauthz/agentauthz/internal/termtext"
)

func newAnomalyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "anomaly",
		Short: "Behavioural anomaly detection on decision records: replay a log, follow it, evaluate the detectors",
	}
	cmd.AddCommand(newAnomalyReplayCmd(), newAnomalyEvaluateCmd())
	return cmd
}

func newAnomalyReplayCmd() *cobra.Command {
	var (
		logDir, statePath, alertsPath, webhook string
		follow, asJSON                         bool
		poll                                   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "replay",
		Short: "Run the anomaly detectors over a decision log and print the alerts",
		Long: `replay runs every anomaly detector over the records of a decision log, oldest first, on record
time, and prints each alert with the baseline it was judged against, what was observed, how far off it
was and the decision ids behind it. A team tunes the rules on its own history this way before it relies
on them.

--follow keeps reading as the log grows (Ctrl-C to stop). --state FILE keeps the learned baselines
between runs (loaded at start, saved at the end and every minute while following). --alerts FILE appends
every alert to a file that agentauthz alerts list|show|ack reads. --webhook URL posts each alert as JSON
(retried, bounded). Records are read without checking signatures; run agentauthz audit verify for that.`,
		Example: `  agentauthz anomaly replay --log .agentauthz/log
  agentauthz anomaly replay --log .agentauthz/log --follow --state anomaly.json --alerts alerts.jsonl`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkLogDir(logDir); err != nil {
				return err
			}
			var st *anomaly.State
			if statePath != "" {
				b, err := os.ReadFile(statePath)
				switch {
				case errors.Is(err, os.ErrNotExist):
				case err != nil:
					return err
				default:
					if st, err = anomaly.Load(bytes.NewReader(b)); err != nil {
						return withHint(err, "remove %s to start the baselines afresh", statePath)
					}
				}
			}
			det := anomaly.New(anomaly.Config{}, st)
			save := func() error {
				if statePath == "" {
					return nil
				}
				var buf bytes.Buffer
				if err := det.State().Save(&buf); err != nil {
					return err
				}
				return durable.WriteFile(statePath, buf.Bytes(), 0o600)
			}
			var store *anomaly.Store
			if alertsPath != "" {
				store = anomaly.OpenStore(alertsPath)
			}
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			var hook *anomaly.Webhook
			if webhook != "" {
				if !strings.HasPrefix(webhook, "http://") && !strings.HasPrefix(webhook, "https://") {
					return fmt.Errorf("--webhook %q: want an http(s) URL", webhook)
				}
				hook = anomaly.NewWebhook(webhook, hclog.New(&hclog.LoggerOptions{Output: cmd.ErrOrStderr(), Name: "anomaly"}), anomaly.NewMetrics(prometheus.NewRegistry()))
				go hook.Run(ctx)
			}
			out := cmd.OutOrStdout()
			n, alerts := 0, 0
			handle := func(e decisionlog.Entry) error {
				ev, ok := anomaly.FromRecord(e.Record)
				if !ok {
					return nil
				}
				n++
				as := det.Observe(ev)
				if len(as) == 0 {
					return nil
				}
				alerts += len(as)
				if store != nil {
					if err := store.Add(as); err != nil {
						return fmt.Errorf("alerts file: %w", err)
					}
				}
				for i := range as {
					if hook != nil {
						hook.Send(as[i])
					}
					if err := printAlert(out, &as[i], asJSON); err != nil {
						return err
					}
				}
				return nil
			}
			r := decisionlog.NewReader(logDir)
			defer r.Close()
			err := scanLog(r, cmd.ErrOrStderr(), handle)
			if err == nil && follow {
				lastSave := time.Now()
				err = followLog(ctx, r, poll, cmd.ErrOrStderr(), func(e decisionlog.Entry) error {
					if err := handle(e); err != nil {
						return err
					}
					if time.Since(lastSave) > time.Minute {
						lastSave = time.Now()
						return save()
					}
					return nil
				})
			}
			if serr := save(); err == nil {
				err = serr
			}
			if hook != nil {
				cancel()
				hook.Wait()
			}
			if err != nil {
				return err
			}
			if !asJSON {
				fmt.Fprintf(cmd.ErrOrStderr(), "%d records, %d alerts, %d agents baselined or warming up\n", n, alerts, len(det.State().Agents))
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&logDir, "log", defaultLogDir(), "decision log directory (<data-dir>/log)")
	fl.StringVar(&statePath, "state", "", "file that keeps the learned baselines between runs")
	fl.StringVar(&alertsPath, "alerts", "", "append alerts to this file (read by agentauthz alerts)")
	fl.StringVar(&webhook, "webhook", "", "POST each alert as JSON to this URL")
	fl.BoolVarP(&follow, "follow", "f", false, "keep reading as the log grows")
	fl.DurationVar(&poll, "poll", time.Second, "with --follow, how often to look for new records")
	fl.BoolVar(&asJSON, "json", false, "print alerts as JSON lines")
	return cmd
}

func printAlert(w io.Writer, a *anomaly.Alert, asJSON bool) error {
	if asJSON {
		b, err := json.Marshal(a)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	key := ""
	if a.Key != "" {
		key = " [" + termtext.Escape(a.Key) + "]"
	}
	_, err := fmt.Fprintf(w, "%s  %s  %s%s  (alert %s)\n    baseline:  %s\n    observed:  %s\n    deviation: %s\n    decisions: %s\n",
		a.Time.UTC().Format(time.RFC3339), a.Rule, termtext.Escape(a.Agent), key, a.ID(), termtext.Escape(a.Baseline), termtext.Escape(a.Observed),
		a.Deviation, strings.Join(a.DecisionIDs, " "))
	return err
}

func newAnomalyEvaluateCmd() *cobra.Command {
	var c anomaly.TrafficConfig
	cmd := &cobra.Command{
		Use:   "evaluate",
		Short: "Score the detectors on seeded, generated traffic with labelled incidents",
		Long: `evaluate generates a seeded history (agents with daily and weekly patterns, and injected incidents of
seven kinds), runs the detectors over it without the labels, and scores them with the labels: recall,
detection delay per kind, precision per rule, and false alerts per 100 agent-days. The same flags always
give the same figures; docs/anomaly.md reports them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if c.Agents < 10 || c.Days < 8 {
				return errors.New("at least 10 agents and 8 days: incidents start after a five-day baseline")
			}
			start := time.Now()
			tr := anomaly.Generate(c)
			det := anomaly.New(anomaly.Config{}, nil)
			var alerts []anomaly.Alert
			for _, e := range tr.Events {
				alerts = append(alerts, det.Observe(e)...)
			}
			s := anomaly.Evaluate(tr, alerts)
			if err := s.Write(cmd.OutOrStdout()); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "generated and scored in %v\n", time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	fl := cmd.Flags()
	fl.Uint64Var(&c.Seed, "seed", 1, "generator seed")
	fl.IntVar(&c.Agents, "agents", 50, "agents")
	fl.IntVar(&c.Days, "days", 14, "simulated days")
	fl.Float64Var(&c.RateScale, "rate-scale", 1, "multiplies every agent's request rate")
	fl.IntVar(&c.PerKind, "per-kind", 4, "incidents of each kind")
	return cmd
}

func newAlertsCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "alerts",
		Short: "List, show and acknowledge anomaly alerts",
	}
	cmd.PersistentFlags().StringVar(&path, "file", filepath.Join(caEnvDataDir(), "alerts.jsonl"), "alerts file written by anomaly replay --alerts")
	var open bool
	var rule, agent string
	list := &cobra.Command{
		Use:   "list",
		Short: "List alerts, newest last",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			all, err := anomaly.OpenStore(path).List()
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tTIME\tRULE\tAGENT\tKEY\tACK")
			for _, a := range all {
				if open && a.Ack != nil || rule != "" && a.Alert.Rule != rule || agent != "" && !strings.Contains(a.Alert.Agent, agent) {
					continue
				}
				ack := "-"
				if a.Ack != nil {
					ack = termtext.Escape(a.Ack.By)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", a.ID, a.Alert.Time.UTC().Format(time.RFC3339), a.Alert.Rule, termtext.Escape(a.Alert.Agent), dash(termtext.Escape(a.Alert.Key)), ack)
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&open, "open", false, "only alerts nobody acknowledged")
	list.Flags().StringVar(&rule, "rule", "", "only this rule")
	list.Flags().StringVar(&agent, "agent", "", "only agents whose id contains this")
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show one alert with its explanation and decision ids",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			all, err := anomaly.OpenStore(path).List()
			if err != nil {
				return err
			}
			for _, a := range all {
				if a.ID == args[0] {
					if err := printAlert(cmd.OutOrStdout(), &a.Alert, false); err != nil {
						return err
					}
					if a.Ack != nil {
						fmt.Fprintf(cmd.OutOrStdout(), "    acknowledged by %s at %s: %s\n", termtext.Escape(a.Ack.By), a.Ack.At.Format(time.RFC3339), termtext.Escape(a.Ack.Note))
					}
					return nil
				}
			}
			return withHint(fmt.Errorf("no alert %q in %s", args[0], path), "agentauthz alerts list shows the ids")
		},
	}
	var by, note string
	ack := &cobra.Command{
		Use:   "ack ID",
		Short: "Acknowledge an alert, with who and why",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if strings.TrimSpace(note) == "" {
				return errors.New("--note is required: say what was found")
			}
			if by == "" {
				by = os.Getenv("AGENTAUTHZ_OPERATOR")
			}
			if by == "" {
				return withHint(errors.New("who acknowledges it?"), "pass --by NAME or set AGENTAUTHZ_OPERATOR")
			}
			a, err := anomaly.OpenStore(path).Acknowledge(args[0], by, note, time.Now())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "acknowledged %s (%s, %s) by %s\n", a.ID, a.Alert.Rule, termtext.Escape(a.Alert.Agent), termtext.Escape(by))
			return nil
		},
	}
	ack.Flags().StringVar(&by, "by", "", "who acknowledges (default $AGENTAUTHZ_OPERATOR)")
	ack.Flags().StringVar(&note, "note", "", "what was found (required)")
	cmd.AddCommand(list, show, ack)
	return cmd
}
