package extproc

import (
	"context"
	"crypto/sha256"
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

// held is an allowed decision waiting for its response. It keeps a hash of
// the request line rather than the line itself: a path may be 2 KiB, and
// max_pending of them would otherwise stay in memory.
type held struct {
	agentID, trustLevel, operation string
	at                             time.Time
	request                        [sha256.Size]byte
}

// requestKey is SHA-256 of method, host (lowercase) and path (without the
// query, cut at 2,048 bytes as the decision record's path is).
func requestKey(method, host, path string) [sha256.Size]byte {
	path = pathOnly(path)
	path = path[:min(len(path), 2048)]
	var buf [512]byte
	b := append(buf[:0], method...)
	b = append(b, 0)
	for i := 0; i < len(host); i++ {
		c := host[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b = append(b, c)
	}
	b = append(b, 0)
	b = append(b, path...)
	return sha256.Sum256(b)
}

// Why a request has no decision to bind its response to.
var (
	ErrNoDecisionID = errors.New("request carries no x-decision-id")
	ErrNoDecision   = errors.New("no allowed decision with this id")
	ErrMismatch     = errors.New("the decision was for another request")
)

// Table holds the allowed decisions of this process until their responses
// come. A decision another replica made (ext_authz and ext_proc are
// separate gRPC streams and may reach different replicas) is bound through
// what Envoy reports ext_authz decided for this very request (EnvoyDecision).
type Table struct {
	ttl time.Duration
	now func() time.Time

	mu   sync.Mutex
	m    map[string]held
	ring []string // insertion order, for evicting the oldest
	next int
}

// NewTable keeps at most size decisions for ttl each.
func NewTable(size int, ttl time.Duration, now func() time.Time) *Table {
	if now == nil {
		now = time.Now
	}
	return &Table{ttl: ttl, now: now, m: make(map[string]held, min(size, 4096)), ring: make([]string, size)}
}

// Note keeps an allowed decision for its response.
func (t *Table) Note(r *decisionlog.Record) {
	if !r.Decision.Allowed || r.Kind != "" && r.Kind != decisionlog.KindDecision {
		return
	}
	h := held{agentID: r.Agent.ID, trustLevel: r.Agent.TrustLevel, operation: r.Request.Operation, at: r.Time,
		request: requestKey(r.Request.Method, r.Request.Host, r.Request.Path)}
	t.mu.Lock()
	if old := t.ring[t.next]; old != "" {
		delete(t.m, old)
	}
	t.ring[t.next] = r.DecisionID
	t.next = (t.next + 1) % len(t.ring)
	t.m[r.DecisionID] = h
	t.mu.Unlock()
}

// EnvoyDecision is what Envoy's ext_authz filter recorded for this request
// in its dynamic metadata (namespace envoy.filters.http.ext_authz, from
// agentauthz's own answer), forwarded to the processor by the ext_proc
// filter (metadata_options.forwarding_namespaces). A client cannot set it:
// Envoy keeps it beside the request, and only Envoy, authenticated by
// mutual TLS like every caller of Check, reports it.
type EnvoyDecision struct {
	DecisionID string
	Reason     string
	AgentID    string
	TrustLevel string
	Operation  string
}

// Lookup finds the allowed decision id for the request (method, host, path
// as Envoy's ext_proc filter sees them) and removes it: one decision binds
// one response. When this process does not hold it, envoy (nil when the
// filter forwards no metadata) binds it.
func (t *Table) Lookup(id string, envoy *EnvoyDecision, method, host, path string) (Decision, string, error) {
	if id == "" {
		return Decision{}, "", ErrNoDecisionID
	}
	t.mu.Lock()
	h, ok := t.m[id]
	if ok {
		delete(t.m, id)
	}
	t.mu.Unlock()
	if !ok {
		if envoy == nil {
			return Decision{}, "", fmt.Errorf("%w: not made here, and Envoy forwards no ext_authz metadata", ErrNoDecision)
		}
		if envoy.DecisionID != id || envoy.Reason != "allowed" || envoy.AgentID == "" {
			return Decision{}, "", fmt.Errorf("%w: Envoy's ext_authz metadata is for decision %q (%s)", ErrNoDecision, envoy.DecisionID, envoy.Reason)
		}
		// Envoy reports the decision of this request, now: nothing to age.
		d := Decision{ID: id, AgentID: envoy.AgentID, TrustLevel: envoy.TrustLevel, Operation: envoy.Operation,
			Method: method, Host: host, Path: pathOnly(path), At: t.now()}
		return d, "envoy_metadata", nil
	}
	if age := t.now().Sub(h.at); age > t.ttl || age < -time.Minute {
		return Decision{}, "", fmt.Errorf("%w: decided %v ago, longer than %v", ErrNoDecision, age.Round(time.Millisecond), t.ttl)
	}
	if h.request != requestKey(method, host, path) {
		return Decision{}, "", fmt.Errorf("%w: the response is to %s %s%s", ErrMismatch, method, host, pathOnly(path))
	}
	return Decision{ID: id, AgentID: h.agentID, TrustLevel: h.trustLevel, Operation: h.operation,
		Method: method, Host: host, Path: pathOnly(path), At: h.at}, "local", nil
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
