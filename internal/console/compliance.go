package console

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strconv"
	"time"

	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/evidence"
	"github.com/agentauthz/agentauthz/internal/reason"
	"github.com/agentauthz/agentauthz/internal/recordstore"
)

// The Compliance page answers the auditor's four questions with links into
// the console, from the live store and inventory: who initiated a decision,
// that it was not tampered with, least privilege (denials by reason, the
// agents × operations matrix), and how one agent is revoked (the last
// revocations and how long each took to take effect). The evidence pack is
// internal/evidence's, built from the same store.

// Compliance limits.
const (
	matrixAgents     = 50 // rows shown
	matrixOperations = 30 // columns shown
	lastRevocations  = 10
	// revocationEvents bounds the change-log events read per revocation
	// shown: an agent's revocation is one event per certificate and one
	// for the agent.
	revocationEvents = 8
)

var complianceDays = []int{1, 7, 30, 90}

// matrixRow is one agent of the matrix.
type matrixRow struct {
	Tenant, Agent, SPIFFEID string
	Cells                   []*recordstore.AgentOperation // per column; nil: no decision
	// Unused are scopes the agent holds that no allowed decision used in
	// the period: least-privilege candidates.
	Unused []string
}

// revocationRow is one revocation and its effect.
type revocationRow struct {
	ca.Event
	SPIFFEID     string
	Logs         []logEffect
	AllowedAfter int64
}

type logEffect struct {
	Log  string
	At   time.Time
	Took time.Duration
}

func (c *Console) compliance(w http.ResponseWriter, r *http.Request, v *viewer) {
	days, _ := strconv.Atoi(r.URL.Query().Get("days"))
	if days <= 0 {
		days = 7
	}
	if days > 90 {
		days = 90
	}
	if c.cfg.Records == nil {
		c.render(w, r, http.StatusOK, "compliance", v, map[string]any{"Days": days, "DayChoices": complianceDays, "RecordsOff": true})
		return
	}
	data, err := c.complianceData(r.Context(), days)
	if err != nil {
		c.cfg.Logger.Error("console: compliance", "error", err)
		c.render(w, r, http.StatusServiceUnavailable, "compliance", v, map[string]any{"Days": days, "DayChoices": complianceDays,
			"Error": "The record store or the inventory is unavailable; retry."})
		return
	}
	c.render(w, r, http.StatusOK, "compliance", v, data)
}

// PrepareCompliance keeps the record store's windows for the Compliance
// page's periods made, at start and a minute after each UTC midnight, so
// that no reader waits for one to be made (a window over millions of
// records takes a fraction of a second; docs/performance.md). It returns
// when ctx ends.
func (c *Console) PrepareCompliance(ctx context.Context) {
	if c.cfg.Records == nil {
		return
	}
	for {
		now := c.prepareCompliance(ctx)
		t := time.NewTimer(now.Truncate(24 * time.Hour).Add(24*time.Hour + time.Minute).Sub(now))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// prepareCompliance makes the windows of today's periods; it returns the
// time it took as now (UTC).
func (c *Console) prepareCompliance(ctx context.Context) time.Time {
	now := c.cfg.Now().UTC()
	for _, days := range complianceDays {
		if _, err := c.cfg.Records.PrepareWindow(ctx, complianceSince(now, days)); err != nil && ctx.Err() == nil {
			c.cfg.Logger.Warn("console: compliance window not prepared; its first reader makes it", "days", days, "error", err)
		}
	}
	return now
}

// complianceSince is the start of the last days UTC days, today's
// included: the rollups count days.
func complianceSince(now time.Time, days int) time.Time {
	return now.UTC().Truncate(24 * time.Hour).Add(-time.Duration(days-1) * 24 * time.Hour)
}

// complianceTTL is how long the Compliance page's figures are reused: they
// aggregate every decision of the period (seconds at millions of records,
// docs/performance.md), and an auditor's question does not change by the
// second.
const complianceTTL = time.Minute

type complianceEntry struct {
	at   time.Time
	data map[string]any
}

// complianceData returns the figures of the last days, computed at most
// complianceTTL ago.
func (c *Console) complianceData(ctx context.Context, days int) (map[string]any, error) {
	now := c.cfg.Now()
	c.compMu.Lock()
	defer c.compMu.Unlock() // one computation at a time
	if e := c.compCache[days]; e != nil && now.Sub(e.at) < complianceTTL && !now.Before(e.at) {
		return e.data, nil
	}
	since := complianceSince(now, days)
	data := map[string]any{"Days": days, "DayChoices": complianceDays, "Since": since, "Grace": evidence.PropagationBound, "At": now}
	newest, err := c.cfg.Records.Find(ctx, recordstore.Query{Limit: 1, Newest: true})
	if err != nil {
		return nil, err
	}
	if len(newest.Records) > 0 {
		data["Newest"] = newest.Records[0].Record
	}
	logs, err := c.cfg.Records.Logs(ctx)
	if err != nil {
		return nil, err
	}
	data["Logs"] = logs
	denials, err := c.cfg.Records.DenialsByReason(ctx, since)
	if err != nil {
		return nil, err
	}
	data["Denials"] = denials
	ops, rows, truncated, err := c.matrix(ctx, since)
	if err != nil {
		return nil, err
	}
	data["Operations"], data["Matrix"], data["MatrixTruncated"] = ops, rows, truncated
	revs, err := c.lastRevocations(ctx)
	if err != nil {
		return nil, err
	}
	data["Revocations"] = revs
	if c.compCache == nil {
		c.compCache = map[int]*complianceEntry{}
	}
	c.compCache[days] = &complianceEntry{at: now, data: data}
	return data, nil
}

// matrix lays out the agents × operations matrix since since: the busiest
// agents as rows, the most used operations as columns, and each agent's
// scopes no allowed decision used.
func (c *Console) matrix(ctx context.Context, since time.Time) ([]string, []matrixRow, bool, error) {
	opCounts, err := c.cfg.Records.Operations(ctx, since, matrixOperations+1)
	if err != nil {
		return nil, nil, false, err
	}
	top, err := c.cfg.Records.TopAgents(ctx, since, matrixAgents+1)
	if err != nil {
		return nil, nil, false, err
	}
	truncated := len(opCounts) > matrixOperations || len(top) > matrixAgents
	var ops, agents []string
	for i := range min(len(opCounts), matrixOperations) {
		ops = append(ops, opCounts[i].Key)
	}
	for i := range min(len(top), matrixAgents) {
		agents = append(agents, top[i].Key)
	}
	cells, err := c.cfg.Records.AgentOperations(ctx, since, agents)
	if err != nil {
		return nil, nil, false, err
	}
	sort.Strings(ops)
	sort.Strings(agents)
	col := map[string]int{}
	for i, o := range ops {
		col[o] = i
	}
	row := map[string]*matrixRow{}
	used := map[string]map[string]bool{}
	out := make([]matrixRow, len(agents))
	for i, a := range agents {
		out[i].SPIFFEID, out[i].Cells = a, make([]*recordstore.AgentOperation, len(ops))
		row[a], used[a] = &out[i], map[string]bool{}
	}
	for i := range cells {
		x := &cells[i]
		mr := row[x.SPIFFEID]
		if mr == nil {
			continue
		}
		mr.Tenant, mr.Agent = x.Tenant, x.Agent
		if x.Allowed > 0 {
			used[x.SPIFFEID][x.Operation] = true
		}
		if j, ok := col[x.Operation]; ok {
			mr.Cells[j] = x
		}
	}
	for i := range out {
		certs, err := c.cfg.Authority.List(ca.ListFilter{TrustDomain: out[i].Tenant, AgentID: out[i].Agent})
		if err != nil || len(certs) == 0 {
			continue
		}
		for _, s := range certs[len(certs)-1].Scopes {
			if !used[out[i].SPIFFEID][s] {
				out[i].Unused = append(out[i].Unused, s)
			}
		}
	}
	return ops, out, truncated, nil
}

// lastRevocations are the newest agent revocations of the change log with,
// on each log, the agent's first decision denied for the revocation.
// Revoking an agent writes an event per certificate and one for the agent,
// at one time: they are one revocation, one row (the agent's event when
// there is one), and the records are read once for it.
func (c *Console) lastRevocations(ctx context.Context) ([]revocationRow, error) {
	events, err := c.cfg.Authority.LastEvents(lastRevocations*revocationEvents, "revoke", "agent_revoke")
	if err != nil {
		return nil, err
	}
	type key struct {
		spiffeID string
		at       time.Time
	}
	var out []revocationRow
	at := map[key]int{}
	for _, e := range events {
		if e.AgentID == "" {
			continue
		}
		k := key{ca.SPIFFEID(e.TrustDomain, e.AgentID), e.At}
		if i, ok := at[k]; ok {
			if e.Event == "agent_revoke" {
				out[i].Event = e
			}
			continue
		}
		if len(out) == lastRevocations {
			continue
		}
		at[k] = len(out)
		out = append(out, revocationRow{Event: e, SPIFFEID: k.spiffeID})
	}
	for i := range out {
		rr := &out[i]
		first, allowed, err := c.cfg.Records.AfterRevocation(ctx, rr.SPIFFEID, rr.At, evidence.PropagationBound,
			string(reason.CertificateRevoked), string(reason.AgentRevoked))
		if err != nil {
			return nil, err
		}
		for log, t := range first {
			rr.Logs = append(rr.Logs, logEffect{Log: log, At: t, Took: t.Sub(rr.At).Round(time.Millisecond)})
		}
		sort.Slice(rr.Logs, func(i, j int) bool { return rr.Logs[i].Log < rr.Logs[j].Log })
		rr.AllowedAfter = allowed
	}
	return out, nil
}

// heavy lets one whole-log verification or evidence pack run at a
// time: each reads every stored record.
var errBusy = errors.New("another verification or evidence pack is running: retry in a moment")

func (c *Console) heavy() (func(), error) {
	select {
	case c.heavySem <- struct{}{}:
		return func() { <-c.heavySem }, nil
	default:
		return nil, errBusy
	}
}

// verifyLog re-verifies a whole stored log, or the change log, on request.
func (c *Console) verifyLog(w http.ResponseWriter, r *http.Request, v *viewer) {
	release, err := c.heavy()
	if err != nil {
		c.render(w, r, http.StatusTooManyRequests, "message", v, map[string]string{"Title": "Busy", "Text": err.Error()})
		return
	}
	defer release()
	data := map[string]any{}
	if log := r.URL.Query().Get("log"); log != "" {
		if c.cfg.Records == nil {
			c.render(w, r, http.StatusServiceUnavailable, "message", v, map[string]string{"Title": "No record store", "Text": "This control plane has no record store."})
			return
		}
		start := time.Now()
		res, err := c.cfg.Records.Verify(r.Context(), log, nil)
		if err != nil {
			c.cfg.Logger.Error("console: verify log", "log", log, "error", err)
			c.render(w, r, http.StatusNotFound, "message", v, map[string]string{"Title": "Not verified", "Text": fmt.Sprintf("Log %q could not be read: see the control plane's log.", log)})
			return
		}
		data["Log"], data["Took"] = res, time.Since(start).Round(time.Millisecond)
	} else {
		pubPEM, err := os.ReadFile(ca.ChangeLogKeyPath(c.cfg.Authority.DataDir()))
		var res *ca.ChangeLogResult
		if err == nil {
			var pub ed25519.PublicKey
			if pub, err = ca.ParseChangeLogKey(pubPEM); err == nil {
				res, err = c.cfg.Authority.VerifyChangeLog(pub)
			}
		}
		if err != nil {
			c.cfg.Logger.Error("console: verify change log", "error", err)
			data["ChangeLogErr"] = err.Error()
		}
		data["ChangeLog"] = res
	}
	c.render(w, r, http.StatusOK, "verified", v, data)
}

// storeLog is one log of the record store as an evidence source.
type storeLog struct {
	s            *recordstore.Store
	name, server string
}

func (l storeLog) Verify(ctx context.Context) (evidence.LogSource, error) {
	res, err := l.s.Verify(ctx, l.name, nil)
	if err != nil {
		return evidence.LogSource{}, err
	}
	src := evidence.LogSource{Server: l.server, Name: l.name, Records: res.Records, Root: res.Root, Verified: res.Problem == nil}
	if res.Problem != nil {
		src.Problem = res.Problem.Error()
	}
	return src, nil
}

func (l storeLog) Scan(ctx context.Context, from, to time.Time, each func(evidence.Scanned) error) (int, error) {
	q := recordstore.Query{Log: l.name, Since: from, Until: to, Limit: recordstore.MaxLimit}
	for {
		p, err := l.s.Find(ctx, q)
		if err != nil {
			return 0, err
		}
		for _, st := range p.Records {
			if err := each(evidence.Scanned{Record: st.Record}); err != nil {
				return 0, err
			}
		}
		if p.Next == "" {
			return 0, nil
		}
		q.After = p.Next
	}
}

// evidencePack builds the evidence pack (internal/evidence) for the last
// days from this control plane's store and inventory, signs it, and sends
// it as a download.
func (c *Console) evidencePack(w http.ResponseWriter, r *http.Request, v *viewer) {
	if c.cfg.Records == nil {
		c.render(w, r, http.StatusServiceUnavailable, "message", v, map[string]string{"Title": "No record store", "Text": "This control plane has no record store."})
		return
	}
	if c.cfg.PackKey == nil { // an unsigned pack proves nothing
		c.render(w, r, http.StatusServiceUnavailable, "message", v, map[string]string{"Title": "No evidence pack", "Text": "This control plane has no key to sign evidence packs: use agentauthz audit report --server."})
		return
	}
	days, err := strconv.Atoi(r.PostForm.Get("days"))
	if err != nil || days < 1 || days > 366 {
		c.render(w, r, http.StatusBadRequest, "message", v, map[string]string{"Title": "Not done", "Text": "The period is a number of days from 1 to 366."})
		return
	}
	format := r.PostForm.Get("format")
	if format != "json" {
		format = "html"
	}
	release, err := c.heavy()
	if err != nil {
		c.render(w, r, http.StatusTooManyRequests, "message", v, map[string]string{"Title": "Busy", "Text": err.Error()})
		return
	}
	defer release()
	ctx := r.Context()
	now := c.cfg.Now()
	// The pack's reproduce-with commands query this control plane.
	in := evidence.Inputs{Server: "https://" + r.Host, From: now.Add(-time.Duration(days) * 24 * time.Hour), To: now, Now: now, Sample: 10, Seed: uint64(now.Unix())}
	logs, err := c.cfg.Records.Logs(ctx)
	if err == nil && len(logs) == 0 {
		err = errors.New("the record store holds no decision log yet")
	}
	if err == nil {
		for _, l := range logs {
			in.Sources = append(in.Sources, storeLog{s: c.cfg.Records, name: l.Log, server: in.Server})
		}
		in.Inventory, err = evidence.ReadInventory(c.cfg.Authority, c.cfg.Authority.DataDir())
	}
	var rep *evidence.Report
	if err == nil {
		rep, err = evidence.Collect(ctx, in)
	}
	var buf bytes.Buffer
	if err == nil {
		if format == "json" {
			err = rep.WriteJSON(&buf)
		} else {
			err = rep.WriteHTML(&buf)
		}
	}
	// Signed as `audit report` signs (evidence.Sign), sent as a zip of the
	// pack, NAME.sig and NAME.pub.pem: `audit report-verify NAME` checks it.
	name := "evidence-" + now.UTC().Format("2006-01-02T150405Z")
	var signed *evidence.Signed
	if err == nil {
		signed, err = evidence.Sign(c.cfg.PackKey, buf.Bytes())
	}
	var zipped bytes.Buffer
	if err == nil {
		err = signed.WriteZip(&zipped, name+"."+format, now)
	}
	if err != nil {
		c.cfg.Logger.Error("console: evidence pack", "error", err)
		c.render(w, r, http.StatusServiceUnavailable, "message", v, map[string]string{"Title": "No evidence pack", "Text": "The evidence pack could not be built: " + err.Error()})
		return
	}
	if err := c.cfg.Authority.RecordEvent("", "", "", "console_evidence", v.Op.String(), fmt.Sprintf("evidence pack of the last %d days (%s)", days, format)); err != nil {
		c.cfg.Logger.Error("console: record evidence pack", "error", err)
	}
	w.Header().Set("Content-Type", "application/zip")
	w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", name+".zip"))
	_, _ = w.Write(zipped.Bytes())
}
