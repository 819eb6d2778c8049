// Package extauthz owns the decision path of one Envoy ext_authz Check call:
// identity, revocation, policy, the signed record and the answer, in that
// order, failing closed at every step.
package extauthz

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
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
	o := &outcome{id: newDecisionID(), invalidUTF8: invalidUTF8}
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
	rec := &decisionlog.Record{DecisionID: o.id, Time: at.UTC()}
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
	rec.Decision = decisionlog.Decision{
		Allowed:        o.allowed,
		HTTPStatus:     o.status,
		Reasons:        []string{string(o.reason)},
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
	return sa.GetAddress() + ":" + strconv.FormatUint(uint64(sa.GetPortValue()), 10)
}

func (s *Service) allow(o *outcome) *authv3.CheckResponse {
	a, v := o.agent, o.verdict
	// The identity headers and the response header come from one block:
	// two allocations instead of two per header on every allowed Check.
	hb := newHeaderBlock(len(identityHeaders) + 1)
	headers := make([]*corev3.HeaderValueOption, 0, len(v.Headers)+len(identityHeaders))
	for _, h := range v.Headers {
		// The policy may add headers, but never ones that speak for identity.
		if !isIdentityHeader(h.GetHeader().GetKey()) {
			headers = append(headers, h)
		}
	}
	remove := make([]string, 0, len(v.RequestHeadersToRemove)+2)
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
		headers = append(headers, hb.overwrite(k, val))
	}
	set(HeaderAgentID, a.ID)
	set(HeaderSPIFFEID, a.SPIFFEID)
	set(HeaderTrustLevel, a.TrustLabel())
	set(HeaderScopes, strings.Join(a.Scopes, " "))
	set(HeaderOwner, a.Owner)
	set(HeaderDecisionID, o.id)
	set(HeaderReceipt, o.receipt)
	set(HeaderMCPTools, mcpToolsValue(v.MCP))

	respHeaders := make([]*corev3.HeaderValueOption, 0, len(v.ResponseHeadersToAdd)+1)
	respHeaders = append(append(respHeaders, v.ResponseHeadersToAdd...), hb.overwrite(HeaderDecisionID, o.id))
	return &authv3.CheckResponse{
		Status: &status.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
			Headers:                 headers,
			HeadersToRemove:         remove,
			ResponseHeadersToAdd:    respHeaders,
			QueryParametersToSet:    v.QueryParametersToSet,
			QueryParametersToRemove: v.QueryParametersToRemove,
		}},
		DynamicMetadata: s.metadata(o),
	}
}

func (s *Service) deny(o *outcome) *authv3.CheckResponse {
	v := o.verdict
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
	headers := make([]*corev3.HeaderValueOption, 0, len(v.Headers)+2)
	for _, h := range v.Headers {
		if !isIdentityHeader(h.GetHeader().GetKey()) {
			headers = append(headers, h)
		}
	}
	if !v.HasBody {
		headers = append(headers, overwrite("content-type", "application/json"))
	}
	headers = append(headers, overwrite(HeaderDecisionID, o.id))
	code := codes.PermissionDenied
	if o.status == 401 {
		code = codes.Unauthenticated
	}
	return &authv3.CheckResponse{
		Status: &status.Status{Code: int32(code)},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(o.status)},
			Headers: headers,
			Body:    body,
		}},
		DynamicMetadata: s.metadata(o),
	}
}

// metadata is Envoy dynamic metadata: agent id and decision id for access
// logs, plus whatever the policy added.
func (s *Service) metadata(o *outcome) *structpb.Struct {
	// Our string values come from one block of each type rather than two
	// allocations per value.
	vals := make([]structpb.Value, 0, 5)
	kinds := make([]structpb.Value_StringValue, 0, 5)
	str := func(v string) *structpb.Value {
		kinds = append(kinds, structpb.Value_StringValue{StringValue: v})
		vals = append(vals, structpb.Value{})
		pv := &vals[len(vals)-1]
		pv.Kind = &kinds[len(kinds)-1]
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
	return &structpb.Struct{Fields: fields}
}

// headerBlock hands out header options from two preallocated arrays, falling
// back to overwrite when they are used up.
type headerBlock struct {
	opts []corev3.HeaderValueOption
	vals []corev3.HeaderValue
}

func newHeaderBlock(n int) *headerBlock {
	return &headerBlock{opts: make([]corev3.HeaderValueOption, 0, n), vals: make([]corev3.HeaderValue, 0, n)}
}

func (b *headerBlock) overwrite(k, v string) *corev3.HeaderValueOption {
	if len(b.opts) == cap(b.opts) {
		return overwrite(k, v)
	}
	b.vals = b.vals[:len(b.vals)+1]
	hv := &b.vals[len(b.vals)-1]
	hv.Key, hv.Value = k, v
	b.opts = b.opts[:len(b.opts)+1]
	o := &b.opts[len(b.opts)-1]
	o.Header, o.AppendAction = hv, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
	return o
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

// newDecisionID is a UUIDv7: unique, and ordered by time for log queries.
func newDecisionID() string {
	id, err := uuid.NewV7()
	if err != nil {
		// crypto/rand does not fail on supported platforms; a random v4 is the
		// documented fallback of the same library.
		return uuid.NewString()
	}
	return id.String()
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
