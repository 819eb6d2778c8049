// Package extauthz owns the decision path of one Envoy ext_authz Check call:
// identity, revocation, policy, the signed record and the answer, in that
// order, failing closed at every step.
package extauthz

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/google/uuid"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/identity"
	"github.com/agentauthz/agentauthz/internal/mcp"
	"github.com/agentauthz/agentauthz/internal/reason"
)

// Headers set for the upstream on allow. Values a client sent under these
// names are overwritten or removed, never passed on.
const (
	HeaderAgentID    = "x-agent-id"
	HeaderSPIFFEID   = "x-agent-spiffe-id"
	HeaderTrustLevel = "x-agent-trust-level"
	HeaderScopes     = "x-agent-scopes"
	HeaderOwner      = "x-agent-owner"
	HeaderDecisionID = "x-decision-id"
	HeaderReceipt    = "x-agent-receipt"
	// HeaderMCPTools, on an allowed MCP tools/list, is the JSON array of the
	// tools the agent may call; the MCP server (or a filter in front of
	// it) lists only those (docs/mcp.md).
	HeaderMCPTools = "x-agent-mcp-tools"
)

// identityHeaders are the headers only this service may set upstream.
var identityHeaders = [...]string{HeaderAgentID, HeaderSPIFFEID, HeaderTrustLevel, HeaderScopes, HeaderOwner, HeaderDecisionID, HeaderReceipt, HeaderMCPTools}

// Identifier verifies who is calling. It returns exactly one of agent or err.
type Identifier interface {
	Identify(attrs *authv3.AttributeContext) (*identity.Agent, *identity.Error)
}

// RevocationChecker reports whether an agent's certificate, a CA
// certificate of its verified chain (identity.Agent.Chain), or its id is
// revoked, or revocation data is too stale to tell. "" means not revoked.
// It must be cheap: it runs on every Check, also for cached identities.
type RevocationChecker interface {
	Check(tenant string, chain []identity.ChainCert, agentID string) reason.Code
}

// ErrRequestParse means (wrapped in a Policy error) the request could not
// be turned into policy input: the denial is request_parse_error (400),
// as opa-envoy-plugin answers, not policy_error.
var ErrRequestParse = errors.New("request cannot be parsed")

// ErrInvalidJSONRPC wrapped in a Policy error means a POST to an MCP
// endpoint did not carry a JSON-RPC message the service can read: the
// denial is invalid_jsonrpc (400).
var ErrInvalidJSONRPC = errors.New("invalid MCP JSON-RPC body")

// Policy evaluates the prepared policy for a verified agent.
type Policy interface {
	Decide(ctx context.Context, req *authv3.CheckRequest, agent *identity.Agent) (Verdict, error)
}

// Recorder appends a decision record durably (in sync mode) and returns the
// compact receipt for the upstream (x-agent-receipt).
type Recorder interface {
	Append(ctx context.Context, rec *decisionlog.Record) (decisionlog.Receipt, error)
}

// Verdict is what the policy decided, in the opa-envoy-plugin result shape.
type Verdict struct {
	Allowed    bool
	Reason     string
	HTTPStatus int
	// Body is the denial body the policy chose; HasBody tells an explicit
	// "" (sent as an empty body) from none (the JSON denial body).
	Body                    string
	HasBody                 bool
	Headers                 []*corev3.HeaderValueOption
	RequestHeadersToRemove  []string
	ResponseHeadersToAdd    []*corev3.HeaderValueOption
	QueryParametersToSet    []*corev3.QueryParameter
	QueryParametersToRemove []string
	DynamicMetadata         *structpb.Struct
	Operation               string
	Revision                string
	// MCP is set for a POST to a declared MCP endpoint.
	MCP *MCPVerdict
}

// MCPVerdict is how an MCP call was decided.
type MCPVerdict struct {
	Call       *mcp.Call // nil when the body could not be read
	Operations []string  // each message's operation
	Decisive   int       // the message that decided: the first denied, else 0
	// Tools, for an allowed tools/list, names the tools the agent may call
	// (HeaderMCPTools); nil otherwise.
	Tools []string
}

// decisive is the message that decided, or nil.
func (v *MCPVerdict) decisive() *mcp.Message {
	if v == nil || v.Call == nil || v.Decisive >= len(v.Call.Messages) {
		return nil
	}
	return &v.Call.Messages[v.Decisive]
}

// Service implements envoy.service.auth.v3.Authorization.
type Service struct {
	authv3.UnimplementedAuthorizationServer

	ident   Identifier
	revoked RevocationChecker
	policy  Policy
	log     Recorder
	logger  hclog.Logger
	metrics *Metrics
	now     func() time.Time
	timeout time.Duration
	lastID  atomic.Int64 // newDecisionID's last time, ms<<12 | sub-ms
}

// Options configure a Service. Every dependency is required.
type Options struct {
	Identifier Identifier
	Revocation RevocationChecker
	Policy     Policy
	Recorder   Recorder
	Logger     hclog.Logger
	Metrics    *Metrics
	Now        func() time.Time
	// Timeout bounds a Check when the caller's deadline is later or absent.
	Timeout time.Duration
}

// New returns a Service.
func New(o Options) (*Service, error) {
	if o.Identifier == nil || o.Revocation == nil || o.Policy == nil || o.Recorder == nil || o.Metrics == nil {
		return nil, errors.New("extauthz: identifier, revocation, policy, recorder and metrics are required")
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Timeout <= 0 {
		o.Timeout = time.Second
	}
	return &Service{
		ident: o.Identifier, revoked: o.Revocation, policy: o.Policy, log: o.Recorder,
		logger: o.Logger, metrics: o.Metrics, now: o.Now, timeout: o.Timeout,
	}, nil
}

// outcome is one decision on its way to the record and the answer.
type outcome struct {
	id       string
	allowed  bool // set only when every step allowed; never derived from a reason
	reason   reason.Code
	status   int
	agent    *identity.Agent
	identErr *identity.Error
	verdict  Verdict
	receipt  string
	recorded bool // an append was attempted

	// The record and the answer are built in here: one allocation per
	// Check for all of them. Nothing keeps the record after Append.
	rec      decisionlog.Record
	reasons  [1]string
	ans      answer
	ansTaken bool
	// invalidUTF8: the request arrived with strings that are not UTF-8
	// (replaced before it got here); it is refused.
	invalidUTF8 bool
}

// Check decides one request. It never returns an error to Envoy for a
// decision: every failure becomes a denial with a reason, so Envoy's
// failure_mode_allow setting never comes into play.
func (s *Service) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return s.check(ctx, req, false)
}

// CheckInvalidUTF8 answers a request whose strings were not all valid
// UTF-8: Envoy forwards header bytes as the client sent them, and protobuf
// refuses to decode such a string. The gRPC server decodes it with each bad
// sequence replaced by U+FFFD and calls this instead of Check: the request
// is denied with request_parse_error (400) and recorded like any decision.
func (s *Service) CheckInvalidUTF8(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return s.check(ctx, req, true)
}

func (s *Service) check(ctx context.Context, req *authv3.CheckRequest, invalidUTF8 bool) (resp *authv3.CheckResponse, err error) {
	start := s.now()
	o := &outcome{id: s.newDecisionID(), invalidUTF8: invalidUTF8}
	defer func() {
		if p := recover(); p != nil {
			s.logger.Error("panic in Check; denying", "decision_id", o.id, "panic", fmt.Sprint(p))
			o.allowed, o.reason, o.status, o.verdict = false, reason.InternalError, reason.InternalError.HTTPStatus(), Verdict{}
			if !o.recorded {
				s.recordAfterPanic(ctx, req, o, start)
			}
			resp, err = s.deny(o), nil
		}
		s.metrics.observe(o.reason, o.allowed, time.Since(start))
		if s.logger.IsDebug() {
			agentID := ""
			if o.agent != nil {
				agentID = o.agent.ID
			}
			args := []any{"decision_id", o.id, "allowed", o.allowed, "reason", string(o.reason),
				"status", o.status, "agent_id", agentID, "operation", o.verdict.Operation}
			if o.identErr != nil {
				// Why identity failed (which CA expired, what did not
				// parse): for operators only, never in the answer.
				args = append(args, "identity_error", truncate(o.identErr.Error(), maxLoggedDetail))
			}
			s.logger.Debug("decision", args...)
		}
	}()

	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()

	s.decide(ctx, req, o)
	s.record(ctx, req, o, start)
	if o.allowed {
		return s.allow(o), nil
	}
	return s.deny(o), nil
}

// decide runs identity, revocation and policy, filling o.
func (s *Service) decide(ctx context.Context, req *authv3.CheckRequest, o *outcome) {
	agent, ierr := s.ident.Identify(req.GetAttributes())
	if o.invalidUTF8 {
		// Refused whoever sent it; the record names the agent when its
		// certificate still verifies.
		if ierr == nil {
			o.agent = agent
		}
		o.reason, o.status = reason.RequestParseError, reason.RequestParseError.HTTPStatus()
		return
	}
	if ierr != nil {
		o.identErr = ierr
		o.reason, o.status = ierr.Reason, ierr.Reason.HTTPStatus()
		return
	}
	o.agent = agent
	if code := s.revoked.Check(agent.Tenant, agent.Chain, agent.ID); code != "" {
		o.reason, o.status = code, code.HTTPStatus()
		return
	}
	v, err := s.policy.Decide(ctx, req, agent)
	if err != nil {
		code := reason.PolicyError
		switch {
		case errors.Is(err, ErrInvalidJSONRPC):
			code = reason.InvalidJSONRPC
		case errors.Is(err, ErrRequestParse):
			code = reason.RequestParseError
		}
		s.logger.Warn("policy evaluation failed; denying", "decision_id", o.id, "agent_id", agent.ID,
			"reason", code, "error", truncate(err.Error(), maxLoggedDetail))
		o.reason, o.status = code, code.HTTPStatus()
		o.verdict = Verdict{Operation: v.Operation, Revision: v.Revision, MCP: v.MCP}
		return
	}
	o.verdict = v
	if v.Allowed {
		o.allowed, o.reason, o.status = true, reason.Allowed, 200
		return
	}
	o.reason = reason.PolicyDenied
	// A denial keeps the policy's reason, except one that would read as an allow.
	if v.Reason != "" && reason.Code(v.Reason) != reason.Allowed {
		o.reason = reason.Code(v.Reason)
	}
	// The policy's status is passed through, below 400 too (a 302 to a
	// login page, as opa-envoy-plugin allows); none is 403.
	o.status = v.HTTPStatus
	if o.status < 100 || o.status > 599 {
		o.status = reason.PolicyDenied.HTTPStatus()
	}
}

// record appends the decision record. If an allowed decision cannot be
// recorded it becomes a denial: nothing is allowed without its record.
func (s *Service) record(ctx context.Context, req *authv3.CheckRequest, o *outcome, at time.Time) {
	o.recorded = true
	rec := buildRecord(req, o, at)
	// A request Envoy cancels must still leave its record.
	r, err := s.log.Append(context.WithoutCancel(ctx), rec)
	if err != nil {
		s.logger.Error("decision record not written; denying", "decision_id", o.id, "error", err)
		s.metrics.recordErrors.Inc()
		o.allowed, o.reason, o.status = false, reason.DecisionLogUnavailable, reason.DecisionLogUnavailable.HTTPStatus()
		o.verdict = Verdict{}
		return
	}
	o.receipt = r.Header
}

// recordAfterPanic records an internal_error denial, unless recording is
// what panicked.
func (s *Service) recordAfterPanic(ctx context.Context, req *authv3.CheckRequest, o *outcome, at time.Time) {
	defer func() { _ = recover() }()
	s.record(ctx, req, o, at)
	if o.reason == reason.DecisionLogUnavailable {
		o.reason, o.status = reason.InternalError, reason.InternalError.HTTPStatus()
	}
}

func buildRecord(req *authv3.CheckRequest, o *outcome, at time.Time) *decisionlog.Record {
	rec := &o.rec
	*rec = decisionlog.Record{DecisionID: o.id, Time: at.UTC()}
	if a := o.agent; a != nil {
		rec.Agent = decisionlog.Agent{
			ID: a.ID, SPIFFEID: a.SPIFFEID, Tenant: a.Tenant, TrustLevel: a.TrustLabel(), Scopes: a.Scopes,
			Owner: a.Owner, Serial: a.Serial, CertSHA256: a.CertSHA256, Issuer: a.Issuer, Source: string(a.Source),
		}
	} else if e := o.identErr; e != nil {
		rec.Agent = decisionlog.Agent{CertSHA256: e.CertSHA256, Issuer: e.Issuer}
	}
	h := req.GetAttributes().GetRequest().GetHttp()
	rec.Request = decisionlog.Request{
		ID:        h.GetHeaders()["x-request-id"],
		Method:    h.GetMethod(),
		Host:      h.GetHost(),
		Path:      pathOnly(h.GetPath()),
		Operation: o.verdict.Operation,
		Source:    sourceAddr(req.GetAttributes().GetSource()),
	}
	if v := o.verdict.MCP; v != nil && v.Call != nil {
		rec.Request.MCP = make([]decisionlog.MCPMessage, len(v.Call.Messages))
		for i, m := range v.Call.Messages {
			r := &rec.Request.MCP[i]
			r.Kind, r.Method, r.Tool, r.URI, r.ArgumentsSHA256 = m.Kind.String(), m.Method, m.Tool, m.URI, m.ArgumentsSHA256
			if i < len(v.Operations) {
				r.Operation = v.Operations[i]
			}
		}
	}
	o.reasons[0] = string(o.reason)
	rec.Decision = decisionlog.Decision{
		Allowed:        o.allowed,
		HTTPStatus:     o.status,
		Reasons:        o.reasons[:],
		PolicyRevision: o.verdict.Revision,
	}
	return rec
}

// pathOnly drops the query string: it may carry credentials.
func pathOnly(p string) string {
	if i := strings.IndexByte(p, '?'); i >= 0 {
		p = p[:i]
	}
	const max = 2048
	if len(p) > max {
		p = p[:max]
	}
	return p
}

func sourceAddr(p *authv3.AttributeContext_Peer) string {
	sa := p.GetAddress().GetSocketAddress()
	if sa == nil {
		return ""
	}
	var buf [64]byte
	b := append(append(buf[:0], sa.GetAddress()...), ':')
	return string(strconv.AppendUint(b, uint64(sa.GetPortValue()), 10))
}

func (s *Service) allow(o *outcome) *authv3.CheckResponse {
	a, v, ans := o.agent, o.verdict, o.answer()
	headers := ans.headers[:0]
	if n := len(v.Headers) + len(identityHeaders); n > cap(headers) {
		headers = make([]*corev3.HeaderValueOption, 0, n)
	}
	for _, h := range v.Headers {
		// The policy may add headers, but never ones that speak for identity.
		if !isIdentityHeader(h.GetHeader().GetKey()) {
			headers = append(headers, h)
		}
	}
	remove := ans.remove[:0]
	if n := len(v.RequestHeadersToRemove) + len(identityHeaders); n > cap(remove) {
		remove = make([]string, 0, n)
	}
	for _, h := range v.RequestHeadersToRemove {
		// Nor may it strip the identity headers this service sets.
		if !isIdentityHeader(h) {
			remove = append(remove, h)
		}
	}
	set := func(k, val string) {
		if val == "" {
			remove = append(remove, k)
			return
		}
		headers = append(headers, ans.overwrite(k, val))
	}
	set(HeaderAgentID, a.ID)
	set(HeaderSPIFFEID, a.SPIFFEID)
	set(HeaderTrustLevel, a.TrustLabel())
	set(HeaderScopes, strings.Join(a.Scopes, " "))
	set(HeaderOwner, a.Owner)
	set(HeaderDecisionID, o.id)
	set(HeaderReceipt, o.receipt)
	set(HeaderMCPTools, mcpToolsValue(v.MCP))

	respHeaders := ans.respHeaders[:0]
	if n := len(v.ResponseHeadersToAdd) + 1; n > cap(respHeaders) {
		respHeaders = make([]*corev3.HeaderValueOption, 0, n)
	}
	respHeaders = append(append(respHeaders, v.ResponseHeadersToAdd...), ans.overwrite(HeaderDecisionID, o.id))
	ans.okResp.Headers, ans.okResp.HeadersToRemove, ans.okResp.ResponseHeadersToAdd = headers, remove, respHeaders
	ans.okResp.QueryParametersToSet, ans.okResp.QueryParametersToRemove = v.QueryParametersToSet, v.QueryParametersToRemove
	ans.ok.OkResponse = &ans.okResp
	ans.status.Code = int32(codes.OK)
	ans.resp.Status, ans.resp.HttpResponse, ans.resp.DynamicMetadata = &ans.status, &ans.ok, s.metadata(o, ans)
	return &ans.resp
}

func (s *Service) deny(o *outcome) *authv3.CheckResponse {
	v, ans := o.verdict, o.answer()
	body := v.Body
	if !v.HasBody && v.MCP != nil {
		body = mcpErrorBody(o)
	} else if !v.HasBody {
		b, _ := json.Marshal(struct {
			Error      string `json:"error"`
			Reason     string `json:"reason"`
			DecisionID string `json:"decision_id"`
		}{o.reason.ErrorName(), string(o.reason), o.id})
		body = string(b)
	}
	headers := ans.headers[:0]
	if n := len(v.Headers) + 2; n > cap(headers) {
		headers = make([]*corev3.HeaderValueOption, 0, n)
	}
	for _, h := range v.Headers {
		if !isIdentityHeader(h.GetHeader().GetKey()) {
			headers = append(headers, h)
		}
	}
	if !v.HasBody {
		headers = append(headers, ans.overwrite("content-type", "application/json"))
	}
	headers = append(headers, ans.overwrite(HeaderDecisionID, o.id))
	code := codes.PermissionDenied
	if o.status == 401 {
		code = codes.Unauthenticated
	}
	ans.httpStatus.Code = typev3.StatusCode(o.status)
	ans.deniedResp.Status, ans.deniedResp.Headers, ans.deniedResp.Body = &ans.httpStatus, headers, body
	ans.denied.DeniedResponse = &ans.deniedResp
	ans.status.Code = int32(code)
	ans.resp.Status, ans.resp.HttpResponse, ans.resp.DynamicMetadata = &ans.status, &ans.denied, s.metadata(o, ans)
	return &ans.resp
}

// metadata is Envoy dynamic metadata: agent id and decision id for access
// logs, plus whatever the policy added.
func (s *Service) metadata(o *outcome, ans *answer) *structpb.Struct {
	str := func(v string) *structpb.Value {
		if ans.nmd == len(ans.mdVals) {
			return structpb.NewStringValue(v)
		}
		k, pv := &ans.mdKinds[ans.nmd], &ans.mdVals[ans.nmd]
		ans.nmd++
		k.StringValue = v
		pv.Kind = k
		return pv
	}
	fields := make(map[string]*structpb.Value, 5+len(o.verdict.DynamicMetadata.GetFields()))
	fields["decision_id"] = str(o.id)
	fields["reason"] = str(string(o.reason))
	if o.agent != nil {
		fields["agent_id"] = str(o.agent.ID)
		fields["trust_level"] = str(o.agent.TrustLabel())
	}
	if o.verdict.Operation != "" {
		fields["operation"] = str(o.verdict.Operation)
	}
	if m := o.verdict.MCP.decisive(); m != nil {
		if m.Method != "" {
			fields["mcp_method"] = str(m.Method)
		}
		if m.Tool != "" {
			fields["mcp_tool"] = str(m.Tool)
		}
	}
	for k, v := range o.verdict.DynamicMetadata.GetFields() {
		if _, taken := fields[k]; !taken {
			fields[k] = v
		}
	}
	ans.md.Fields = fields
	return &ans.md
}

// answer holds the messages of one Check's answer, allowed or denied, in
// the outcome's block: about fifteen allocations fewer per Check. Slices
// that would outgrow their arrays (a policy adding many headers) are
// allocated as before.
type answer struct {
	resp        authv3.CheckResponse
	status      status.Status
	ok          authv3.CheckResponse_OkResponse
	okResp      authv3.OkHttpResponse
	denied      authv3.CheckResponse_DeniedResponse
	deniedResp  authv3.DeniedHttpResponse
	httpStatus  typev3.HttpStatus
	opts        [len(identityHeaders) + 2]corev3.HeaderValueOption
	vals        [len(identityHeaders) + 2]corev3.HeaderValue
	nopt        int
	headers     [len(identityHeaders) + 4]*corev3.HeaderValueOption
	remove      [len(identityHeaders) + 4]string
	respHeaders [2]*corev3.HeaderValueOption
	md          structpb.Struct
	mdVals      [7]structpb.Value
	mdKinds     [7]structpb.Value_StringValue
	nmd         int
}

// answer returns the outcome's answer block, or a new one if it was
// already used (a panic after the answer was begun).
func (o *outcome) answer() *answer {
	if o.ansTaken {
		return new(answer)
	}
	o.ansTaken = true
	return &o.ans
}

// overwrite is a header option from the block's arrays (see overwrite).
func (ans *answer) overwrite(k, v string) *corev3.HeaderValueOption {
	if ans.nopt == len(ans.opts) {
		return overwrite(k, v)
	}
	hv, opt := &ans.vals[ans.nopt], &ans.opts[ans.nopt]
	ans.nopt++
	hv.Key, hv.Value = k, v
	opt.Header, opt.AppendAction = hv, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
	return opt
}

func overwrite(k, v string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header: &corev3.HeaderValue{Key: k, Value: v},
		// Envoy's default appends beside a client-sent value; identity
		// headers must replace it.
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}

func isIdentityHeader(k string) bool {
	for _, h := range identityHeaders {
		if strings.EqualFold(k, h) {
			return true
		}
	}
	return false
}

// maxLoggedDetail bounds an error detail in a log line: it may quote parts
// of what the client sent.
const maxLoggedDetail = 512

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}

// newDecisionID is a UUIDv7 (RFC 9562): unique, and ordered by time for
// log queries. It is github.com/google/uuid's NewV7 (48 bits of Unix
// milliseconds, 12 of sub-millisecond time kept increasing within the
// process, 62 random bits) with the random bytes read into the stack: one
// allocation, the string.
func (s *Service) newDecisionID() string {
	var u uuid.UUID
	if _, err := rand.Read(u[:]); err != nil {
		// crypto/rand does not fail on supported platforms; a random v4 is
		// the documented fallback of the same library.
		return uuid.NewString()
	}
	nano := s.now().UnixNano()
	v := nano/1e6<<12 + nano%1e6>>8
	for {
		last := s.lastID.Load()
		next := max(v, last+1)
		if s.lastID.CompareAndSwap(last, next) {
			v = next
			break
		}
	}
	ms, seq := v>>12, v&0xfff
	u[0], u[1], u[2], u[3], u[4], u[5] = byte(ms>>40), byte(ms>>32), byte(ms>>24), byte(ms>>16), byte(ms>>8), byte(ms)
	u[6], u[7] = 0x70|byte(seq>>8)&0x0f, byte(seq)
	u[8] = 0x80 | u[8]&0x3f // the RFC 9562 variant
	return u.String()
}

var reasonLabelRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}$`)

// mcpErrorBody is a denied MCP call's answer: a JSON-RPC error the client
// hands to the model, naming the reason and the decision to quote.
func mcpErrorBody(o *outcome) string {
	code := mcp.CodeForbidden
	if o.reason == reason.InvalidJSONRPC {
		code = mcp.CodeInvalidRequest
	}
	msg := mcp.DenialMessage(string(o.reason), o.verdict.MCP.decisive())
	return string(mcp.ErrorBody(o.verdict.MCP.Call, code, msg, mcp.ErrorData{Reason: string(o.reason), DecisionID: o.id}))
}

// mcpToolsValue is HeaderMCPTools for an allowed call: "" (header removed)
// unless the call lists tools.
func mcpToolsValue(v *MCPVerdict) string {
	if v == nil || v.Tools == nil {
		return ""
	}
	b, _ := json.Marshal(v.Tools)
	return string(b)
}
