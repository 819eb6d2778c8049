package extproc

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
)

// Decision is what a signed response is bound to: an allowed decision and
// the request it allowed.
type Decision struct {
	ID         string
	AgentID    string
	TrustLevel string
	Operation  string
	Method     string
	Host       string
	Path       string // without the query, as the decision record holds it
	At         time.Time
}

func decisionOf(r *decisionlog.Record) Decision {
	return Decision{
		ID: r.DecisionID, AgentID: r.Agent.ID, TrustLevel: r.Agent.TrustLevel, Operation: r.Request.Operation,
		Method: r.Request.Method, Host: r.Request.Host, Path: r.Request.Path, At: r.Time,
	}
}

// Why a request has no decision to bind its response to.
var (
	ErrNoDecisionID = errors.New("request carries no x-decision-id")
	ErrNoDecision   = errors.New("no allowed decision with this id")
	ErrMismatch     = errors.New("the decision was for another request")
)

// Table holds the allowed decisions of this process until their responses
// come, and falls back to the receipt (x-agent-receipt, the signed record)
// for decisions another replica made or this one no longer holds.
type Table struct {
	ttl  time.Duration
	now  func() time.Time
	keys func() decisionlog.KeySet

	mu   sync.Mutex
	m    map[string]Decision
	ring []string // insertion order, for evicting the oldest
	next int
}

// NewTable keeps at most size decisions for ttl each. keys returns the
// public keys receipts must be signed with (nil: no receipt fallback).
func NewTable(size int, ttl time.Duration, keys func() decisionlog.KeySet, now func() time.Time) *Table {
	if now == nil {
		now = time.Now
	}
	return &Table{ttl: ttl, now: now, keys: keys, m: make(map[string]Decision, min(size, 4096)), ring: make([]string, size)}
}

// Note keeps an allowed decision for its response.
func (t *Table) Note(r *decisionlog.Record) {
	if !r.Decision.Allowed || r.Kind != "" && r.Kind != decisionlog.KindDecision {
		return
	}
	d := decisionOf(r)
	t.mu.Lock()
	if old := t.ring[t.next]; old != "" {
		delete(t.m, old)
	}
	t.ring[t.next] = d.ID
	t.next = (t.next + 1) % len(t.ring)
	t.m[d.ID] = d
	t.mu.Unlock()
}

// Lookup finds the allowed decision id for the request (method, host, path
// as Envoy's ext_proc filter sees them) and removes it: one decision binds
// one response. receipt is the request's x-agent-receipt, used when the
// decision is not held here.
func (t *Table) Lookup(id, receipt, method, host, path string) (Decision, string, error) {
	if id == "" {
		return Decision{}, "", ErrNoDecisionID
	}
	t.mu.Lock()
	d, ok := t.m[id]
	if ok {
		delete(t.m, id)
	}
	t.mu.Unlock()
	src := "local"
	if !ok {
		var err error
		if d, err = t.fromReceipt(id, receipt); err != nil {
			return Decision{}, "", err
		}
		src = "receipt"
	}
	if age := t.now().Sub(d.At); age > t.ttl || age < -time.Minute {
		return Decision{}, "", fmt.Errorf("%w: decided %v ago, longer than %v", ErrNoDecision, age.Round(time.Millisecond), t.ttl)
	}
	if !sameRequest(d, method, host, path) {
		return Decision{}, "", fmt.Errorf("%w: decided %s %s%s, response to %s %s%s", ErrMismatch, d.Method, d.Host, d.Path, method, host, pathOnly(path))
	}
	return d, src, nil
}

func (t *Table) fromReceipt(id, receipt string) (Decision, error) {
	if receipt == "" || t.keys == nil {
		return Decision{}, ErrNoDecision
	}
	if !strings.HasPrefix(receipt, "ey") {
		// A compact (v2) receipt names its record by hash only: it proves
		// that the log holds some record, not which decision this is.
		return Decision{}, fmt.Errorf("%w: a compact receipt does not carry its record; the decision must be held by this replica", ErrNoDecision)
	}
	r, err := decisionlog.VerifyRecord(receipt, t.keys()) // a v1 receipt: the signed record itself
	if err != nil {
		return Decision{}, fmt.Errorf("%w: receipt: %v", ErrNoDecision, err)
	}
	if r.DecisionID != id || !r.Decision.Allowed || r.Kind != "" && r.Kind != decisionlog.KindDecision {
		return Decision{}, fmt.Errorf("%w: the receipt is for another or a denied decision", ErrNoDecision)
	}
	return decisionOf(r), nil
}

// sameRequest compares what the decision recorded with the request the
// response answers. The record's path has no query and is cut at 2,048
// bytes (extauthz's pathOnly).
func sameRequest(d Decision, method, host, path string) bool {
	p := pathOnly(path)
	if len(d.Path) == 2048 {
		p = p[:min(len(p), 2048)]
	}
	return d.Method == method && strings.EqualFold(d.Host, host) && d.Path == p
}

func pathOnly(p string) string {
	if i := strings.IndexByte(p, '?'); i >= 0 {
		return p[:i]
	}
	return p
}

// Appender is what extauthz records decisions with.
type Appender interface {
	Append(ctx context.Context, rec *decisionlog.Record) (decisionlog.Receipt, error)
}

// NoteAllowed wraps the decision log so every allowed decision it records
// is also noted in t for its response.
func NoteAllowed(a Appender, t *Table) Appender { return noting{a, t} }

type noting struct {
	a Appender
	t *Table
}

func (n noting) Append(ctx context.Context, rec *decisionlog.Record) (decisionlog.Receipt, error) {
	r, err := n.a.Append(ctx, rec)
	if err == nil {
		n.t.Note(rec)
	}
	return r, err
}
