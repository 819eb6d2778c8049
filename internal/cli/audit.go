package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/durable"
	"github.com/agentauthz/agentauthz/internal/termtext"
)

func newAuditCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Verify, query, prove and follow the signed decision log",
		Long: `The decision log in <data-dir>/log is a Merkle tree (RFC 6962 / RFC 9162) of records, one JSON
record per line, with a signed checkpoint (a C2SP signed note, Ed25519) after each group-commit
batch. These commands only read it (except rotate-key and migrate); they work on a copy as well
as on a live log. v1 logs (one JWS per record, hash-chained) are still verified and read. The
format and the verification algorithm are in docs/decision-log.md.`,
	}
	cmd.AddCommand(newAuditVerifyCmd(), newAuditQueryCmd(), newAuditWhoCmd(), newAuditTailCmd(),
		newAuditProveCmd(), newAuditConsistencyCmd(), newAuditMigrateCmd(),
		newAuditPubkeyCmd(), newAuditRotateKeyCmd(), newAuditSampleCmd(), newAuditReportCmd(), newAuditReportVerifyCmd())
	return cmd
}

func defaultLogDir() string { return filepath.Join(caEnvDataDir(), "log") }

// loadTrustedKeys reads --pubkey, or falls back to the keys next to the log
// (<log>/../keys), which proves integrity only against someone who could
// not also replace those keys.
func loadTrustedKeys(pubkey, logDir string, stderr io.Writer) (decisionlog.KeySet, error) {
	if pubkey != "" {
		data, err := readArgFile(pubkey)
		if err != nil {
			return nil, fmt.Errorf("read public key: %w", err)
		}
		ks, err := decisionlog.ParseKeySet(data)
		if err != nil {
			return nil, withHint(fmt.Errorf("public key %s: %w", pubkey, err), "export one with: agentauthz audit pubkey --data-dir DIR > log-keys.jwks")
		}
		return ks, nil
	}
	keyDir := filepath.Join(filepath.Dir(filepath.Clean(logDir)), "keys")
	ks, err := decisionlog.LoadKeySet(keyDir)
	if err != nil || len(ks) == 0 {
		return nil, withHint(errors.New("no public key given and no signing keys beside the log"), "pass the log's public key: --pubkey FILE (PEM or JWKS from agentauthz audit pubkey)")
	}
	fmt.Fprintf(stderr, "agentauthz: warning: trusting the keys in %s; pass --pubkey with an independently obtained key for an audit\n", keyDir)
	return ks, nil
}

// readArgFile reads a key, record or receipt file named on the command line.
func readArgFile(path string) ([]byte, error) { return durable.ReadFile(path, 1<<20) }

func newAuditVerifyCmd() *cobra.Command {
	var logDir, pubkey, changeLog, logName string
	var asJSON bool
	var srv auditServer
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Rebuild the Merkle tree, check every checkpoint; name the first bad index",
		Long: `verify rebuilds the log's Merkle tree from its records and checks every checkpoint: its
signature (the first by a --pubkey key, later ones by the key in force, following key_rotation
records), that it ends its batch, that the batch has its batch root and the tree its root (so
every checkpoint is consistent with the next). It exits 0 when the log is intact, 1 naming the
first bad index and the kind of damage (modified, missing, inserted, bad_checkpoint,
inconsistent, uncovered, truncated, segment_name, nul_bytes), 2 on error. The segment being
written ends in zero padding (preallocated space); that is not damage. A v1 log is verified
record by record (signatures and hash chain) and named by seq.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if changeLog != "" {
				return verifyChangeLog(cmd, changeLog, pubkey, asJSON)
			}
			if srv.server != "" {
				return srv.verify(cmd, logName, asJSON)
			}
			if err := checkLogDir(logDir); err != nil {
				return err
			}
			ks, err := loadTrustedKeys(pubkey, logDir, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			tuneGC() // a small live heap and garbage per line, as serve's (docs/decision-log.md, Performance)
			res, err := decisionlog.Verify(logDir, ks)
			if err != nil {
				return fmt.Errorf("verify: %w", err)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(res); err != nil {
					return err
				}
			} else if res.Problem != nil {
				fmt.Fprintf(out, "FAIL %s\n", res.Problem.Error())
				switch {
				case res.Format == 1 && res.Records > 0:
					fmt.Fprintf(out, "records %d..%d verified before it\n", res.FirstSeq, res.LastSeq)
				case res.Format == 2 && res.Checkpoints > 0:
					fmt.Fprintf(out, "records 0..%d verified before it (%d checkpoints)\n", res.Records-1, res.Checkpoints)
				}
			} else if res.Format == 1 {
				fmt.Fprintf(out, "ok: v1 log: %d records, seq %d..%d, %d segments, head %s, keys %s\n",
					res.Records, res.FirstSeq, res.LastSeq, res.Segments, res.LastHash, strings.Join(res.KeyIDs, ", "))
			} else {
				fmt.Fprintf(out, "ok: %d records, %d checkpoints, %d segments, root %s, keys %s\n",
					res.Records, res.Checkpoints, res.Segments, res.Root, strings.Join(res.KeyIDs, ", "))
				if res.Checkpoint != "" {
					fmt.Fprintf(out, "latest checkpoint:\n%s", res.Checkpoint)
				}
			}
			if res.Problem != nil {
				return errNo
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&logDir, "log", defaultLogDir(), "log directory (<data-dir>/log)")
	cmd.Flags().StringVar(&changeLog, "changelog", "", "verify the control plane's signed change log in this data directory instead")
	cmd.Flags().StringVar(&logName, "log-name", "", "with --server: the replica log to verify in the central store")
	srv.add(cmd)
	cmd.Flags().StringVar(&pubkey, "pubkey", "", "trusted public key(s) of the log: PEM or JWKS (default: <log>/../keys, with a warning)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

// recordFilter selects records for query and tail.
type recordFilter struct {
	agent, operation, reason string
	since, until             string
	allowed, denied          bool
	sinceT, untilT           time.Time
}

func (f *recordFilter) flags(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.agent, "agent", "", "agent id or SPIFFE ID")
	fl.StringVar(&f.since, "since", "", "from this time: RFC 3339, or a duration ago like 1h")
	fl.StringVar(&f.until, "until", "", "up to this time: RFC 3339, or a duration ago")
	fl.BoolVar(&f.allowed, "allowed", false, "only allowed decisions")
	fl.BoolVar(&f.denied, "denied", false, "only denied decisions")
	fl.StringVar(&f.operation, "operation", "", "operation, e.g. payments:initiate")
	fl.StringVar(&f.reason, "reason", "", "reason code, e.g. scope_missing")
}

func parseWhen(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("time %q: want RFC 3339 (2026-01-02T15:04:05Z) or a duration like 1h", s)
}

func (f *recordFilter) prepare(now time.Time) error {
	if f.allowed && f.denied {
		return errors.New("--allowed and --denied exclude each other")
	}
	var err error
	if f.sinceT, err = parseWhen(f.since, now); err != nil {
		return err
	}
	f.untilT, err = parseWhen(f.until, now)
	return err
}

func (f *recordFilter) match(r *decisionlog.Record) bool {
	if r.Kind != "" && r.Kind != decisionlog.KindDecision {
		return f.agent == "" && f.operation == "" && f.reason == "" && !f.allowed && !f.denied
	}
	switch {
	case f.agent != "" && r.Agent.ID != f.agent && r.Agent.SPIFFEID != f.agent:
		return false
	case f.operation != "" && r.Request.Operation != f.operation:
		return false
	case f.allowed && !r.Decision.Allowed, f.denied && r.Decision.Allowed:
		return false
	case !f.sinceT.IsZero() && r.Time.Before(f.sinceT):
		return false
	case !f.untilT.IsZero() && r.Time.After(f.untilT):
		return false
	}
	if f.reason != "" {
		for _, c := range r.Decision.Reasons {
			if c == f.reason {
				return true
			}
		}
		return false
	}
	return true
}

// recordPrinter writes records as a table or as JSON lines.
type recordPrinter struct {
	asJSON bool
	tw     *tabwriter.Writer
	out    io.Writer
	header bool
}

func newRecordPrinter(out io.Writer, asJSON bool) *recordPrinter {
	return &recordPrinter{asJSON: asJSON, out: out, tw: tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)}
}

// following switches to fixed minimum column widths, so rows printed one
// at a time (tail -f) still line up with the header.
func (p *recordPrinter) following() {
	p.tw = tabwriter.NewWriter(p.out, 14, 4, 2, ' ', 0)
}

func (p *recordPrinter) print(r *decisionlog.Record) error {
	if p.asJSON {
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(p.out, "%s\n", b)
		return err
	}
	if !p.header {
		fmt.Fprintln(p.tw, "INDEX\tTIME\tAGENT\tTRUST\tMETHOD\tPATH\tOPERATION\tDECISION\tREASONS\tDECISION ID")
		p.header = true
	}
	if r.Kind == decisionlog.KindKeyRotation {
		fmt.Fprintf(p.tw, "%d\t%s\t-\t-\t-\t-\t-\tkey_rotation\tnew kid %s\t-\n", r.Index, r.Time.Format(decisionlog.TimeLayout), cell(r.KeyRotation.NewKeyID))
		return nil
	}
	if r.Kind == decisionlog.KindResponse && r.Response != nil {
		fmt.Fprintf(p.tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\tresponse %d\t%s\t%s\n", r.Index, r.Time.Format(decisionlog.TimeLayout),
			cell(r.Agent.ID), cell(r.Agent.TrustLevel), cell(r.Request.Method), cell(r.Request.Path), cell(r.Request.Operation),
			r.Response.Status, cell(r.Response.Body), cell(r.DecisionID))
		return nil
	}
	if r.Kind != "" && r.Kind != decisionlog.KindDecision {
		fmt.Fprintf(p.tw, "%d\t%s\t-\t-\t-\t-\t-\t%s\t-\t%s\n", r.Index, r.Time.Format(decisionlog.TimeLayout), cell(r.Kind), cell(r.DecisionID))
		return nil
	}
	dec := "deny"
	if r.Decision.Allowed {
		dec = "allow"
	}
	fmt.Fprintf(p.tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s %d\t%s\t%s\n", r.Index, r.Time.Format(decisionlog.TimeLayout),
		cell(r.Agent.ID), cell(r.Agent.TrustLevel), cell(r.Request.Method), cell(r.Request.Path), cell(r.Request.Operation),
		dec, r.Decision.HTTPStatus, cell(strings.Join(r.Decision.Reasons, ",")), cell(r.DecisionID))
	return nil
}

func (p *recordPrinter) flush() error { return p.tw.Flush() }

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// cell is a record's value as human output shows it: "-" when empty, and
// escaped so that it cannot drive the terminal (see termtext.Escape).
func cell(s string) string { return dash(termtext.Escape(s)) }

// scanLog calls fn for every record until the current end of the log. A
// malformed line is reported on stderr and skipped: query is not
// verification.
func scanLog(r *decisionlog.Reader, stderr io.Writer, fn func(decisionlog.Entry) error) error {
	for {
		e, err := r.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if errors.Is(err, decisionlog.ErrMalformed) {
			fmt.Fprintf(stderr, "agentauthz: warning: skipping %v (run agentauthz audit verify)\n", err)
			continue
		}
		if err != nil {
			return err
		}
		if err := fn(e); err != nil {
			return err
		}
	}
}

// checkLogDir refuses a directory that is not a decision log before any
// audit command reads it, so an auditor never gets "ok: 0 records" or an
// empty listing about the wrong directory. A log holds segment files
// (<first seq>.log); one that has none yet is still a log when its signing
// keys are beside it (<log>/../keys), as after the first serve.
func checkLogDir(dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return withHint(fmt.Errorf("log directory: %w", err), "point --log at <data-dir>/log")
	}
	if !st.IsDir() {
		return withHint(fmt.Errorf("log directory %s is not a directory", dir), "point --log at <data-dir>/log")
	}
	if hasSegments(dir) {
		return nil
	}
	if hasSegments(filepath.Join(dir, "log")) {
		return withHint(fmt.Errorf("%s is not a decision log: it holds no segment files (NNNNNNNNNNNNNNNNNNNN.log)", dir),
			"%s looks like a data directory; pass --log %s", dir, filepath.Join(dir, "log"))
	}
	keys := filepath.Join(filepath.Dir(filepath.Clean(dir)), "keys")
	if st, err := os.Stat(keys); err == nil && st.IsDir() {
		return nil
	}
	return withHint(fmt.Errorf("%s is not a decision log: no segment files (NNNNNNNNNNNNNNNNNNNN.log) and no signing keys in %s", dir, keys),
		"point --log at <data-dir>/log of an agentauthz serve")
}

// hasSegments reports whether dir holds at least one segment file.
func hasSegments(dir string) bool {
	m, _ := filepath.Glob(filepath.Join(dir, "[0-9]*.log"))
	return len(m) > 0
}

func newAuditQueryCmd() *cobra.Command {
	var logDir string
	var asJSON bool
	var limit int
	var f recordFilter
	var srv auditServer
	cmd := &cobra.Command{
		Use:   "query",
		Short: "List decision records by agent, time, outcome, operation or reason",
		Long: `query lists the records that match every given filter, oldest first, as a table or (--json)
as one JSON record per line. It reads without checking signatures; use audit verify for that.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.prepare(time.Now()); err != nil {
				return err
			}
			if srv.server != "" {
				return srv.query(cmd, &f, limit, asJSON)
			}
			if err := checkLogDir(logDir); err != nil {
				return err
			}
			r := decisionlog.NewReader(logDir)
			defer r.Close()
			p := newRecordPrinter(cmd.OutOrStdout(), asJSON)
			n := 0
			err := scanLog(r, cmd.ErrOrStderr(), func(e decisionlog.Entry) error {
				if !f.match(e.Record) || (limit > 0 && n >= limit) {
					return nil
				}
				n++
				return p.print(e.Record)
			})
			if ferr := p.flush(); err == nil {
				err = ferr
			}
			return err
		},
	}
	cmd.Flags().StringVar(&logDir, "log", defaultLogDir(), "log directory (<data-dir>/log)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "one JSON record per line")
	cmd.Flags().IntVar(&limit, "limit", 0, "print at most this many records (0: all)")
	f.flags(cmd)
	srv.add(cmd)
	return cmd
}

func newAuditWhoCmd() *cobra.Command {
	var logDir string
	var asJSON bool
	var srv auditServer
	cmd := &cobra.Command{
		Use:   "who DECISION_OR_REQUEST_ID",
		Short: "Say which agent made a request, at what trust level, with which scopes, under which policy",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if srv.server != "" {
				return srv.who(cmd, id, asJSON)
			}
			if err := checkLogDir(logDir); err != nil {
				return err
			}
			r := decisionlog.NewReader(logDir)
			defer r.Close()
			out := cmd.OutOrStdout()
			found := 0
			err := scanLog(r, cmd.ErrOrStderr(), func(e decisionlog.Entry) error {
				rec := e.Record
				if rec.DecisionID != id && rec.Request.ID != id {
					return nil
				}
				found++
				if asJSON {
					b, err := json.Marshal(rec)
					if err != nil {
						return err
					}
					_, err = fmt.Fprintf(out, "%s\n", b)
					return err
				}
				if found > 1 {
					fmt.Fprintln(out)
				}
				printWho(out, rec)
				return nil
			})
			if err != nil {
				return err
			}
			if found == 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "agentauthz: no record with decision id or request id %q in %s\n", id, logDir)
				return errNo
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&logDir, "log", defaultLogDir(), "log directory (<data-dir>/log)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the matching records as JSON lines")
	srv.add(cmd)
	return cmd
}

func printWho(out io.Writer, r *decisionlog.Record) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	if r.Kind == decisionlog.KindResponse && r.Response != nil {
		// The signed response a decision let through (docs/responses.md).
		rs := r.Response
		for _, row := range [][2]string{
			{"response to", r.DecisionID},
			{"time", r.Time.Format(decisionlog.TimeLayout)},
			{"status", fmt.Sprint(rs.Status)},
			{"body", fmt.Sprintf("%s, %d bytes", rs.Body, rs.Bytes)},
			{"content digest", rs.ContentDigest},
			{"signature input", rs.SignatureInput},
			{"record", recordWhere(r)},
		} {
			fmt.Fprintf(tw, "%s:\t%s\n", row[0], dash(cell(strings.TrimSpace(row[1]))))
		}
		tw.Flush()
		return
	}
	dec := "denied"
	if r.Decision.Allowed {
		dec = "allowed"
	}
	rows := [][2]string{
		{"decision", r.DecisionID},
		{"request", r.Request.ID},
		{"time", r.Time.Format(decisionlog.TimeLayout)},
		{"agent", r.Agent.ID},
		{"spiffe id", r.Agent.SPIFFEID},
		{"tenant", r.Agent.Tenant},
		{"trust level", r.Agent.TrustLevel},
		{"scopes", strings.Join(r.Agent.Scopes, " ")},
		{"owner", r.Agent.Owner},
		{"certificate", strings.TrimSpace(fmt.Sprintf("serial %s sha256 %s", dash(r.Agent.Serial), dash(r.Agent.CertSHA256)))},
		{"issuer", r.Agent.Issuer},
		{"identity from", r.Agent.Source},
		{"action", strings.TrimSpace(fmt.Sprintf("%s %s%s", r.Request.Method, r.Request.Host, r.Request.Path))},
		{"operation", r.Request.Operation},
		{"source", r.Request.Source},
		{"outcome", fmt.Sprintf("%s (HTTP %d) %s", dec, r.Decision.HTTPStatus, strings.Join(r.Decision.Reasons, ","))},
		{"policy revision", r.Decision.PolicyRevision},
		{"record", recordWhere(r)},
	}
	for _, row := range rows {
		fmt.Fprintf(tw, "%s:\t%s\n", row[0], cell(strings.TrimSpace(row[1])))
	}
	tw.Flush()
}

// recordWhere names a record's place: its index (and, in a v1 log, seq and key).
func recordWhere(r *decisionlog.Record) string {
	if r.Seq != 0 {
		return fmt.Sprintf("seq %d of v1 log %s, key %s", r.Seq, r.Log, r.KeyID)
	}
	s := fmt.Sprintf("index %d of log %s", r.Index, r.Log)
	if r.Truncated {
		s += " (fields cut to their bounds: truncated)"
	}
	return s
}

func newAuditTailCmd() *cobra.Command {
	var logDir string
	var asJSON, follow bool
	var n int
	var poll time.Duration
	var f recordFilter
	cmd := &cobra.Command{
		Use:   "tail",
		Short: "Print the last records and, with -f, follow new ones",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.prepare(time.Now()); err != nil {
				return err
			}
			if err := checkLogDir(logDir); err != nil {
				return err
			}
			r := decisionlog.NewReader(logDir)
			defer r.Close()
			p := newRecordPrinter(cmd.OutOrStdout(), asJSON)
			if follow {
				p.following()
			}
			var last []*decisionlog.Record
			err := scanLog(r, cmd.ErrOrStderr(), func(e decisionlog.Entry) error {
				if f.match(e.Record) {
					last = append(last, e.Record)
					if len(last) > n {
						last = last[1:]
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
			for _, rec := range last {
				if err := p.print(rec); err != nil {
					return err
				}
			}
			if err := p.flush(); err != nil || !follow {
				return err
			}
			return followLog(cmd.Context(), r, poll, cmd.ErrOrStderr(), func(e decisionlog.Entry) error {
				if !f.match(e.Record) {
					return nil
				}
				if err := p.print(e.Record); err != nil {
					return err
				}
				return p.flush()
			})
		},
	}
	cmd.Flags().StringVar(&logDir, "log", defaultLogDir(), "log directory (<data-dir>/log)")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing records as they are appended")
	cmd.Flags().IntVarP(&n, "lines", "n", 10, "how many of the last records to print first")
	cmd.Flags().BoolVar(&asJSON, "json", false, "one JSON record per line")
	cmd.Flags().DurationVar(&poll, "poll", 200*time.Millisecond, "how often to look for new records with -f")
	f.flags(cmd)
	return cmd
}

// followLog polls the reader until ctx ends (Ctrl-C exits 0).
func followLog(ctx context.Context, r *decisionlog.Reader, poll time.Duration, stderr io.Writer, fn func(decisionlog.Entry) error) error {
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := scanLog(r, stderr, fn); err != nil {
			return err
		}
	}
}

func newAuditPubkeyCmd() *cobra.Command {
	var dataDir, format, name string
	cmd := &cobra.Command{
		Use:   "pubkey",
		Short: "Print the decision log's public keys (JWKS, PEM or note verifier keys) for auditors, witnesses and receipt checkers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			keyDir := filepath.Join(dataDir, "keys")
			ks, err := decisionlog.LoadKeySet(keyDir)
			if err != nil {
				return withHint(err, "the keys are created by the first agentauthz serve with --data-dir %s", dataDir)
			}
			if len(ks) == 0 {
				return withHint(fmt.Errorf("no signing keys in %s", keyDir), "the keys are created by the first agentauthz serve with --data-dir %s", dataDir)
			}
			out := cmd.OutOrStdout()
			switch format {
			case "jwks":
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(ks.JWKS())
			case "pem":
				_, err := out.Write(ks.PEM())
				return err
			case "note":
				if name == "" {
					name, err = logOrigin(filepath.Join(dataDir, "log"))
					if err != nil {
						return withHint(err, "pass the log's name (decision_log.name): --name NAME")
					}
				}
				for _, kid := range ks.KIDs() {
					vk, err := decisionlog.NoteVerifierKey(name, ks[kid])
					if err != nil {
						return err
					}
					fmt.Fprintln(out, vk)
				}
				return nil
			}
			return fmt.Errorf("--format %q: want jwks, pem or note", format)
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", caEnvDataDir(), "data directory (env AGENTAUTHZ_DATA_DIR)")
	cmd.Flags().StringVar(&format, "format", "jwks", "jwks (RFC 7517), pem (PKIX PUBLIC KEY blocks) or note (C2SP signed-note verifier keys, for witnesses)")
	cmd.Flags().StringVar(&name, "name", "", "with --format note: the log's name (default: the origin of its latest checkpoint)")
	return cmd
}

func newAuditRotateKeyCmd() *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   "rotate-key",
		Short: "Hand the log over to a new signing key, recorded in the log (stop serve first)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logDir := filepath.Join(dataDir, "log")
			name, err := logOrigin(logDir) // the log keeps its name
			if err != nil {
				name = "" // an empty log: the default name
			}
			l, err := decisionlog.Open(decisionlog.Options{Dir: logDir, KeyDir: filepath.Join(dataDir, "keys"), Name: name})
			if err != nil {
				return withHint(fmt.Errorf("open decision log: %w", err), "stop agentauthz serve on this data dir first")
			}
			old := l.KeyID()
			kid, err := l.Rotate()
			if cerr := l.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "rotated signing key %s -> %s\n", old, kid)
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", caEnvDataDir(), "data directory (env AGENTAUTHZ_DATA_DIR)")
	return cmd
}

// newAuditSampleCmd writes made-up records: for trying the auditor commands
// and for the CLI tests. Hidden because it is not an operator task.
func newAuditSampleCmd() *cobra.Command {
	var dataDir string
	var count, rotateAfter int
	var segBytes int64
	var receipts string
	cmd := &cobra.Command{
		Use:    "sample",
		Short:  "Append made-up decision records to a log (demos and tests)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := decisionlog.Open(decisionlog.Options{Dir: filepath.Join(dataDir, "log"), KeyDir: filepath.Join(dataDir, "keys"),
				Name: "sample", SegmentMaxBytes: segBytes})
			if err != nil {
				return err
			}
			defer l.Close()
			agents := []struct{ id, trust, scope string }{
				{"payments-bot", "L3", "payments:initiate"}, {"reader-bot", "L1", "reports:read"}, {"ops-bot", "L2", "tickets:write"},
			}
			base := time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)
			var rcpts []byte
			for i := 0; i < count; i++ {
				if rotateAfter > 0 && i == rotateAfter {
					if _, err := l.Rotate(); err != nil {
						return err
					}
				}
				a := agents[i%len(agents)]
				allowed := i%4 != 3
				status, reasons := 200, []string{}
				if !allowed {
					status, reasons = 403, []string{"scope_missing"}
				}
				rec := &decisionlog.Record{
					DecisionID: fmt.Sprintf("dec-%04d", i+1),
					Time:       base.Add(time.Duration(i) * time.Minute),
					Agent: decisionlog.Agent{ID: a.id, SPIFFEID: "spiffe://acme.example/agent/" + a.id, Tenant: "acme.example",
						TrustLevel: a.trust, Scopes: []string{a.scope}, Owner: "team-" + a.id, Serial: fmt.Sprintf("%x", 4096+i%3),
						Issuer: "CN=acme.example agent CA", Source: "peer_certificate"},
					Request:  decisionlog.Request{ID: fmt.Sprintf("req-%04d", i+1), Method: "POST", Host: "api.acme.example", Path: "/v1/payments", Operation: "payments:initiate", Source: "10.0.0.7:40000"},
					Decision: decisionlog.Decision{Allowed: allowed, HTTPStatus: status, Reasons: reasons, PolicyRevision: "rev-7"},
				}
				rc, err := l.Append(context.WithoutCancel(cmd.Context()), rec)
				if err != nil {
					return err
				}
				rcpts = append(rcpts, rc.Header+"\n"...)
			}
			if err := l.Close(); err != nil {
				return err
			}
			if receipts != "" {
				return os.WriteFile(receipts, rcpts, 0o600)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", caEnvDataDir(), "data directory (env AGENTAUTHZ_DATA_DIR)")
	cmd.Flags().IntVar(&count, "count", 10, "records to append")
	cmd.Flags().IntVar(&rotateAfter, "rotate-after", 0, "rotate the signing key after this many records (0: never)")
	cmd.Flags().Int64Var(&segBytes, "segment-max-bytes", 0, "segment size limit (0: default)")
	cmd.Flags().StringVar(&receipts, "receipts", "", "write each record's receipt (x-agent-receipt) to this file, one per line")
	return cmd
}

func newAuditProveCmd() *cobra.Command {
	var logDir, pubkey string
	cmd := &cobra.Command{
		Use:   "prove DECISION_ID",
		Short: "Print a record and its inclusion proof in the latest checkpoint (JSON)",
		Long: `prove verifies the log, finds the record with the decision id, and prints as JSON: the record
line, its leaf index and hash (SHA-256 of 0x00 and the line), the latest checkpoint (a signed
note), its tree size and root, and the RFC 9162 inclusion proof from the leaf to that root. Any
RFC 9162 verifier checks it offline with the log's public key (docs/decision-log.md). Exit 0
found, 1 no such record, 2 error (including a log that does not verify).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkLogDir(logDir); err != nil {
				return err
			}
			ks, err := loadTrustedKeys(pubkey, logDir, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			p, err := decisionlog.Prove(logDir, ks, args[0])
			if errors.Is(err, decisionlog.ErrNotFound) {
				fmt.Fprintf(cmd.ErrOrStderr(), "agentauthz: no record with decision id %q covered by a checkpoint in %s\n", args[0], logDir)
				return errNo
			}
			if err != nil {
				return withHint(err, "run agentauthz audit verify --log %s", logDir)
			}
			return printJSON(cmd.OutOrStdout(), p)
		},
	}
	cmd.Flags().StringVar(&logDir, "log", defaultLogDir(), "log directory (<data-dir>/log)")
	cmd.Flags().StringVar(&pubkey, "pubkey", "", "trusted public key(s) of the log: PEM, JWKS or note verifier keys (default: <log>/../keys, with a warning)")
	return cmd
}

func newAuditConsistencyCmd() *cobra.Command {
	var logDir, pubkey string
	cmd := &cobra.Command{
		Use:   "consistency OLD_SIZE NEW_SIZE",
		Short: "Print the consistency proof between two tree sizes (JSON): the log only grew",
		Long: `consistency verifies the log and prints as JSON the RFC 9162 consistency proof between its trees of
OLD_SIZE and NEW_SIZE records (NEW_SIZE may be "latest"), both roots, and the signed checkpoints of
those sizes where the log has them. Keep a checkpoint (from a receipt, GET /checkpoint or an
earlier audit) and check later that the log's new checkpoint extends it.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkLogDir(logDir); err != nil {
				return err
			}
			old, err := strconv.ParseUint(args[0], 10, 64)
			if err != nil {
				return withHint(fmt.Errorf("OLD_SIZE %q: %w", args[0], err), "sizes are tree sizes: the second line of a checkpoint")
			}
			ks, err := loadTrustedKeys(pubkey, logDir, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			newSize := uint64(0)
			if args[1] == "latest" {
				res, err := decisionlog.Verify(logDir, ks)
				if err != nil {
					return err
				}
				newSize = res.Records
			} else if newSize, err = strconv.ParseUint(args[1], 10, 64); err != nil {
				return withHint(fmt.Errorf("NEW_SIZE %q: %w", args[1], err), "a tree size, or latest")
			}
			p, err := decisionlog.Consistency(logDir, ks, old, newSize)
			if err != nil {
				return withHint(err, "run agentauthz audit verify --log %s", logDir)
			}
			return printJSON(cmd.OutOrStdout(), p)
		},
	}
	cmd.Flags().StringVar(&logDir, "log", defaultLogDir(), "log directory (<data-dir>/log)")
	cmd.Flags().StringVar(&pubkey, "pubkey", "", "trusted public key(s) of the log: PEM, JWKS or note verifier keys (default: <log>/../keys, with a warning)")
	return cmd
}

// logOrigin is the log's name as its latest checkpoint states it.
func logOrigin(logDir string) (string, error) {
	cps, err := decisionlog.Checkpoints(logDir)
	if err != nil {
		return "", err
	}
	if len(cps) == 0 {
		return "", fmt.Errorf("no checkpoint in %s to take the log's name from", logDir)
	}
	origin, _, _ := strings.Cut(string(cps[len(cps)-1]), "\n")
	return origin, nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

func newAuditMigrateCmd() *cobra.Command {
	var dataDir, pubkey string
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Keep a v1 log (as <data-dir>/log-v1) and start a v2 log that records its head (stop serve first)",
		Long: `migrate is one-way: it verifies the v1 log in <data-dir>/log (one JWS per record, hash-chained),
renames the directory to <data-dir>/log-v1, unchanged, and starts a v2 log in <data-dir>/log whose
first record (kind "migration") names the v1 log's last seq, head hash and keys, under the same
signing key. audit verify keeps verifying log-v1; the v2 log's checkpoints sign its head.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logDir := filepath.Join(dataDir, "log")
			v1Dir := filepath.Join(dataDir, "log-v1")
			if _, err := os.Stat(v1Dir); err == nil {
				return withHint(fmt.Errorf("%s exists already", v1Dir), "a log was migrated before; move it away first")
			}
			ks, err := loadTrustedKeys(pubkey, logDir, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			res, err := decisionlog.Verify(logDir, ks)
			if err != nil {
				return err
			}
			if res.Format != 1 {
				return fmt.Errorf("%s is not a v1 log: nothing to migrate", logDir)
			}
			if res.Problem != nil {
				return withHint(fmt.Errorf("the v1 log does not verify: %v", res.Problem), "nothing was changed; investigate with agentauthz audit verify --log %s", logDir)
			}
			lock := filepath.Join(logDir, "LOCK")
			if err := os.Rename(logDir, v1Dir); err != nil {
				return err
			}
			os.Remove(filepath.Join(v1Dir, filepath.Base(lock)))
			l, err := decisionlog.Open(decisionlog.Options{Dir: logDir, KeyDir: filepath.Join(dataDir, "keys")})
			if err != nil {
				return withHint(fmt.Errorf("open the v2 log: %w", err), "the v1 log is in %s, unchanged", v1Dir)
			}
			data, _ := json.Marshal(map[string]any{"v1_log": "log-v1", "v1_records": res.Records, "v1_last_seq": res.LastSeq,
				"v1_head": res.LastHash, "v1_kids": res.KeyIDs})
			rc, err := l.Append(context.WithoutCancel(cmd.Context()), &decisionlog.Record{Kind: "migration", Data: data})
			if cerr := l.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "migrated: v1 log (%d records, head %s) kept in %s; v2 log started in %s, its record %d names the v1 head\n",
				res.Records, res.LastHash, v1Dir, logDir, rc.Index)
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", caEnvDataDir(), "data directory (env AGENTAUTHZ_DATA_DIR)")
	cmd.Flags().StringVar(&pubkey, "pubkey", "", "trusted public key(s) of the v1 log (default: <data-dir>/keys, with a warning)")
	return cmd
}
