package cli

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/agentauthz/agentauthz/internal/recordstore"
)

// The audit commands against the control plane's central decision store
// (--server), with an auditor certificate: the same questions as against a
// log directory, across every replica that ships there.

// auditServer are the --server flags of the audit commands.
type auditServer struct {
	serverFlags
	dataDir string
}

func (a *auditServer) add(cmd *cobra.Command) {
	a.serverFlags.add(cmd)
	cmd.Flags().StringVar(&a.dataDir, "data-dir", caEnvDataDir(), "with --server: where the default --server-ca is (<data-dir>/operator/ca.pem)")
}

// find pages through GET /v1/records, calling each for every record.
func (a *auditServer) find(ctx context.Context, q url.Values, limit int, each func(recordstore.Stored) error) error {
	n := 0
	for {
		page := recordstore.MaxLimit
		if limit > 0 {
			page = min(limit-n, recordstore.MaxLimit)
		}
		q.Set("limit", strconv.Itoa(page))
		var p recordstore.Page
		if err := a.call(ctx, a.dataDir, http.MethodGet, "/v1/records?"+q.Encode(), nil, &p); err != nil {
			return err
		}
		for _, r := range p.Records {
			if err := each(r); err != nil {
				return err
			}
			n++
		}
		if p.Next == "" || (limit > 0 && n >= limit) {
			return nil
		}
		q.Set("cursor", p.Next)
	}
}

func (a *auditServer) who(cmd *cobra.Command, id string, asJSON bool) error {
	found := 0
	out := cmd.OutOrStdout()
	for _, key := range []string{"decision_id", "request_id"} {
		err := a.find(cmd.Context(), url.Values{key: {id}}, 0, func(s recordstore.Stored) error {
			found++
			if asJSON {
				return newRecordPrinter(out, true).print(s.Record)
			}
			if found > 1 {
				fmt.Fprintln(out)
			}
			printWho(out, s.Record)
			return nil
		})
		if err != nil {
			return err
		}
	}
	if found == 0 {
		fmt.Fprintf(cmd.ErrOrStderr(), "agentauthz: no record with decision id or request id %q at %s\n", id, a.server)
		return errNo
	}
	return nil
}

func (a *auditServer) query(cmd *cobra.Command, f *recordFilter, limit int, asJSON bool) error {
	q := url.Values{}
	set := func(k, v string) {
		if v != "" {
			q.Set(k, v)
		}
	}
	set("operation", f.operation)
	set("reason", f.reason)
	set("agent", f.agent)
	if f.allowed {
		q.Set("outcome", "allowed")
	}
	if f.denied {
		q.Set("outcome", "denied")
	}
	if !f.sinceT.IsZero() {
		q.Set("since", f.sinceT.UTC().Format(time.RFC3339Nano))
	}
	if !f.untilT.IsZero() {
		q.Set("until", f.untilT.UTC().Format(time.RFC3339Nano))
	}
	p := newRecordPrinter(cmd.OutOrStdout(), asJSON)
	err := a.find(cmd.Context(), q, limit, func(s recordstore.Stored) error { return p.print(s.Record) })
	if ferr := p.flush(); err == nil {
		err = ferr
	}
	return err
}

func (a *auditServer) verify(cmd *cobra.Command, logName string, asJSON bool) error {
	if logName == "" {
		return withHint(errors.New("audit verify --server needs --log-name"), "the replica's log name; agentauthz audit logs --server … lists them")
	}
	var res recordstore.VerifyResult
	if err := a.call(cmd.Context(), a.dataDir, http.MethodGet, "/v1/records/verify?log="+url.QueryEscape(logName), nil, &res); err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	switch {
	case asJSON:
		if err := caWriteJSON(cmd, res); err != nil {
			return err
		}
	case res.Problem != nil:
		fmt.Fprintf(out, "FAIL index %d: %s: %s\n", res.Problem.Index, res.Problem.Reason, res.Problem.Detail)
	default:
		fmt.Fprintf(out, "ok: log %s at %s: %d records, root %s (keys pinned when it first shipped)\n",
			res.Log, a.server, res.Records, res.Root)
	}
	if res.Problem != nil {
		return errNo
	}
	return nil
}
