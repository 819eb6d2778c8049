package extproc

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

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
//
// Envoy's ext_proc filter asks for a decision milliseconds after ext_authz
// made it, so the table holds the decisions in flight; when Envoy runs
// ext_authz without ext_proc, nothing is ever taken and the table stays
// full. Either way it costs what its bound says and no more: entries are
// fixed-size values without pointers (the id's 16 bytes, a hash of the
// request line, an integer time, an index into the few distinct agent,
// trust level and operation names in flight), in a ring kept in insertion
// order (a decision still waiting when size later ones were noted is
// dropped) and found through an open-addressing index. Nothing is
// allocated per decision.
type Table struct {
	ttl  int64 // nanoseconds
	now  func() time.Time
	log  hclog.Logger
	size int

	mu    sync.Mutex
	ring  []entry
	next  int
	index []uint32 // ring position + 1, 0 empty; linear probing
	shift uint     // 64 - log2(len(index))
	held  int      // entries in the ring
	who   interned
	// For the operator: decisions dropped to make room, decisions asked
	// for (ext_proc request headers seen), and when the last warning was.
	evicted, lookups uint64
	warnedAt         int64
}

// entry is one allowed decision waiting for its response: 64 bytes.
type entry struct {
	id      decisionKey // zero: the slot is empty
	request [sha256.Size]byte
	at      int64 // the decision's time, Unix nanoseconds
	who     uint32
}

// decisionKey is a decision id, a UUID, as its 16 bytes.
type decisionKey [16]byte

// TableOptions configures a Table.
type TableOptions struct {
	Size       int           // decisions held at most (response_signing.max_pending)
	TTL        time.Duration // how long one binds its response (response_signing.decision_ttl)
	Now        func() time.Time
	Logger     hclog.Logger          // warns when decisions are dropped unused; nil: silent
	Registerer prometheus.Registerer // nil: unregistered
}

// warnEvery spaces the warnings about dropped decisions.
const warnEvery = time.Minute

// NewTable makes an empty table of o.Size decisions: 64 bytes each, and
// 8–16 more for the index.
func NewTable(o TableOptions) *Table {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	size := max(o.Size, 1)
	bits := max(bitsFor(2*size), 3) // at most half full: short probes
	t := &Table{ttl: int64(o.TTL), now: o.Now, log: o.Logger, size: size,
		ring: make([]entry, size), index: make([]uint32, 1<<bits), shift: 64 - bits,
		who: interned{ids: make(map[names]uint32), max: size + 1024}}
	if o.Registerer != nil {
		o.Registerer.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "agentauthz_extproc_decisions_pending",
				Help: "Allowed decisions held for their responses (at most response_signing.max_pending); near the bound with no ext_proc responses, Envoy is not running the ext_proc filter.",
			}, func() float64 { t.mu.Lock(); defer t.mu.Unlock(); return float64(t.held) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "agentauthz_extproc_decisions_evicted_total",
				Help: "Allowed decisions dropped from a full table before any response asked for them, oldest first; such a response is refused unless Envoy forwards its ext_authz metadata (docs/responses.md).",
			}, func() float64 { t.mu.Lock(); defer t.mu.Unlock(); return float64(t.evicted) }),
		)
	}
	return t
}

// bitsFor is the number of bits that count to n.
func bitsFor(n int) uint {
	b := uint(0)
	for 1<<b < n {
		b++
	}
	return b
}

// Note keeps an allowed decision for its response. A decision id that is
// not a UUID (agentauthz makes only UUIDs) is not kept.
func (t *Table) Note(r *decisionlog.Record) {
	if !r.Decision.Allowed || r.Kind != "" && r.Kind != decisionlog.KindDecision {
		return
	}
	id, ok := parseDecisionID(r.DecisionID)
	if !ok {
		return
	}
	e := entry{id: id, request: requestKey(r.Request.Method, r.Request.Host, r.Request.Path), at: r.Time.UnixNano()}
	n := names{r.Agent.ID, r.Agent.TrustLevel, r.Request.Operation}
	var warn bool
	var evicted, lookups uint64
	t.mu.Lock()
	if slot, ok := t.find(id); ok { // noted again: the latest wins
		t.remove(slot)
	}
	pos := t.next
	t.next = (t.next + 1) % len(t.ring)
	if old := &t.ring[pos]; old.id != (decisionKey{}) {
		slot, _ := t.find(old.id)
		t.remove(slot)
		t.evicted++
		if e.at-t.warnedAt >= int64(warnEvery) {
			warn, t.warnedAt, evicted, lookups = true, e.at, t.evicted, t.lookups
		}
	}
	e.who = t.who.intern(n)
	t.ring[pos] = e
	t.insert(id, pos)
	t.held++
	t.mu.Unlock()
	if !warn {
		return
	}
	if lookups == 0 {
		t.log.Warn("allowed decisions fill the response-signing table and no ext_proc stream has asked for one since startup: "+
			"is Envoy's ext_proc filter configured (docs/envoy.md)? Responses are not signed; response_signing.disabled: true says so and frees the table",
			"max_pending", t.size, "evicted", evicted)
		return
	}
	t.log.Warn("allowed decisions dropped from the full response-signing table before their responses came: "+
		"those responses are refused (403 response_no_decision) unless Envoy forwards its ext_authz metadata; raise response_signing.max_pending",
		"max_pending", t.size, "evicted", evicted)
}

// home is where id's probe starts. Ids are UUIDv7s, random in their last 8
// bytes; the multiplication spreads any other id too.
func (t *Table) home(id decisionKey) int {
	x := binary.LittleEndian.Uint64(id[:8]) ^ binary.LittleEndian.Uint64(id[8:])
	return int((x * 0x9e3779b97f4a7c15) >> t.shift)
}

// find returns the index slot holding id.
func (t *Table) find(id decisionKey) (int, bool) {
	mask := len(t.index) - 1
	for i := t.home(id); ; i = (i + 1) & mask {
		p := t.index[i]
		if p == 0 {
			return 0, false
		}
		if t.ring[p-1].id == id {
			return i, true
		}
	}
}

func (t *Table) insert(id decisionKey, pos int) {
	mask := len(t.index) - 1
	i := t.home(id)
	for t.index[i] != 0 {
		i = (i + 1) & mask
	}
	t.index[i] = uint32(pos + 1)
}

// remove empties index slot i and its ring entry, then shifts back the
// entries after it that would no longer be found (linear probing without
// tombstones).
func (t *Table) remove(i int) {
	e := &t.ring[t.index[i]-1]
	t.who.release(e.who)
	*e = entry{}
	t.held--
	mask := len(t.index) - 1
	for j := (i + 1) & mask; t.index[j] != 0; j = (j + 1) & mask {
		// The entry at j moves to i unless its home lies cyclically in (i, j].
		if h := t.home(t.ring[t.index[j]-1].id); (j-h)&mask < (j-i)&mask {
			continue
		}
		t.index[i] = t.index[j]
		i = j
	}
	t.index[i] = 0
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
	key, ok := parseDecisionID(id)
	var e entry
	var n names
	t.mu.Lock()
	t.lookups++
	if ok {
		var slot int
		if slot, ok = t.find(key); ok {
			e = t.ring[t.index[slot]-1]
			n = t.who.list[e.who].names
			t.remove(slot)
		}
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
	if age := t.now().UnixNano() - e.at; age > t.ttl || age < -int64(time.Minute) {
		return Decision{}, "", fmt.Errorf("%w: decided %v ago, longer than %v", ErrNoDecision,
			time.Duration(age).Round(time.Millisecond), time.Duration(t.ttl))
	}
	if e.request != requestKey(method, host, path) {
		return Decision{}, "", fmt.Errorf("%w: the response is to %s %s%s", ErrMismatch, method, host, pathOnly(path))
	}
	return Decision{ID: id, AgentID: n.agentID, TrustLevel: n.trustLevel, Operation: n.operation,
		Method: method, Host: host, Path: pathOnly(path), At: time.Unix(0, e.at).UTC()}, "local", nil
}

// parseDecisionID reads a UUID in the form agentauthz writes it (RFC 9562,
// lowercase hex with hyphens): one spelling per id, so the response carries
// the id exactly as its decision record does.
func parseDecisionID(s string) (decisionKey, bool) {
	var k decisionKey
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return k, false
	}
	j := 0
	for i := 0; i < 36; i += 2 {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			i++
		}
		hi, lo := hexValue[s[i]], hexValue[s[i+1]]
		if hi|lo > 0xf {
			return decisionKey{}, false
		}
		k[j] = hi<<4 | lo
		j++
	}
	return k, k != decisionKey{}
}

// hexValue is each lowercase hex digit's value; 0xff for any other byte.
var hexValue = func() (v [256]byte) {
	for i := range v {
		v[i] = 0xff
	}
	for c := byte('0'); c <= '9'; c++ {
		v[c] = c - '0'
	}
	for c := byte('a'); c <= 'f'; c++ {
		v[c] = c - 'a' + 10
	}
	return v
}()

// names are what a signed response names besides the decision id.
type names struct{ agentID, trustLevel, operation string }

// interned keeps each distinct names once for the entries that refer to it
// by index: a few agents and operations are in flight at a time. An unused
// one is reclaimed only when the list reaches max, so an agent that makes
// one request at a time does not free and intern again on every request.
type interned struct {
	ids  map[names]uint32
	list []internedNames
	free []uint32
	max  int
}

type internedNames struct {
	names
	refs uint32
	used bool
}

func (in *interned) intern(n names) uint32 {
	i, ok := in.ids[n]
	if !ok {
		if len(in.free) == 0 && len(in.list) >= in.max {
			in.sweep()
		}
		if k := len(in.free); k > 0 {
			i, in.free = in.free[k-1], in.free[:k-1]
			in.list[i] = internedNames{names: n, used: true}
		} else {
			i = uint32(len(in.list))
			in.list = append(in.list, internedNames{names: n, used: true})
		}
		in.ids[n] = i
	}
	in.list[i].refs++
	return i
}

func (in *interned) release(i uint32) { in.list[i].refs-- }

// sweep frees the names no entry refers to. Entries are at most the
// table's size and max is larger, so it frees at least the difference.
func (in *interned) sweep() {
	for i := range in.list {
		if l := &in.list[i]; l.used && l.refs == 0 {
			delete(in.ids, l.names)
			*l = internedNames{}
			in.free = append(in.free, uint32(i))
		}
	}
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
