package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/agentauthz/agentauthz/internal/alerts"
	"github.com/agentauthz/agentauthz/internal/anomaly"
	"github.com/agentauthz/agentauthz/internal/control"
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
	var path, dataDir string
	cmd := &cobra.Command{
		Use:   "alerts",
		Short: "List, show, acknowledge and decide anomaly alerts (of the control plane with --server, else of an alerts file)",
		Long: `With --server, the alerts of the control plane's anomaly detector: list and show need the role
auditor or responder; ack, approve and dismiss need responder, and each is recorded in the signed change
log with the operator. approve applies a proposed restriction (or keeps an automatic one, closing its
review); dismiss refuses a proposal (or undoes an automatic restriction).

Without --server, list, show and ack read the alerts file that anomaly replay --alerts writes.`,
	}
	cmd.PersistentFlags().StringVar(&path, "file", filepath.Join(caEnvDataDir(), "alerts.jsonl"), "alerts file written by anomaly replay --alerts (without --server)")
	cmd.PersistentFlags().StringVar(&dataDir, "data-dir", caEnvDataDir(), "data directory (its operator/ca.pem verifies --server unless --server-ca)")
	var open bool
	var rule, agent string
	var limit int
	var listSrv serverFlags
	list := &cobra.Command{
		Use:   "list",
		Short: "List alerts (newest first with --server, newest last from a file)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var all []alerts.Alert
			if listSrv.server != "" {
				q := url.Values{}
				if open {
					q.Set("open", "true")
				}
				for k, v := range map[string]string{"rule": rule, "agent": agent} {
					if v != "" {
						q.Set(k, v)
					}
				}
				q.Set("limit", strconv.Itoa(limit))
				var page struct{ Alerts []alerts.Alert }
				if err := listSrv.call(cmd.Context(), dataDir, http.MethodGet, "/v1/alerts?"+q.Encode(), nil, &page); err != nil {
					return err
				}
				all = page.Alerts
			} else {
				stored, err := anomaly.OpenStore(path).List()
				if err != nil {
					return err
				}
				for _, a := range stored {
					if open && a.Ack != nil || rule != "" && a.Alert.Rule != rule || agent != "" && !strings.Contains(a.Alert.Agent, agent) {
						continue
					}
					all = append(all, alerts.Alert{ID: a.ID, Alert: a.Alert, Ack: a.Ack})
				}
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tTIME\tRULE\tAGENT\tKEY\tACK\tRESPONSE")
			for _, a := range all {
				ack := "-"
				if a.Ack != nil {
					ack = termtext.Escape(a.Ack.By)
				}
				resp := "-"
				if r := a.Response; r != nil {
					resp = r.Mode + " " + r.State
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.ID, a.Alert.Time.UTC().Format(time.RFC3339), a.Alert.Rule, termtext.Escape(a.Alert.Agent),
					dash(termtext.Escape(a.Alert.Key)), ack, resp)
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&open, "open", false, "only alerts that wait for a responder (not acknowledged, or a response to decide)")
	list.Flags().StringVar(&rule, "rule", "", "only this rule")
	list.Flags().StringVar(&agent, "agent", "", "only this agent (--server: its SPIFFE ID or agent id; file: ids containing this)")
	list.Flags().IntVar(&limit, "limit", alerts.DefaultLimit, "with --server, at most this many (≤ 1000)")
	listSrv.add(list)
	var showSrv serverFlags
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show one alert with its explanation, decision ids, acknowledgement and response",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var a *alerts.Alert
			if showSrv.server != "" {
				a = &alerts.Alert{}
				if err := showSrv.call(cmd.Context(), dataDir, http.MethodGet, "/v1/alerts/"+url.PathEscape(args[0]), nil, a); err != nil {
					return err
				}
			} else {
				stored, err := anomaly.OpenStore(path).List()
				if err != nil {
					return err
				}
				for _, s := range stored {
					if s.ID == args[0] {
						a = &alerts.Alert{ID: s.ID, Alert: s.Alert, Ack: s.Ack}
					}
				}
				if a == nil {
					return withHint(fmt.Errorf("no alert %q in %s", args[0], path), "agentauthz alerts list shows the ids")
				}
			}
			return printStoredAlert(cmd.OutOrStdout(), a)
		},
	}
	showSrv.add(show)
	var by, note string
	var ackSrv serverFlags
	ack := &cobra.Command{
		Use:   "ack ID",
		Short: "Acknowledge an alert, with who and why",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if strings.TrimSpace(note) == "" {
				return errors.New("--note is required: say what was found")
			}
			if ackSrv.server != "" {
				var a alerts.Alert
				if err := ackSrv.call(cmd.Context(), dataDir, http.MethodPost, "/v1/alerts/"+url.PathEscape(args[0])+"/ack", control.NoteBody{Reason: note}, &a); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "acknowledged %s (%s, %s) by %s\n", a.ID, a.Alert.Rule, termtext.Escape(a.Alert.Agent), termtext.Escape(a.Ack.By))
				return nil
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
	ack.Flags().StringVar(&by, "by", "", "who acknowledges, without --server (default $AGENTAUTHZ_OPERATOR; with --server, the certificate)")
	ack.Flags().StringVar(&note, "note", "", "what was found (required)")
	ackSrv.add(ack)
	cmd.AddCommand(list, show, ack, newAlertDecisionCmd("approve", "Approve an alert's proposed restriction (applied now), or keep an automatic one (review closed)", &dataDir),
		newAlertDecisionCmd("dismiss", "Refuse an alert's proposed restriction, or undo an automatic one", &dataDir))
	return cmd
}

// newAlertDecisionCmd is alerts approve|dismiss: a responder's decision on
// an alert's response, through the control plane.
func newAlertDecisionCmd(verb, short string, dataDir *string) *cobra.Command {
	var srv serverFlags
	var reason string
	cmd := &cobra.Command{
		Use:   verb + " ID --reason TEXT",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if strings.TrimSpace(reason) == "" {
				return errors.New("--reason is required: the change log records why")
			}
			if srv.server == "" {
				return withHint(errors.New("alerts "+verb+" needs --server"), "responses live in the control plane: --server https://HOST:9193 --cert responder.pem --key responder.key")
			}
			var a alerts.Alert
			if err := srv.call(cmd.Context(), *dataDir, http.MethodPost, "/v1/alerts/"+url.PathEscape(args[0])+"/"+verb, control.NoteBody{Reason: reason}, &a); err != nil {
				return err
			}
			r := a.Response
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %s %s (%s) — %s, until %s\n", a.ID, r.Mode, r.State, r.Action, termtext.Escape(a.Alert.Agent), untilLabel(r.Until))
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (required; recorded in the change log)")
	srv.add(cmd)
	return cmd
}

func untilLabel(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func printStoredAlert(w io.Writer, a *alerts.Alert) error {
	if err := printAlert(w, &a.Alert, false); err != nil {
		return err
	}
	if a.Ack != nil {
		fmt.Fprintf(w, "    acknowledged by %s at %s: %s\n", termtext.Escape(a.Ack.By), a.Ack.At.Format(time.RFC3339), termtext.Escape(a.Ack.Note))
	}
	if r := a.Response; r != nil {
		fmt.Fprintf(w, "    response:  %s %s: %s", r.Mode, r.State, r.Action)
		if r.Until != nil {
			fmt.Fprintf(w, ", until %s", r.Until.UTC().Format(time.RFC3339))
		}
		fmt.Fprintln(w)
		if r.Error != "" {
			fmt.Fprintf(w, "    error:     %s\n", termtext.Escape(r.Error))
		}
		if r.By != "" {
			fmt.Fprintf(w, "    decided by %s at %s: %s\n", termtext.Escape(r.By), r.At.UTC().Format(time.RFC3339), termtext.Escape(r.Reason))
		}
	}
	return nil
}
