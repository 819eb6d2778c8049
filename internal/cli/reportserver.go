package cli

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/evidence"
	"github.com/agentauthz/agentauthz/internal/recordstore"
)

// The evidence pack from the control plane (audit report --server): the
// decisions of every log its central store holds, its change log and
// inventory, through the same authenticated API and client as the other
// audit commands.

// serverLog is one log of the control plane's store, as a report source.
type serverLog struct {
	a    *auditServer
	name string
}

// Verify asks the control plane to re-verify the stored log from index 0
// with the keys pinned when it first shipped.
func (s serverLog) Verify(ctx context.Context) (evidence.LogSource, error) {
	var res recordstore.VerifyResult
	if err := s.a.call(ctx, s.a.dataDir, http.MethodGet, "/v1/records/verify?log="+url.QueryEscape(s.name), nil, &res); err != nil {
		return evidence.LogSource{}, fmt.Errorf("verify log %s: %w", s.name, err)
	}
	src := evidence.LogSource{Server: s.a.server, Name: s.name, Records: res.Records, Root: res.Root, Verified: res.Problem == nil}
	if res.Problem != nil {
		src.Problem = res.Problem.Error()
	}
	return src, nil
}

// Scan pages through the log's records in the period.
func (s serverLog) Scan(ctx context.Context, from, to time.Time, each func(evidence.Scanned) error) (int, error) {
	q := url.Values{"log": {s.name}}
	if !from.IsZero() {
		q.Set("since", from.UTC().Format(time.RFC3339Nano))
	}
	if !to.IsZero() {
		q.Set("until", to.UTC().Format(time.RFC3339Nano))
	}
	return 0, s.a.find(ctx, q, 0, func(st recordstore.Stored) error {
		if st.Log != s.name || st.Record == nil {
			return fmt.Errorf("control plane answered a record of log %q to a query for %q", st.Log, s.name)
		}
		return each(evidence.Scanned{Record: st.Record})
	})
}

// serverSources lists the logs the control plane holds.
func serverSources(ctx context.Context, a *auditServer) ([]evidence.Source, error) {
	var ls struct {
		Logs []recordstore.LogStatus `json:"logs"`
	}
	if err := a.call(ctx, a.dataDir, http.MethodGet, "/v1/logs", nil, &ls); err != nil {
		return nil, err
	}
	if len(ls.Logs) == 0 {
		return nil, withHint(fmt.Errorf("the control plane at %s holds no decision log", a.server), "replicas ship there when their config has control_plane: {url: …}")
	}
	var out []evidence.Source
	for _, l := range ls.Logs {
		out = append(out, serverLog{a: a, name: l.Log})
	}
	return out, nil
}

// serverInventory reads the change log (GET /v1/changes), each agent's
// certificates (GET /v1/agents/{tenant}/{id}, for every agent the change log
// names) and the change log's verification (GET /v1/changelog/verify).
func serverInventory(ctx context.Context, a *auditServer) (*evidence.Inventory, error) {
	inv := &evidence.Inventory{}
	var ch struct {
		Changes []ca.Event `json:"changes"`
	}
	if err := a.call(ctx, a.dataDir, http.MethodGet, "/v1/changes", nil, &ch); err != nil {
		return nil, fmt.Errorf("change log: %w", err)
	}
	inv.Events = ch.Changes
	seen := map[[2]string]bool{}
	for _, e := range inv.Events {
		k := [2]string{e.TrustDomain, e.AgentID}
		if e.AgentID == "" || e.TrustDomain == "" || seen[k] {
			continue
		}
		seen[k] = true
		var d ca.AgentDetail
		if err := a.call(ctx, a.dataDir, http.MethodGet, "/v1/agents/"+url.PathEscape(e.TrustDomain)+"/"+url.PathEscape(e.AgentID), nil, &d); err != nil {
			return nil, fmt.Errorf("agent %s/%s: %w", e.TrustDomain, e.AgentID, err)
		}
		inv.Certs = append(inv.Certs, d.Certificates...)
	}
	// In the local inventory's order.
	slices.SortFunc(inv.Certs, func(x, y ca.Certificate) int {
		return cmp.Or(x.IssuedAt.Compare(y.IssuedAt), cmp.Compare(x.TrustDomain, y.TrustDomain), cmp.Compare(x.AgentID, y.AgentID), cmp.Compare(x.Serial, y.Serial))
	})
	var res ca.ChangeLogResult
	if err := a.call(ctx, a.dataDir, http.MethodGet, "/v1/changelog/verify", nil, &res); err != nil {
		inv.ChangeLogErr = err.Error()
	} else {
		inv.ChangeLog = &res
	}
	return inv, nil
}
