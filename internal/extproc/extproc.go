// Package extproc is agentauthz's envoy.service.ext_proc.v3.ExternalProcessor:
// for every request ext_authz allowed, it signs the upstream's response
// (RFC 9421, with an RFC 9530 Content-Digest; internal/respsig) and records
// the response in the decision log beside its decision. docs/responses.md
// describes the behaviour; every path below fails closed.
package extproc

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agentauthz/agentauthz/internal/httpsig"
	"github.com/agentauthz/agentauthz/internal/mcp"
	"github.com/agentauthz/agentauthz/internal/respsig"
)

// Defaults of Options.
const (
	DefaultMaxBodyBytes   = 4 << 20
	DefaultMaxHeaderBytes = 64 << 10
)

// Options configure a Processor. Decisions, Signer and Log are required.
type Options struct {
	Decisions *Table
	// Signer returns the current key id and a function signing with it
	// (decisionlog.Log.ResponseSigner).
	Signer func() (kid string, sign func([]byte) ([]byte, error))
	Log    ResponseLog
	// MaxBodyBytes: bodies up to this size are signed with a digest.
	MaxBodyBytes int64
	// MaxHeaderBytes bounds the response header block.
	MaxHeaderBytes int
	Logger         hclog.Logger
	Metrics        *Metrics
	Now            func() time.Time
}

// Processor implements envoy.service.ext_proc.v3.ExternalProcessor.
type Processor struct {
	extprocv3.UnimplementedExternalProcessorServer
	o Options
}

// New returns a Processor.
func New(o Options) (*Processor, error) {
	if o.Decisions == nil || o.Signer == nil || o.Log == nil || o.Metrics == nil {
		return nil, errors.New("extproc: decisions, signer, log and metrics are required")
	}
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Processor{o: o}, nil
}

// phase is where one HTTP exchange stands.
type phase uint8

const (
	phaseRequest   phase = iota // waiting for request headers
	phaseBound                  // decision found; waiting for response headers
	phaseAwaitBody              // response headers held by Envoy; signature goes with the body response
	phaseStreaming              // signed at the headers; digesting a streamed body for the log
	phaseDone                   // signed and recorded (or refused)
)

// exchange is the state of one ext_proc stream: one HTTP request and its
// response.
type exchange struct {
	phase     phase
	bodyMode  filterv3.ProcessingMode_BodySendMode
	hasMode   bool
	decision  Decision
	req       httpsig.Message
	status    int
	ctype     string
	hasCType  bool
	upstream  bool // the upstream sent signature fields of its own
	h         hash.Hash
	bytes     int64
	signed    respsig.Decision
	sigInput  string
	signature string
	started   time.Time
	// mcpTools is what ext_authz allowed an MCP tools/list to show (the
	// x-agent-mcp-tools request header); nil when the request is not one.
	mcpTools []string
}

// Process serves one stream: Envoy opens one per HTTP request.
func (p *Processor) Process(stream extprocv3.ExternalProcessor_ProcessServer) (err error) {
	x := &exchange{}
	p.o.Metrics.active.Inc()
	defer p.o.Metrics.active.Dec()
	defer func() {
		if r := recover(); r != nil {
			p.o.Logger.Error("panic in ext_proc stream; failing it", "decision_id", x.decision.ID, "panic", fmt.Sprint(r))
			p.o.Metrics.outcome("internal_error")
			err = status.Error(codes.Internal, "agentauthz: internal error")
		}
		if x.phase != phaseDone && x.phase != phaseRequest {
			p.endedEarly(stream.Context(), x)
		}
	}()
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		resp := p.handle(stream.Context(), x, req)
		if resp == nil {
			continue // observability mode: Envoy wants no answer
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

func (p *Processor) handle(ctx context.Context, x *exchange, req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	if pc := req.GetProtocolConfig(); pc != nil {
		x.bodyMode, x.hasMode = pc.GetResponseBodyMode(), true
	}
	var resp *extprocv3.ProcessingResponse
	switch r := req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		resp = p.requestHeaders(x, r.RequestHeaders, envoyDecision(req))
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		resp = p.responseHeaders(ctx, x, r.ResponseHeaders)
	case *extprocv3.ProcessingRequest_ResponseBody:
		resp = p.responseBody(ctx, x, r.ResponseBody)
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		resp = p.responseTrailers(ctx, x)
	case *extprocv3.ProcessingRequest_RequestBody:
		resp = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}}
	case *extprocv3.ProcessingRequest_RequestTrailers:
		resp = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}}
	default:
		// Flow-control only messages and anything newer: nothing to answer.
		return nil
	}
	if req.GetObservabilityMode() {
		return nil
	}
	return resp
}

// header returns the value of a header from Envoy's map; Envoy puts it in
// raw_value.
func header(hv *corev3.HeaderValue) string {
	if rv := hv.GetRawValue(); len(rv) > 0 {
		return string(rv)
	}
	return hv.GetValue()
}

// ExtAuthzNamespace is where Envoy's ext_authz filter keeps agentauthz's
// dynamic metadata, whatever the filter is named.
const ExtAuthzNamespace = "envoy.filters.http.ext_authz"

// envoyDecision reads the ext_authz metadata Envoy forwarded, if any.
func envoyDecision(req *extprocv3.ProcessingRequest) *EnvoyDecision {
	md, ok := req.GetMetadataContext().GetFilterMetadata()[ExtAuthzNamespace]
	if !ok {
		return nil
	}
	f := md.GetFields()
	return &EnvoyDecision{
		DecisionID: f["decision_id"].GetStringValue(),
		Reason:     f["reason"].GetStringValue(),
		AgentID:    f["agent_id"].GetStringValue(),
		TrustLevel: f["trust_level"].GetStringValue(),
		Operation:  f["operation"].GetStringValue(),
	}
}

func (p *Processor) requestHeaders(x *exchange, h *extprocv3.HttpHeaders, envoy *EnvoyDecision) *extprocv3.ProcessingResponse {
	if x.phase != phaseRequest {
		return p.refuse(x, "protocol_error", 500, "request headers out of order")
	}
	var id string
	for _, hv := range h.GetHeaders().GetHeaders() {
		switch hv.GetKey() {
		case ":method":
			x.req.Method = header(hv)
		case ":authority":
			x.req.Authority = header(hv)
		case "host":
			if x.req.Authority == "" {
				x.req.Authority = header(hv)
			}
		case ":path":
			x.req.Path, x.req.Query = splitQuery(header(hv))
		case ":scheme":
			x.req.Scheme = header(hv)
		case "x-decision-id":
			id = header(hv)
		case mcpToolsHeader:
			tools, err := mcp.ParseToolsHeader(header(hv))
			if err != nil {
				return p.refuse(x, "protocol_error", 500, err.Error())
			}
			x.mcpTools = tools
		}
	}
	d, src, err := p.o.Decisions.Lookup(id, envoy, x.req.Method, x.req.Authority, x.req.Path+x.req.Query)
	if err != nil {
		// ext_authz stops every request it does not allow, so a request
		// here without an allowed decision bypassed it: it must not reach
		// the upstream either.
		return p.refuse(x, "no_decision", 403, "no allowed decision for this request: "+err.Error())
	}
	x.decision, x.phase = d, phaseBound
	p.o.Metrics.lookups.WithLabelValues(src).Inc()
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}}
}

func splitQuery(p string) (string, string) {
	if i := strings.IndexByte(p, '?'); i >= 0 {
		return p[:i], p[i:]
	}
	return p, ""
}

func (p *Processor) responseHeaders(ctx context.Context, x *exchange, h *extprocv3.HttpHeaders) *extprocv3.ProcessingResponse {
	if x.phase != phaseBound {
		if x.phase == phaseRequest {
			return p.refuse(x, "no_decision", 502, "response without the request headers (is request_header_mode SEND?)")
		}
		return p.refuse(x, "protocol_error", 502, "response headers out of order")
	}
	x.started = p.o.Now()
	size := 0
	contentLength := int64(-1)
	for _, hv := range h.GetHeaders().GetHeaders() {
		size += len(hv.GetKey()) + len(hv.GetRawValue()) + len(hv.GetValue())
		switch hv.GetKey() {
		case ":status":
			x.status, _ = strconv.Atoi(header(hv))
		case "content-type":
			if v := header(hv); x.hasCType {
				x.ctype += ", " + v
			} else {
				x.ctype, x.hasCType = v, true
			}
		case "content-length":
			if n, err := strconv.ParseInt(header(hv), 10, 64); err == nil && n >= 0 {
				contentLength = n
			}
		case "signature", "signature-input":
			x.upstream = true
		}
	}
	if size > p.o.MaxHeaderBytes {
		return p.refuse(x, "headers_too_large", 502, fmt.Sprintf("response header block of %d bytes exceeds %d", size, p.o.MaxHeaderBytes))
	}
	if x.status < 100 || x.status > 999 {
		return p.refuse(x, "protocol_error", 502, "response without a valid :status")
	}
	x.h = sha256.New()
	buffered := !(x.hasMode && x.bodyMode != filterv3.ProcessingMode_BUFFERED && x.bodyMode != filterv3.ProcessingMode_BUFFERED_PARTIAL) && contentLength <= p.o.MaxBodyBytes
	if x.mcpTools != nil && !h.GetEndOfStream() && !buffered {
		// The agent must not see tools it may not call, and only a
		// buffered answer can be filtered: fail closed.
		return p.refuse(x, "mcp_unfilterable", 502, "a tools/list answer must be buffered to be filtered (response_body_mode BUFFERED, within max_body_bytes)")
	}
	switch {
	case h.GetEndOfStream():
		// No body: the digest is that of the empty body.
		return p.headersResponse(p.sign(ctx, x, true, ""))
	case x.hasMode && x.bodyMode == filterv3.ProcessingMode_NONE:
		return p.headersResponse(p.sign(ctx, x, false, respsig.UnsignedNotSent))
	case x.hasMode && (x.bodyMode == filterv3.ProcessingMode_STREAMED || x.bodyMode == filterv3.ProcessingMode_FULL_DUPLEX_STREAMED):
		return p.headersResponse(p.signStreamed(x))
	case contentLength > p.o.MaxBodyBytes:
		// Known to be too large to hold: sign now, and have Envoy stream
		// the body so its digest still reaches the log.
		resp := p.headersResponse(p.signStreamed(x))
		if _, ok := resp.Response.(*extprocv3.ProcessingResponse_ResponseHeaders); ok {
			resp.ModeOverride = &filterv3.ProcessingMode{
				ResponseHeaderMode:  filterv3.ProcessingMode_SEND,
				ResponseBodyMode:    filterv3.ProcessingMode_STREAMED,
				ResponseTrailerMode: filterv3.ProcessingMode_SKIP,
			}
		}
		return resp
	}
	// Buffered: Envoy holds the headers until the body is answered, and
	// the signature goes with that answer.
	x.phase = phaseAwaitBody
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}}
}

func (p *Processor) responseBody(ctx context.Context, x *exchange, b *extprocv3.HttpBody) *extprocv3.ProcessingResponse {
	body := b.GetBody()
	cont := &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}}
	switch x.phase {
	case phaseAwaitBody:
		if x.mcpTools != nil {
			return p.filterTools(ctx, x, b)
		}
		x.h.Write(body)
		x.bytes += int64(len(body))
		var m *extprocv3.CommonResponse
		var refused *extprocv3.ProcessingResponse
		if !b.GetEndOfStream() && x.bytes >= p.o.MaxBodyBytes {
			// Envoy's partial buffer is full: the rest streams past us.
			m, refused = p.sign(ctx, x, false, respsig.UnsignedTooLarge)
		} else {
			// The whole body: the end of the stream, or trailers follow.
			// (Larger than MaxBodyBytes only when Envoy buffered more;
			// nothing is held here, so it is signed all the same.)
			m, refused = p.sign(ctx, x, true, "")
		}
		if refused != nil {
			return refused
		}
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{Response: m}}}
	case phaseStreaming:
		x.h.Write(body)
		x.bytes += int64(len(body))
		if b.GetEndOfStream() {
			p.finishStreamed(ctx, x, "unsigned: "+respsig.UnsignedStreamed)
		}
		return cont
	case phaseDone:
		return cont
	}
	return p.refuse(x, "protocol_error", 502, "response body out of order")
}

func (p *Processor) responseTrailers(ctx context.Context, x *exchange) *extprocv3.ProcessingResponse {
	cont := &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}}
	switch x.phase {
	case phaseStreaming:
		p.finishStreamed(ctx, x, "unsigned: "+respsig.UnsignedStreamed)
		return cont
	case phaseDone:
		return cont
	}
	// Trailers while the headers still wait for a body answer: Envoy has
	// already sent the headers, so there is nothing left to sign.
	return p.refuse(x, "unsignable", 502, "trailers before the body was signed")
}

// headersResponse wraps the outcome of sign as the answer to a headers
// message.
func (p *Processor) headersResponse(m *extprocv3.CommonResponse, refused *extprocv3.ProcessingResponse) *extprocv3.ProcessingResponse {
	if refused != nil {
		return refused
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{Response: m}}}
}

// signStreamed signs at the headers and keeps digesting the body for the
// log.
func (p *Processor) signStreamed(x *exchange) (*extprocv3.CommonResponse, *extprocv3.ProcessingResponse) {
	m, refused := p.signOnly(x, false, respsig.UnsignedStreamed)
	if refused == nil {
		x.phase = phaseStreaming
		p.o.Logger.Info("response signed at its headers; its body streams through and only its digest is logged", "decision_id", x.decision.ID, "status", x.status)
	}
	return m, refused
}

// sign signs the response, records it and returns the header mutation.
// withDigest covers the body digested so far; otherwise unsigned says why
// the body is not covered.
func (p *Processor) sign(ctx context.Context, x *exchange, withDigest bool, unsigned string) (*extprocv3.CommonResponse, *extprocv3.ProcessingResponse) {
	m, refused := p.signOnly(x, withDigest, unsigned)
	if refused != nil {
		return nil, refused
	}
	body, digest := BodySigned, httpsig.ContentDigestSHA256(x.h.Sum(nil))
	if !withDigest {
		// A digest of part of the body would read as the body's.
		body, digest = "unsigned: "+unsigned, ""
	}
	if err := p.record(ctx, x, body, digest); err != nil {
		// Nothing leaves without its record, as for decisions.
		return nil, p.refuse(x, "log_failed", 502, "response record not written: "+err.Error())
	}
	x.phase = phaseDone
	p.o.Metrics.outcome(outcomeOf(withDigest, unsigned))
	if !withDigest {
		p.o.Logger.Info("response signed without its body", "why", unsigned, "decision_id", x.decision.ID, "status", x.status, "bytes", x.bytes)
	} else if p.o.Logger.IsDebug() {
		p.o.Logger.Debug("response signed", "decision_id", x.decision.ID, "status", x.status, "bytes", x.bytes)
	}
	return m, nil
}

func outcomeOf(withDigest bool, unsigned string) string {
	if withDigest {
		return "signed"
	}
	return "unsigned_" + strings.ReplaceAll(unsigned, "-", "_")
}

func (p *Processor) signOnly(x *exchange, withDigest bool, unsigned string) (*extprocv3.CommonResponse, *extprocv3.ProcessingResponse) {
	start := time.Now()
	kid, signFn := p.o.Signer()
	s := respsig.Signer{KeyID: kid, Sign: signFn, Now: p.o.Now}
	resp := &httpsig.Message{Status: x.status, Request: &x.req}
	if x.hasCType {
		resp.Header = append(resp.Header, httpsig.Field{Name: "content-type", Value: x.ctype})
	}
	digest := ""
	if withDigest {
		digest = httpsig.ContentDigestSHA256(x.h.Sum(nil))
	}
	x.signed = respsig.Decision{ID: x.decision.ID, AgentID: x.decision.AgentID, TrustLevel: x.decision.TrustLevel, Operation: x.decision.Operation}
	set, del, err := s.SignResponse(resp, x.signed, digest, unsigned)
	if err != nil {
		return nil, p.refuse(x, "sign_failed", 502, "response not signed: "+err.Error())
	}
	p.o.Metrics.signSeconds.Observe(time.Since(start).Seconds())
	if x.upstream {
		p.o.Metrics.outcome("replaced_upstream_signature")
		p.o.Logger.Info("upstream response carried its own signature fields; replaced by agentauthz's", "decision_id", x.decision.ID)
	}
	// The options, header values and raw bytes come from one block each:
	// three allocations instead of three per field.
	mut := &extprocv3.HeaderMutation{RemoveHeaders: del, SetHeaders: make([]*corev3.HeaderValueOption, len(set))}
	opts := make([]corev3.HeaderValueOption, len(set))
	vals := make([]corev3.HeaderValue, len(set))
	n := 0
	for _, f := range set {
		n += len(f.Value)
	}
	raw := make([]byte, 0, n)
	for i, f := range set {
		switch f.Name {
		case "signature-input":
			x.sigInput = f.Value
		case "signature":
			x.signature = f.Value
		}
		start := len(raw)
		raw = append(raw, f.Value...)
		vals[i] = corev3.HeaderValue{Key: f.Name, RawValue: raw[start:len(raw):len(raw)]}
		opts[i].Header, opts[i].AppendAction = &vals[i], corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
		mut.SetHeaders[i] = &opts[i]
	}
	return &extprocv3.CommonResponse{HeaderMutation: mut}, nil
}

// finishStreamed records a streamed body's digest once it has passed.
func (p *Processor) finishStreamed(ctx context.Context, x *exchange, body string) {
	digest := httpsig.ContentDigestSHA256(x.h.Sum(nil))
	x.phase = phaseDone
	if err := p.record(ctx, x, body, digest); err != nil {
		// The body has left already; all that is left is to say so.
		p.o.Metrics.outcome("log_failed")
		p.o.Logger.Error("streamed response record not written", "decision_id", x.decision.ID, "error", err)
		return
	}
	p.o.Metrics.outcome("unsigned_streamed")
}

// endedEarly records what is known of an exchange whose stream ended
// before the response was complete.
func (p *Processor) endedEarly(ctx context.Context, x *exchange) {
	p.o.Metrics.outcome("stream_ended_early")
	p.o.Logger.Warn("ext_proc stream ended before the response was complete", "decision_id", x.decision.ID, "bytes", x.bytes)
	if x.phase != phaseStreaming && x.phase != phaseAwaitBody {
		return
	}
	digest := ""
	if x.h != nil {
		digest = httpsig.ContentDigestSHA256(x.h.Sum(nil))
	}
	if err := p.record(context.WithoutCancel(ctx), x, BodyIncomplete, digest); err != nil {
		p.o.Logger.Error("incomplete response record not written", "decision_id", x.decision.ID, "error", err)
	}
}

func (p *Processor) record(ctx context.Context, x *exchange, body, digest string) error {
	return p.o.Log.AppendResponse(context.WithoutCancel(ctx), ResponseRecord{
		Decision: x.decision, Time: x.started, Status: x.status, Body: body, ContentDigest: digest,
		Bytes: x.bytes, SignatureInput: x.sigInput, Signature: x.signature,
	})
}

// refuse replaces the response with an error reply agentauthz makes
// itself (unsigned: it is not the upstream's), counts and logs why.
func (p *Processor) refuse(x *exchange, outcome string, code typev3.StatusCode, detail string) *extprocv3.ProcessingResponse {
	x.phase = phaseDone
	p.o.Metrics.outcome(outcome)
	p.o.Logger.Warn("response refused", "outcome", outcome, "decision_id", x.decision.ID, "method", x.req.Method,
		"authority", x.req.Authority, "path", x.req.Path, "detail", detail)
	body, _ := json.Marshal(struct {
		Error      string `json:"error"`
		Reason     string `json:"reason"`
		DecisionID string `json:"decision_id,omitempty"`
	}{"the response could not be signed", "response_" + outcome, x.decision.ID})
	hm := &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{
		Header:       &corev3.HeaderValue{Key: "content-type", RawValue: []byte("application/json")},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}}}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: &extprocv3.ImmediateResponse{
		Status:  &typev3.HttpStatus{Code: code},
		Headers: hm,
		Body:    body,
		Details: "agentauthz_" + outcome,
	}}}
}

// mcpToolsHeader is extauthz.HeaderMCPTools (not imported: extauthz is the
// decision path, this the response path).
const mcpToolsHeader = "x-agent-mcp-tools"

// filterTools answers the body of an allowed MCP tools/list: the tools the
// agent may not call are removed before the answer is signed, so the
// signature and the record cover what the agent saw (docs/mcp.md).
func (p *Processor) filterTools(ctx context.Context, x *exchange, b *extprocv3.HttpBody) *extprocv3.ProcessingResponse {
	if !b.GetEndOfStream() {
		return p.refuse(x, "mcp_unfilterable", 502, "tools/list answer larger than the buffer: cannot filter it")
	}
	body, changed, err := mcp.FilterToolsList(b.GetBody(), x.ctype, x.mcpTools)
	if err != nil {
		return p.refuse(x, "mcp_unfilterable", 502, err.Error())
	}
	x.h.Write(body)
	x.bytes += int64(len(body))
	m, refused := p.sign(ctx, x, true, "")
	if refused != nil {
		return refused
	}
	if changed {
		p.o.Metrics.outcome("mcp_tools_filtered")
		m.BodyMutation = &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: body}}
		// The length changed; Envoy recomputes it for a buffered body.
		m.HeaderMutation.RemoveHeaders = append(m.HeaderMutation.RemoveHeaders, "content-length")
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{Response: m}}}
}
