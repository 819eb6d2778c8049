// Package simulate replays recorded decisions under a proposed policy: each
// record's request is decided again through the real decision path (the
// extauthz service with the policy engine), with the identity and the time
// the original decision had, and the differences are reported.
//
// What a record keeps is what can be replayed: the agent's attributes, the
// method, host, path (without its query), x-request-id, operation and source
// address. A policy that reads anything else (a header, the query, the body,
// the certificate's validity window) cannot be replayed exactly; the
// simulator says so for every decision it changes instead of guessing.
package simulate

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/hashicorp/go-hclog"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/extauthz"
	"github.com/agentauthz/agentauthz/internal/identity"
	"github.com/agentauthz/agentauthz/internal/policy"
	"github.com/agentauthz/agentauthz/internal/reason"
	"github.com/agentauthz/agentauthz/internal/server"
)

// Outcome is what one decision came to.
type Outcome struct {
	Allowed   bool   `json:"allowed"`
	Status    int    `json:"http_status,omitempty"`
	Reason    string `json:"reason"`
	Operation string `json:"operation,omitempty"`
}

func (o Outcome) String() string {
	if o.Allowed {
		return "allow"
	}
	return fmt.Sprintf("deny %d %s", o.Status, o.Reason)
}

// Replayer decides recorded requests again. It is not safe for concurrent
// use: it owns the clock of the policy it drives.
//
// Deciding is deterministic given the policy's input and the time the
// policy sees, so the Replayer remembers outcomes by what a record gives
// the decision path (memoKey): the agent, method, host, path and MCP
// messages, plus the request id and the source address only when the policy
// reads them. An outcome whose evaluation never read the clock
// (policy.ClockProbe) holds at every time; one that did (an "until" about
// to expire, a business-hours rule) is remembered only for the time the
// policy saw. The result is exactly what deciding every record would give
// (TestMemoisedReplayEqualsPerRecord).
type Replayer struct {
	engine *policy.Engine
	svc    *extauthz.Service
	ident  *fixedIdentity
	rec    *captureRecorder
	clock  *time.Time
	agents map[agentKey]*identity.Agent
	probe  policy.ClockProbe

	// memo is off for the straightforward per-record evaluation the
	// memoised one is tested against.
	memo          bool
	keyID, keySrc bool // the policy may read the request id, the source address
	hits          int  // records answered from the memo
	key           []byte
	outcomes      map[string]memoEntry
	timedOutcomes map[timedKey]Outcome
}

type memoEntry struct {
	out   Outcome
	timed bool // the evaluation read the clock: see timedOutcomes
}

type timedKey struct {
	key string
	at  int64 // the time the policy saw, Unix ns
}

// maxMemo bounds each of the Replayer's outcome tables; a full one starts
// again empty.
const maxMemo = 1 << 18

// NewReplayer returns a Replayer deciding through engine, whose clock (what
// time.now_ns returns in Rego) must read *clock: the Replayer sets it to each
// record's time before deciding.
func NewReplayer(engine *policy.Engine, clock *time.Time) (*Replayer, error) {
	r := &Replayer{engine: engine, ident: &fixedIdentity{}, rec: &captureRecorder{}, clock: clock, agents: map[agentKey]*identity.Agent{},
		outcomes: map[string]memoEntry{}, timedOutcomes: map[timedKey]Outcome{}}
	svc, err := extauthz.New(extauthz.Options{
		Identifier: r.ident,
		Revocation: notRevoked{},
		Policy:     server.PolicyAdapter(engine),
		Recorder:   r.rec,
		Logger:     hclog.NewNullLogger(),
		Metrics:    extauthz.NewMetrics(prometheus.NewRegistry()),
		Now:        func() time.Time { return *clock },
		Timeout:    10 * time.Second,
	})
	if err != nil {
		return nil, err
	}
	r.svc = svc
	// Outcomes are reused only for a policy whose decision provably
	// depends on the input paths it reads and on the clock alone (the
	// decision cache's analysis): one that reads the whole input or calls
	// another nondeterministic builtin is decided for every record.
	paths, unknown := engine.InputReads()
	r.memo = unknown == ""
	r.keyID = readsAny(paths, requestIDPaths)
	r.keySrc = readsAny(paths, sourcePaths)
	return r, nil
}

// The input paths the recorded request id and source address reach.
var (
	requestIDPaths = []ast.Ref{ast.MustParseRef("input.attributes.request.http.id"),
		ast.MustParseRef(`input.attributes.request.http.headers["x-request-id"]`)}
	sourcePaths = []ast.Ref{ast.MustParseRef("input.attributes.source")}
)

// readsAny reports whether a read of one of paths sees one of refs: one
// is a prefix of the other. A path that does not parse counts as a read.
func readsAny(paths []string, refs []ast.Ref) bool {
	for _, p := range paths {
		pr, err := ast.ParseRef(p)
		if err != nil {
			return true
		}
		for _, r := range refs {
			if pr.HasPrefix(r) || r.HasPrefix(pr) {
				return true
			}
		}
	}
	return false
}

// ErrNotReplayable marks a record the policy never decided (identity or
// revocation refused it first, or it is not a decision) or whose identity
// cannot be rebuilt.
var ErrNotReplayable = errors.New("not replayable")

// Replay decides rec's request again and returns the new outcome.
func (r *Replayer) Replay(ctx context.Context, rec *decisionlog.Record) (Outcome, error) {
	if why := beforePolicy(rec); why != "" {
		return Outcome{}, fmt.Errorf("%w: %s", ErrNotReplayable, why)
	}
	if _, ok := parseTrust(rec.Agent.TrustLevel); !ok {
		return Outcome{}, fmt.Errorf("%w: %w", ErrNotReplayable, errTrust(rec.Agent.TrustLevel))
	}
	if rec.Truncated && len(rec.Request.MCP) > 0 {
		return Outcome{}, fmt.Errorf("%w: an MCP call recorded truncated (a longer batch, or a cut name)", ErrNotReplayable)
	}
	q := &rec.Request
	if q.Method == "" || q.Path == "" {
		return Outcome{}, fmt.Errorf("%w: the record has no method or path", ErrNotReplayable)
	}
	host, port, err := splitSource(q.Source)
	if err != nil {
		return Outcome{}, fmt.Errorf("%w: %w", ErrNotReplayable, err)
	}
	*r.clock = rec.Time
	if !r.memo {
		out, _, err := r.decide(ctx, q, &rec.Agent, host, port)
		return out, err
	}
	at := r.engine.PolicyTime(rec.Time).UnixNano()
	r.key = r.memoKey(r.key[:0], rec)
	e, ok := r.outcomes[string(r.key)]
	if ok && !e.timed {
		r.hits++
		return e.out, nil
	}
	if ok {
		if out, ok := r.timedOutcomes[timedKey{string(r.key), at}]; ok {
			r.hits++
			return out, nil
		}
	}
	out, readClock, err := r.decide(ctx, q, &rec.Agent, host, port)
	if err != nil || !memoisable(out) {
		return out, err
	}
	k := string(r.key)
	if len(r.outcomes) >= maxMemo {
		clear(r.outcomes)
	}
	switch {
	case !readClock:
		r.outcomes[k] = memoEntry{out: out}
	default:
		r.outcomes[k] = memoEntry{timed: true}
		if len(r.timedOutcomes) >= maxMemo {
			clear(r.timedOutcomes)
		}
		r.timedOutcomes[timedKey{k, at}] = out
	}
	return out, nil
}

// decide runs the decision path once; readClock says whether the policy
// read its clock.
func (r *Replayer) decide(ctx context.Context, q *decisionlog.Request, a *decisionlog.Agent, host string, port uint32) (out Outcome, readClock bool, err error) {
	agent, err := r.agent(a)
	if err != nil {
		return Outcome{}, false, fmt.Errorf("%w: %w", ErrNotReplayable, err)
	}
	req, err := checkRequest(q, host, port)
	if err != nil {
		return Outcome{}, false, fmt.Errorf("%w: %w", ErrNotReplayable, err)
	}
	r.ident.agent = agent
	r.rec.last = nil
	if r.memo {
		r.probe.Reset()
		ctx = policy.WithClockProbe(ctx, &r.probe)
	}
	if _, err := r.svc.Check(ctx, req); err != nil {
		return Outcome{}, false, err
	}
	if r.rec.last == nil {
		return Outcome{}, false, errors.New("the replayed decision left no record")
	}
	return Recorded(r.rec.last), r.probe.Read(), nil
}

// memoisable: an evaluation error (policy_error, which includes running
// out of time) or a recovered panic may not happen again; such an outcome
// is decided again for every record.
func memoisable(o Outcome) bool {
	switch reason.Code(o.Reason) {
	case reason.PolicyError, reason.InternalError:
		return false
	}
	return true
}

// memoKey appends to b what the decision path is given for rec: every
// field that reaches the policy input or decides which path it takes
// (the MCP endpoint, the route), each length-prefixed so that no two
// records share a key unless they share these values.
func (r *Replayer) memoKey(b []byte, rec *decisionlog.Record) []byte {
	a, q := &rec.Agent, &rec.Request
	for _, s := range [...]string{a.ID, a.SPIFFEID, a.Tenant, a.TrustLevel, a.Owner, a.Serial, a.CertSHA256, a.Issuer, a.Source, q.Method, q.Host, q.Path} {
		b = appendField(b, s)
	}
	b = binary.AppendUvarint(b, uint64(len(a.Scopes)))
	for _, s := range a.Scopes {
		b = appendField(b, s)
	}
	b = binary.AppendUvarint(b, uint64(len(q.MCP)))
	for _, m := range q.MCP {
		// What mcpBody rebuilds the call from.
		b = appendField(appendField(appendField(appendField(b, m.Kind), m.Method), m.Tool), m.URI)
	}
	if r.keyID {
		b = appendField(append(b, 'i'), q.ID)
	}
	if r.keySrc {
		b = appendField(append(b, 's'), q.Source)
	}
	return b
}

func appendField(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// Recorded is the outcome a record states.
func Recorded(rec *decisionlog.Record) Outcome {
	o := Outcome{Allowed: rec.Decision.Allowed, Status: rec.Decision.HTTPStatus, Operation: rec.Request.Operation}
	// An allow is an allow: its status and reason carry nothing more (older
	// records leave the reason of an allow empty).
	if o.Allowed {
		o.Status = 0
		return o
	}
	if len(rec.Decision.Reasons) > 0 {
		o.Reason = rec.Decision.Reasons[0]
	}
	return o
}

// beforePolicy says why a record was not decided by the policy, or "".
func beforePolicy(rec *decisionlog.Record) string {
	if rec.Kind != "" && rec.Kind != decisionlog.KindDecision {
		return "a " + rec.Kind + " record, not a decision"
	}
	if rec.Agent.ID == "" {
		return "no verified agent: identity was refused before policy"
	}
	for _, c := range rec.Decision.Reasons {
		switch reason.Code(c) {
		case reason.CertificateRevoked, reason.AgentRevoked, reason.RevocationStatusUnknown:
			return "decided by revocation (" + c + ") before policy"
		}
	}
	return ""
}

// agentKey is what a record says of its agent; equal keys share one
// *identity.Agent so that the engine's per-agent caches hit as in serving.
type agentKey struct {
	id, spiffe, tenant, trust, scopes, owner, serial, cert, issuer, source string
}

func (r *Replayer) agent(a *decisionlog.Agent) (*identity.Agent, error) {
	k := agentKey{a.ID, a.SPIFFEID, a.Tenant, a.TrustLevel, strings.Join(a.Scopes, "\x00"), a.Owner, a.Serial, a.CertSHA256, a.Issuer, a.Source}
	if ag, ok := r.agents[k]; ok {
		return ag, nil
	}
	level, ok := parseTrust(a.TrustLevel)
	if !ok {
		return nil, errTrust(a.TrustLevel)
	}
	ag := &identity.Agent{
		ID: a.ID, SPIFFEID: a.SPIFFEID, Tenant: a.Tenant, TrustLevel: level,
		Scopes: slices.Clone(a.Scopes), Owner: a.Owner, Serial: a.Serial, CertSHA256: a.CertSHA256,
		Issuer: a.Issuer, Source: identity.Source(a.Source),
	}
	if len(r.agents) >= maxAgents {
		clear(r.agents)
	}
	r.agents[k] = ag
	return ag, nil
}

// maxAgents bounds the Replayer's agent table.
const maxAgents = 1 << 16

func errTrust(s string) error { return fmt.Errorf("record trust level %q is not L0..L4", s) }

func parseTrust(s string) (int, bool) {
	if len(s) != 2 || s[0] != 'L' || s[1] < '0' || s[1] > '4' {
		return 0, false
	}
	return int(s[1] - '0'), true
}

// checkRequest rebuilds the CheckRequest Envoy sent, as far as the record
// keeps it; host and port are the source address (splitSource).
func checkRequest(q *decisionlog.Request, host string, port uint32) (*authv3.CheckRequest, error) {
	headers := map[string]string{":method": q.Method, ":path": q.Path}
	if q.Host != "" {
		headers[":authority"] = q.Host
	}
	if q.ID != "" {
		headers["x-request-id"] = q.ID
	}
	attrs := &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
		Id: q.ID, Method: q.Method, Host: q.Host, Path: q.Path, Headers: headers, Scheme: "https", Protocol: "HTTP/1.1",
	}}}
	if len(q.MCP) > 0 {
		body, err := mcpBody(q.MCP)
		if err != nil {
			return nil, err
		}
		h := attrs.Request.Http
		h.Body, h.Size = string(body), int64(len(body))
		headers["content-type"], headers["content-length"] = "application/json", strconv.Itoa(len(body))
	}
	if q.Source != "" {
		attrs.Source = &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
			SocketAddress: &corev3.SocketAddress{Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}},
		}}}
	}
	return &authv3.CheckRequest{Attributes: attrs}, nil
}

// splitSource parses a recorded source address; "" is none.
func splitSource(src string) (string, uint32, error) {
	if src == "" {
		return "", 0, nil
	}
	host, port, err := net.SplitHostPort(src)
	if err != nil {
		return "", 0, fmt.Errorf("record source address %q: %w", src, err)
	}
	p, err := strconv.ParseUint(port, 10, 32)
	if err != nil {
		return "", 0, fmt.Errorf("record source port %q: %w", port, err)
	}
	return host, uint32(p), nil
}

type fixedIdentity struct{ agent *identity.Agent }

func (f *fixedIdentity) Identify(*authv3.AttributeContext) (*identity.Agent, *identity.Error) {
	return f.agent, nil
}

// notRevoked: records decided by revocation are not replayed (beforePolicy),
// so every replayed agent passed revocation when it was decided.
type notRevoked struct{}

func (notRevoked) Check(string, []identity.ChainCert, string) reason.Code { return "" }

type captureRecorder struct{ last *decisionlog.Record }

func (c *captureRecorder) Append(_ context.Context, rec *decisionlog.Record) (decisionlog.Receipt, error) {
	c.last = rec
	return decisionlog.Receipt{}, nil
}

// replayable are the input paths a record lets the simulator rebuild: a read
// at or below one of them sees what the original decision saw.
var replayable = []string{
	"input.agent.id", "input.agent.spiffe_id", "input.agent.tenant", "input.agent.trust_level", "input.agent.trust",
	"input.agent.scopes", "input.agent.owner", "input.agent.serial", "input.agent.cert_sha256", "input.agent.issuer",
	"input.agent.source", "input.operation", "input.parsed_path", "input.version",
	"input.attributes.request.http.method", "input.attributes.request.http.host", "input.attributes.request.http.id",
	`input.attributes.request.http.headers[":method"]`, `input.attributes.request.http.headers[":authority"]`,
	`input.attributes.request.http.headers["x-request-id"]`,
	"input.attributes.source.address.socketAddress.address", "input.attributes.source.address.socketAddress.portValue",
}

// Gaps lists what a policy that reads paths reads that records do not keep.
// unknown, when set, is why the policy's reads could not be determined; every
// read is then a possible gap.
func Gaps(paths []string, unknown string) []string {
	if unknown != "" {
		return []string{"the policy's reads of input could not be determined (" + unknown + ")"}
	}
	var gaps []string
	for _, p := range paths {
		if !covered(p) {
			gaps = append(gaps, p)
		}
	}
	return gaps
}

func covered(p string) bool {
	pr, err := ast.ParseRef(p)
	if err != nil {
		return false
	}
	for _, s := range replayable {
		r := ast.MustParseRef(s)
		if pr.HasPrefix(r) {
			return true
		}
	}
	return false
}

// Source yields recorded entries in log order; *decisionlog.Reader is one.
// Next returns io.EOF at the end and an error wrapping
// decisionlog.ErrMalformed for a line that does not decode.
type Source interface {
	Next() (decisionlog.Entry, error)
}

// Run replays every decision of src recorded in [from, to] (a zero bound is
// open) into acc. Lines that do not decode are counted, never skipped
// silently.
func Run(ctx context.Context, src Source, rp *Replayer, acc *Accumulator, from, to time.Time) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		e, err := src.Next()
		switch {
		case errors.Is(err, io.EOF):
			return nil
		case errors.Is(err, decisionlog.ErrMalformed):
			acc.Malformed()
			continue
		case err != nil:
			return err
		}
		rec := e.Record
		if rec.Kind != "" && rec.Kind != decisionlog.KindDecision {
			continue // key rotations and other kinds are not requests
		}
		if !from.IsZero() && rec.Time.Before(from) || !to.IsZero() && rec.Time.After(to) {
			continue
		}
		out, err := rp.Replay(ctx, rec)
		acc.Add(rec, out, err)
	}
}

// mcpBody rebuilds an MCP call from its recorded messages: the methods,
// tools and URIs the policy decided on. The arguments are never recorded,
// so a policy reading input.mcp.arguments_sha256 or the arguments in
// parsed_body sees them absent.
func mcpBody(msgs []decisionlog.MCPMessage) ([]byte, error) {
	out := make([]map[string]any, len(msgs))
	for i, m := range msgs {
		o := map[string]any{"jsonrpc": "2.0"}
		switch m.Kind {
		case "request", "notification":
			o["method"] = m.Method
			if m.Kind == "request" {
				o["id"] = i + 1
			}
			switch {
			case m.Tool != "":
				o["params"] = map[string]any{"name": m.Tool}
			case m.URI != "":
				o["params"] = map[string]any{"uri": m.URI}
			}
		case "response":
			o["id"], o["result"] = i+1, map[string]any{}
		default:
			return nil, fmt.Errorf("recorded MCP message of kind %q", m.Kind)
		}
		out[i] = o
	}
	if len(out) == 1 {
		return json.Marshal(out[0])
	}
	return json.Marshal(out)
}
