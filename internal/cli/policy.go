package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/policy"
	"github.com/agentauthz/agentauthz/internal/recordstore"
	"github.com/agentauthz/agentauthz/internal/simrun"
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
		logDir, dir, bundle, bundleKey, path, format, from, to, operator string
		accept, record                                                   bool
		srv                                                              auditServer
	)
	cmd := &cobra.Command{
		Use:   "simulate",
		Short: "Replay recorded decisions under a proposed policy and report what would change",
		Long: `simulate decides every recorded request of the log again under the proposed policy (--policies
DIR or --bundle FILE, with the route table and restrictions in its data), with the identity and the time
the original decision had, through the same decision path serve uses. It reports the decisions that would
change — newly allowed, newly denied, otherwise changed — grouped by agent and operation with example
decision ids, the agents that would gain or lose an operation, and every record it could not replay and why.

The recorded decisions come from a decision log directory (--log) or from the control plane's central
store (--server, with an operator certificate of role policy or auditor), which holds what every replica
shipped. Given both, --log is read and --server only receives --record.

Decisions that identity or revocation refused never reached the policy and are reported as not replayed.
When the proposed policy reads something records do not keep (a header, the query string, the body), the
report says so: a change may then be due to what the record lacks.

--record appends the run to the control plane's signed change log (event policy_simulation: the
policy revision, the window, the counts, the gate and the SHA-256 of the JSON report), through --server
(role policy, responder or admin) or on the control plane's --data-dir, as evidence that the change
was reviewed with its impact.

Exit status: 0 when nothing that was denied would be allowed, 1 when something would be (a CI gate; pass
--accept-newly-allowed to accept it), 2 on error. Records are read without checking signatures; run
agentauthz audit verify on the same log for that.`,
		Example: `  agentauthz policy simulate --log .agentauthz/log --policies ./policies --format markdown
  agentauthz policy simulate --log exported/log --bundle proposed.tar.gz --from 2026-12-01T00:00:00Z --to 24h
  agentauthz policy simulate --server https://cp:9193 --cert ci.pem --key ci.key --from 168h --policies ./policies --record`,
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
			fromServer := srv.server != "" && !cmd.Flags().Changed("log")
			source := logDir
			var src simulate.Source
			if fromServer {
				source = srv.server
				src = newServerRecords(cmd.Context(), &srv, fromT, toT)
			} else {
				if err := checkLogDir(logDir); err != nil {
					return err
				}
				l := simulate.NewLogSource(logDir)
				defer l.Close()
				src = l
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
			if err := simulate.Run(cmd.Context(), src, rp, acc, fromT, toT); err != nil {
				return err
			}
			rep := acc.Report()
			if rep.Read == 0 {
				hint := "point --log at <data-dir>/log and check --from/--to"
				if fromServer {
					hint = "check --from/--to; replicas ship there when their config has control_plane: {url: …}"
				}
				return withHint(fmt.Errorf("no decision records in %s for the given time range", source), "%s", hint)
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
			if record {
				if err := recordSimulation(cmd, &srv, operator, rep, accept); err != nil {
					return err
				}
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
	fl.BoolVar(&record, "record", false, "append the run to the control plane's signed change log (--server, or --data-dir)")
	fl.StringVar(&operator, "operator", caDefaultOperator(), "with --record on --data-dir: who runs this, for the change log (env AGENTAUTHZ_OPERATOR)")
	srv.serverFlags.add(cmd)
	fl.StringVar(&srv.dataDir, "data-dir", caEnvDataDir(), "the control plane's data directory: --record appends there without --server; with --server, where the default --server-ca is")
	return cmd
}

// recordSimulation appends the run to the change log, through the control
// plane with --server, else on the local data directory.
func recordSimulation(cmd *cobra.Command, srv *auditServer, operator string, rep *simulate.Report, accept bool) error {
	run, err := rep.Run(accept)
	if err != nil {
		return err
	}
	where := srv.server
	if srv.server != "" {
		var res struct{ Operator string }
		if err := srv.call(cmd.Context(), srv.dataDir, http.MethodPost, "/v1/simulations", run, &res); err != nil {
			return fmt.Errorf("record the simulation run: %w", err)
		}
		operator = res.Operator
	} else {
		a, err := caOpenInventory(srv.dataDir)
		if err != nil {
			return err
		}
		defer a.Close()
		if err := a.RecordEvent("", "", "", simrun.Event, operator, run.Detail()); err != nil {
			return caError(err, srv.dataDir)
		}
		where = srv.dataDir
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "agentauthz: recorded %s of %s by %s in the change log of %s (report sha256 %s, gate %s)\n",
		simrun.Event, run.Revision, operator, where, run.ReportSHA256, run.Gate)
	return nil
}

// serverRecords reads the control plane's stored records (GET /v1/records)
// a page at a time, oldest first, in [from, to], as a simulate.Source: each
// record is decoded from its line, exactly as the replica signed it.
type serverRecords struct {
	ctx    context.Context
	srv    *auditServer
	q      url.Values
	page   []storedLine
	done   bool
	decode simulate.LineDecoder
}

// storedLine is what simulation takes of a stored record
// (recordstore.Stored): the line the replica signed, not the control
// plane's decoding of it.
type storedLine struct {
	Log   string `json:"log"`
	Index uint64 `json:"index"`
	Line  string `json:"line"`
}

func newServerRecords(ctx context.Context, srv *auditServer, from, to time.Time) *serverRecords {
	q := url.Values{"limit": {strconv.Itoa(recordstore.MaxLimit)}}
	if !from.IsZero() {
		q.Set("since", from.UTC().Format(time.RFC3339Nano))
	}
	if !to.IsZero() {
		q.Set("until", to.UTC().Format(time.RFC3339Nano))
	}
	return &serverRecords{ctx: ctx, srv: srv, q: q}
}

func (s *serverRecords) Next() (decisionlog.Entry, error) {
	for len(s.page) == 0 {
		if s.done {
			return decisionlog.Entry{}, io.EOF
		}
		var p struct {
			Records []storedLine `json:"records"`
			Next    string       `json:"next"`
		}
		if err := s.srv.call(s.ctx, s.srv.dataDir, http.MethodGet, "/v1/records?"+s.q.Encode(), nil, &p); err != nil {
			return decisionlog.Entry{}, err
		}
		s.page, s.done = p.Records, p.Next == ""
		s.q.Set("cursor", p.Next)
	}
	st := s.page[0]
	s.page = s.page[1:]
	e := decisionlog.Entry{Raw: st.Line}
	rec, err := s.decode.Decode(st.Line)
	if err != nil {
		return e, fmt.Errorf("log %s index %d: %w", st.Log, st.Index, err)
	}
	e.Record = rec
	return e, nil
}
