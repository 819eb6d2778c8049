// Package edge is a small forwarding proxy that stands in for Envoy on an
// MCP route, as the shipped configuration sets it up (envoy/envoy.yaml):
// mutual TLS with the agent, ext_authz Check with the whole request body
// (with_request_body, allow_partial_message: false), and ext_proc on the
// buffered response. It asks agentauthz exactly as Envoy would, over gRPC,
// and honours the answers. The demo and the MCP end-to-end tests use it;
// no Envoy binary can run where they do.
package edge

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/agentauthz/agentauthz/internal/checkreq"
)

// Defaults, as in envoy/envoy.yaml.
const (
	DefaultMaxRequestBytes  = 64 << 10
	DefaultMaxResponseBytes = 4 << 20
)

// Options configure a Proxy.
type Options struct {
	// Upstream is the MCP server's base URL (scheme and host).
	Upstream *url.URL
	Authz    authv3.AuthorizationClient
	// Processor runs ext_proc on every allowed response; nil skips it.
	Processor extprocv3.ExternalProcessorClient
	// MaxRequestBytes is with_request_body.max_request_bytes: a larger
	// body is answered 413 without asking (allow_partial_message: false).
	MaxRequestBytes int
	// MaxResponseBytes bounds the buffered upstream answer.
	MaxResponseBytes int64
	Client           *http.Client
}

// Proxy is an http.Handler; serve it over TLS with client certificates
// requested so that the agent's certificate reaches Check as Envoy's
// include_peer_certificate sends it.
type Proxy struct{ o Options }

// New returns a Proxy.
func New(o Options) (*Proxy, error) {
	if o.Upstream == nil || o.Authz == nil {
		return nil, errors.New("edge: upstream and authz client are required")
	}
	if o.MaxRequestBytes <= 0 {
		o.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if o.MaxResponseBytes <= 0 {
		o.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if o.Client == nil {
		o.Client = &http.Client{}
	}
	return &Proxy{o: o}, nil
}

// hopByHop headers are not forwarded.
var hopByHop = map[string]bool{"connection": true, "keep-alive": true, "proxy-connection": true, "te": true,
	"trailer": true, "transfer-encoding": true, "upgrade": true}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, int64(p.o.MaxRequestBytes)+1))
	if err != nil {
		http.Error(w, "bad request body", http.StatusBadRequest)
		return
	}
	if len(body) > p.o.MaxRequestBytes {
		http.Error(w, "Payload Too Large", http.StatusRequestEntityTooLarge)
		return
	}
	headers := map[string]string{}
	for k, vs := range r.Header {
		if k = strings.ToLower(k); !hopByHop[k] {
			headers[k] = strings.Join(vs, ",")
		}
	}
	creq := checkreq.Request{Method: r.Method, Path: r.URL.RequestURI(), Host: r.Host, Headers: headers,
		RequestID: newID(), SourceAddr: r.RemoteAddr, Via: checkreq.ViaNone}
	if len(body) > 0 {
		creq.Body = body
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		creq.CertPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.TLS.PeerCertificates[0].Raw})
		creq.Via = checkreq.ViaPeer
	}
	check, err := checkreq.Build(creq)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	resp, err := p.o.Authz.Check(r.Context(), check)
	if err != nil {
		// failure_mode_allow: false
		http.Error(w, "ext_authz unavailable", http.StatusForbidden)
		return
	}
	if d := resp.GetDeniedResponse(); d != nil || resp.GetStatus().GetCode() != 0 {
		for _, h := range d.GetHeaders() {
			w.Header().Set(h.GetHeader().GetKey(), value(h.GetHeader()))
		}
		code := int(d.GetStatus().GetCode())
		if code == 0 {
			code = http.StatusForbidden
		}
		w.WriteHeader(code)
		_, _ = io.WriteString(w, d.GetBody())
		return
	}
	ok := resp.GetOkResponse()
	for _, h := range ok.GetHeadersToRemove() {
		delete(headers, strings.ToLower(h))
	}
	for _, h := range ok.GetHeaders() {
		k := strings.ToLower(h.GetHeader().GetKey())
		if h.GetAppendAction() == corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD && headers[k] != "" {
			headers[k] += "," + value(h.GetHeader())
		} else {
			headers[k] = value(h.GetHeader())
		}
	}
	status, respHeaders, respBody, err := p.forward(r.Context(), r.Method, r.URL.RequestURI(), headers, body)
	if err != nil {
		http.Error(w, "upstream: "+err.Error(), http.StatusBadGateway)
		return
	}
	for _, h := range ok.GetResponseHeadersToAdd() {
		respHeaders.Set(h.GetHeader().GetKey(), value(h.GetHeader()))
	}
	if p.o.Processor != nil {
		headers[":method"], headers[":path"], headers[":authority"], headers[":scheme"] = r.Method, r.URL.RequestURI(), r.Host, "https"
		var imm *extprocv3.ImmediateResponse
		status, respHeaders, respBody, imm, err = p.process(r.Context(), headers, status, respHeaders, respBody)
		if err != nil {
			http.Error(w, "ext_proc: "+err.Error(), http.StatusInternalServerError)
			return
		}
		if imm != nil {
			for _, h := range imm.GetHeaders().GetSetHeaders() {
				w.Header().Set(h.GetHeader().GetKey(), value(h.GetHeader()))
			}
			w.WriteHeader(int(imm.GetStatus().GetCode()))
			_, _ = w.Write(imm.GetBody()) //nolint:gosec // G705: a proxy relays the processor's answer as Envoy does
			return
		}
	}
	for k, vs := range respHeaders {
		if !hopByHop[strings.ToLower(k)] {
			w.Header()[k] = vs
		}
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(respBody)))
	w.WriteHeader(status)
	_, _ = w.Write(respBody) //nolint:gosec // G705: a proxy relays the upstream's answer as Envoy does
}

func (p *Proxy) forward(ctx context.Context, method, target string, headers map[string]string, body []byte) (int, http.Header, []byte, error) {
	u := *p.o.Upstream
	u.Path, u.RawQuery, _ = strings.Cut(target, "?")
	req, err := http.NewRequestWithContext(ctx, method, u.String(), bytes.NewReader(body))
	if err != nil {
		return 0, nil, nil, err
	}
	for k, v := range headers {
		if !strings.HasPrefix(k, ":") && k != "host" && k != "content-length" {
			req.Header.Set(k, v)
		}
	}
	resp, err := p.o.Client.Do(req) //nolint:gosec // G704: the upstream is fixed by Options, only the path comes from the client
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, p.o.MaxResponseBytes+1))
	if err != nil {
		return 0, nil, nil, err
	}
	if int64(len(b)) > p.o.MaxResponseBytes {
		return 0, nil, nil, fmt.Errorf("answer over %d bytes", p.o.MaxResponseBytes)
	}
	return resp.StatusCode, resp.Header, b, nil
}

// process runs one ext_proc stream over the exchange, in buffered mode,
// and applies the processor's mutations.
func (p *Proxy) process(ctx context.Context, reqHeaders map[string]string, status int, h http.Header, body []byte) (int, http.Header, []byte, *extprocv3.ImmediateResponse, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := p.o.Processor.Process(ctx)
	if err != nil {
		return 0, nil, nil, nil, err
	}
	defer func() { _ = s.CloseSend() }()
	send := func(r *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, error) {
		if err := s.Send(r); err != nil {
			return nil, err
		}
		return s.Recv()
	}
	hm := &corev3.HeaderMap{}
	for k, v := range reqHeaders {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: k, RawValue: []byte(v)})
	}
	r, err := send(&extprocv3.ProcessingRequest{
		ProtocolConfig: &extprocv3.ProtocolConfiguration{ResponseBodyMode: filterv3.ProcessingMode_BUFFERED},
		Request:        &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: hm, EndOfStream: true}},
	})
	if err != nil {
		return 0, nil, nil, nil, err
	}
	if imm := r.GetImmediateResponse(); imm != nil {
		return 0, nil, nil, imm, nil
	}
	rh := &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: ":status", RawValue: []byte(strconv.Itoa(status))}}}
	for k, vs := range h {
		rh.Headers = append(rh.Headers, &corev3.HeaderValue{Key: strings.ToLower(k), RawValue: []byte(strings.Join(vs, ","))})
	}
	r, err = send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &extprocv3.HttpHeaders{Headers: rh, EndOfStream: len(body) == 0}}})
	if err != nil {
		return 0, nil, nil, nil, err
	}
	if imm := r.GetImmediateResponse(); imm != nil {
		return 0, nil, nil, imm, nil
	}
	h = h.Clone()
	mutate(h, r.GetResponseHeaders().GetResponse().GetHeaderMutation())
	if len(body) == 0 {
		return status, h, body, nil, nil
	}
	r, err = send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{
		ResponseBody: &extprocv3.HttpBody{Body: body, EndOfStream: true}}})
	if err != nil {
		return 0, nil, nil, nil, err
	}
	if imm := r.GetImmediateResponse(); imm != nil {
		return 0, nil, nil, imm, nil
	}
	cr := r.GetResponseBody().GetResponse()
	mutate(h, cr.GetHeaderMutation())
	if b := cr.GetBodyMutation(); b != nil {
		body = b.GetBody()
	}
	return status, h, body, nil, nil
}

func mutate(h http.Header, m *extprocv3.HeaderMutation) {
	for _, k := range m.GetRemoveHeaders() {
		h.Del(k)
	}
	for _, o := range m.GetSetHeaders() {
		h.Set(o.GetHeader().GetKey(), value(o.GetHeader()))
	}
}

func value(h *corev3.HeaderValue) string {
	if rv := h.GetRawValue(); len(rv) > 0 {
		return string(rv)
	}
	return h.GetValue()
}

func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
