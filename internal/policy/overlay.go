package policy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
)

// The restrictions overlay: restrictions pushed by the control plane reach
// policy as data.agentauthz.restrictions, merged with the ones in the local
// policy data so that the stricter wins. Policies and `opa test` see one
// document and need no change.

// baseDoc is what a state was compiled from before the overlay was merged
// in, so a new overlay recompiles without reloading the policy.
type baseDoc struct {
	modules  map[string]*ast.Module
	data     map[string]any
	revision string
}

// RestrictionKey is the key of an agent's entry in
// data.agentauthz.restrictions: its SPIFFE ID (docs/policies.md,
// "Restrictions").
func RestrictionKey(tenant, agentID string) string { return "spiffe://" + tenant + "/agent/" + agentID }

// SetRestrictions replaces one tenant's restrictions from the control plane
// (a JSON object by agent id, entries as in data.agentauthz.restrictions) and
// recompiles the serving policy with them. Restrictions that do not pass
// ValidateRestrictions are refused; on any error the previous policy, with
// the previous restrictions, keeps serving.
func (e *Engine) SetRestrictions(tenant string, restrictions json.RawMessage) error {
	var byID map[string]any
	if err := json.Unmarshal(restrictions, &byID); err != nil {
		e.metrics.reloads.WithLabelValues("failure").Inc()
		e.log.Error("restrictions from the control plane refused; previous ones stay in force", "tenant", tenant, "error", err)
		return fmt.Errorf("policy: restrictions of %s: %w", tenant, err)
	}
	m := make(map[string]any, len(byID))
	for id, r := range byID {
		m[RestrictionKey(tenant, id)] = r
	}
	if err := ValidateRestrictions(m); err != nil {
		e.metrics.reloads.WithLabelValues("failure").Inc()
		e.log.Error("restrictions from the control plane refused; previous ones stay in force", "tenant", tenant, "error", err)
		return err
	}
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	if e.overlay == nil {
		e.overlay = map[string]map[string]any{}
	}
	if len(m) == 0 {
		delete(e.overlay, tenant)
	} else {
		e.overlay[tenant] = m
	}
	return e.recompileLocked("restrictions")
}

// recompileLocked compiles the serving policy's base again with the current
// overlay and swaps it in. reloadMu is held.
func (e *Engine) recompileLocked(why string) error {
	cur := e.cur.Load()
	if cur == nil {
		return nil // the first load merges the overlay in
	}
	s, err := e.compile(context.Background(), cur.base.modules, cur.base.data, cur.base.revision)
	if err != nil {
		e.metrics.reloads.WithLabelValues("failure").Inc()
		e.log.Error("policy with new "+why+" refused; previous policy keeps serving", "revision", cur.revision, "error", err)
		return err
	}
	e.cur.Store(s)
	e.metrics.reloads.WithLabelValues("success").Inc()
	e.metrics.setRevision(s.revision)
	e.log.Info("policy recompiled with new "+why, "revision", s.revision, "previous_revision", cur.revision)
	return nil
}

// withOverlay returns data with the overlay merged into
// data.agentauthz.restrictions, the revision that names both, and the
// earliest time a merged entry must be merged again (zero: never). data is
// not modified. reloadMu is held.
func (e *Engine) withOverlay(data map[string]any, revision string) (map[string]any, string, time.Time) {
	if len(e.overlay) == 0 {
		return data, revision, time.Time{}
	}
	pushed := map[string]any{}
	for _, tenant := range slices.Sorted(maps.Keys(e.overlay)) {
		for k, entry := range e.overlay[tenant] {
			if prev, ok := pushed[k]; ok {
				entry, _ = mergeRestriction(prev, entry)
			}
			pushed[k] = entry
		}
	}
	out := maps.Clone(data)
	root, _ := out["agentauthz"].(map[string]any)
	root = maps.Clone(root)
	if root == nil {
		root = map[string]any{}
	}
	local, _ := root["restrictions"].(map[string]any)
	merged := maps.Clone(local)
	if merged == nil {
		merged = map[string]any{}
	}
	var remerge time.Time
	now := e.now()
	for k, entry := range pushed {
		if prev, ok := merged[k]; ok && inForce(prev, now) {
			var at time.Time
			entry, at = mergeRestriction(prev, entry)
			if !at.IsZero() && (remerge.IsZero() || at.Before(remerge)) {
				remerge = at
			}
		}
		merged[k] = entry
	}
	root["restrictions"] = merged
	out["agentauthz"] = root
	js, _ := json.Marshal(pushed) // map keys sorted, strings decoded from JSON (valid UTF-8): stable on any toolchain
	sum := sha256.Sum256(js)
	return out, revision + "+restrictions:" + hex.EncodeToString(sum[:6]), remerge
}

// inForce reports whether a restriction entry applies at now: no until, or
// one that does not parse (the policy keeps those in force), or a future one.
func inForce(entry any, now time.Time) bool {
	m, ok := entry.(map[string]any)
	if !ok {
		return true
	}
	u, ok := m["until"].(string)
	if !ok {
		return true
	}
	t, err := time.Parse(time.RFC3339, u)
	return err != nil || now.Before(t)
}

// mergeRestriction combines two entries for one agent so that the stricter
// wins field by field: quarantined if either is, the lower max_trust, the
// union of removed scopes. The result lasts as long as the longer of the two
// (no until if either has none); at is the earlier until, when the shorter
// one ends and the two must be merged again (zero when they end together or
// never). A value that is not of the expected type is kept from the entry
// that has it, so that the policy data validation still sees it.
func mergeRestriction(a, b any) (merged any, at time.Time) {
	ma, oka := a.(map[string]any)
	mb, okb := b.(map[string]any)
	if !oka || !okb {
		if !oka {
			return a, time.Time{}
		}
		return b, time.Time{}
	}
	out := maps.Clone(ma)
	if qa, _ := ma["quarantined"].(bool); !qa {
		if qb, ok := mb["quarantined"]; ok {
			out["quarantined"] = qb
		}
	}
	if tb, ok := mb["max_trust"]; ok {
		ta, oka := number(ma["max_trust"])
		_, hasA := ma["max_trust"]
		nb, okb := number(tb)
		switch {
		case !okb:
			out["max_trust"] = tb // malformed: let the data validation see it
		case hasA && !oka:
			// a's is malformed: keep it for the validation
		case !hasA || nb < ta:
			out["max_trust"] = nb
		}
	}
	sa, oka := ma["removed_scopes"].([]any)
	sb, okb := anyList(mb["removed_scopes"])
	if okb && (oka || ma["removed_scopes"] == nil) {
		set := map[string]bool{}
		var all []string
		for _, s := range append(slices.Clone(sa), sb...) {
			if str, ok := s.(string); ok && !set[str] {
				set[str] = true
				all = append(all, str)
			}
		}
		sort.Strings(all)
		out["removed_scopes"] = toAnySlice(all)
	}
	ua, hasA := ma["until"].(string)
	ub, hasB := mb["until"].(string)
	ta, errA := time.Parse(time.RFC3339, ua)
	tb, errB := time.Parse(time.RFC3339, ub)
	switch {
	case !hasA || !hasB || errA != nil || errB != nil:
		// No end, or an end that does not parse (in force for the policy):
		// the merged entry has none; re-merge when the other one ends.
		delete(out, "until")
		if hasA && errA == nil {
			at = ta
		}
		if hasB && errB == nil {
			at = tb
		}
	case ta.Equal(tb):
		out["until"] = ua
	case ta.After(tb):
		out["until"], at = ua, tb
	default:
		out["until"], at = ub, ta
	}
	return out, at
}

func number(v any) (float64, bool) {
	switch n := v.(type) {
	case float64:
		return n, true
	case int:
		return float64(n), true
	case json.Number:
		f, err := n.Float64()
		return f, err == nil
	}
	return 0, false
}

func anyList(v any) ([]any, bool) {
	switch s := v.(type) {
	case []any:
		return s, true
	case []string:
		return toAnySlice(s), true
	}
	return nil, false
}

// scheduleRemergeLocked arranges a recompile at t, when a merged entry's
// shorter restriction ends (zero: none needed). reloadMu is held.
func (e *Engine) scheduleRemergeLocked(t time.Time) {
	if e.remerge != nil {
		e.remerge.Stop()
		e.remerge = nil
	}
	if t.IsZero() {
		return
	}
	e.remerge = time.AfterFunc(max(time.Until(t), 0)+time.Millisecond, func() {
		e.reloadMu.Lock()
		defer e.reloadMu.Unlock()
		_ = e.recompileLocked("restriction expiry") // logged and counted inside
	})
}

func toAnySlice(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}
