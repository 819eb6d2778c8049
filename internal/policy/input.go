package policy

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/url"
	"strconv"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/util"

	"github.com/agentauthz/agentauthz/internal/identity"
)

// MaxBodyBytes bounds the request body the input builder parses. Envoy's
// with_request_body.max_request_bytes should be set well below it.
const MaxBodyBytes = 1 << 20

// Keys of the input document, allocated once: the builder reuses these terms
// for every request (terms are never mutated after construction).
var (
	keyAttributes    = ast.StringTerm("attributes")
	keyParsedPath    = ast.StringTerm("parsed_path")
	keyParsedQuery   = ast.StringTerm("parsed_query")
	keyParsedBody    = ast.StringTerm("parsed_body")
	keyTruncatedBody = ast.StringTerm("truncated_body")
	keyVersion       = ast.StringTerm("version")
	keySourcePrinc   = ast.StringTerm("source_principal")
	keyAgent         = ast.StringTerm("agent")
	keyOperation     = ast.StringTerm("operation")

	keyID         = ast.StringTerm("id")
	keySPIFFEID   = ast.StringTerm("spiffe_id")
	keyTenant     = ast.StringTerm("tenant")
	keyTrustLevel = ast.StringTerm("trust_level")
	keyTrust      = ast.StringTerm("trust")
	keyScopes     = ast.StringTerm("scopes")
	keyOwner      = ast.StringTerm("owner")
	keySerial     = ast.StringTerm("serial")
	keyCertSHA256 = ast.StringTerm("cert_sha256")
	keyIssuer     = ast.StringTerm("issuer")
	keyNotBefore  = ast.StringTerm("not_before")
	keyNotAfter   = ast.StringTerm("not_after")
	keyProfile    = ast.StringTerm("profile")
	keySource     = ast.StringTerm("source")

	// versionTerm is input.version exactly as opa-envoy-plugin sets it for v3.
	versionTerm = ast.ObjectTerm(
		ast.Item(ast.StringTerm("encoding"), ast.StringTerm("protojson")),
		ast.Item(ast.StringTerm("ext_authz"), ast.StringTerm("v3")),
	)
	nullTerm  = ast.NullTerm()
	falseTerm = ast.BooleanTerm(false)
	trueTerm  = ast.BooleanTerm(true)
)

// trustTerms and trustLevelTerms are the shared terms for trust levels 0..4.
var (
	trustTerms      = [...]*ast.Term{ast.IntNumberTerm(0), ast.IntNumberTerm(1), ast.IntNumberTerm(2), ast.IntNumberTerm(3), ast.IntNumberTerm(4)}
	trustLevelTerms = [...]*ast.Term{ast.StringTerm("L0"), ast.StringTerm("L1"), ast.StringTerm("L2"), ast.StringTerm("L3"), ast.StringTerm("L4")}
)

// ErrInput means the request could not be turned into an input document
// (unparsable path or query, malformed JSON body, body too large, invalid
// protobuf value). The caller denies with request_parse_error (400), as
// opa-envoy-plugin does.
var ErrInput = errors.New("cannot build policy input")

// BuildInput builds the policy input document for req: the fields
// opa-envoy-plugin sets (attributes, parsed_path, parsed_query, parsed_body,
// truncated_body, version, source_principal when not empty) with its values,
// plus agent (when agent is not nil) and operation (when not empty).
//
// The attributes value is opa-envoy-plugin's conversion (protomap.go),
// built directly as an ast value.
func BuildInput(req *authv3.CheckRequest, agent *identity.Agent, operation string) (ast.Value, error) {
	var agentTerm *ast.Term
	if agent != nil {
		agentTerm = ast.NewTerm(agentValue(agent))
	}
	return buildInput(req, agentTerm, operation)
}

// buildInput is BuildInput with input.agent already converted (the engine
// caches it per *identity.Agent).
func buildInput(req *authv3.CheckRequest, agentTerm *ast.Term, operation string) (ast.Value, error) {
	httpReq := req.GetAttributes().GetRequest().GetHttp()
	// Collected first and built in one ast.NewObject call: one block for
	// all elements instead of an allocation per Insert (and regrowth).
	kv := make([][2]*ast.Term, 0, 9)

	if a := req.GetAttributes(); a != nil {
		v, err := attributesValue(a)
		if err != nil {
			return nil, fmt.Errorf("%w: attributes: %w", ErrInput, err)
		}
		kv = append(kv, ast.Item(keyAttributes, ast.NewTerm(v)))
	}
	if p := req.GetAttributes().GetSource().GetPrincipal(); p != "" {
		kv = append(kv, ast.Item(keySourcePrinc, ast.StringTerm(p)))
	}

	path, query, err := parsePathAndQuery(httpReq.GetPath())
	if err != nil {
		return nil, fmt.Errorf("%w: path: %w", ErrInput, err)
	}
	kv = append(kv, ast.Item(keyParsedPath, path), ast.Item(keyParsedQuery, query))

	body, truncated, err := ParseBody(httpReq.GetHeaders(), httpReq.GetBody(), httpReq.GetRawBody())
	if err != nil {
		return nil, fmt.Errorf("%w: body: %w", ErrInput, err)
	}
	kv = append(kv, ast.Item(keyParsedBody, body))
	if truncated {
		kv = append(kv, ast.Item(keyTruncatedBody, trueTerm))
	} else {
		kv = append(kv, ast.Item(keyTruncatedBody, falseTerm))
	}
	kv = append(kv, ast.Item(keyVersion, versionTerm))

	if agentTerm != nil {
		kv = append(kv, ast.Item(keyAgent, agentTerm))
	}
	if operation != "" {
		kv = append(kv, ast.Item(keyOperation, ast.StringTerm(operation)))
	}
	return ast.NewObject(kv...), nil
}

// agentValue is input.agent. Times are RFC 3339 in UTC; zero times (SPIFFE-only
// identities have no certificate) are left out.
func agentValue(a *identity.Agent) ast.Object {
	scopes := make([]*ast.Term, len(a.Scopes))
	for i, s := range a.Scopes {
		scopes[i] = ast.StringTerm(s)
	}
	trust, level := ast.IntNumberTerm(a.TrustLevel), ast.StringTerm(a.TrustLabel())
	if a.TrustLevel >= 0 && a.TrustLevel < len(trustTerms) {
		trust, level = trustTerms[a.TrustLevel], trustLevelTerms[a.TrustLevel]
	}
	obj := ast.NewObject(
		ast.Item(keyID, ast.StringTerm(a.ID)),
		ast.Item(keySPIFFEID, ast.StringTerm(a.SPIFFEID)),
		ast.Item(keyTenant, ast.StringTerm(a.Tenant)),
		ast.Item(keyTrustLevel, level),
		ast.Item(keyTrust, trust),
		ast.Item(keyScopes, ast.ArrayTerm(scopes...)),
		ast.Item(keyOwner, ast.StringTerm(a.Owner)),
		ast.Item(keySerial, ast.StringTerm(a.Serial)),
		ast.Item(keyCertSHA256, ast.StringTerm(a.CertSHA256)),
		ast.Item(keyIssuer, ast.StringTerm(a.Issuer)),
		ast.Item(keyProfile, ast.StringTerm(string(a.Profile))),
		ast.Item(keySource, ast.StringTerm(string(a.Source))),
	)
	if !a.NotBefore.IsZero() {
		obj.Insert(keyNotBefore, ast.StringTerm(a.NotBefore.UTC().Format(time.RFC3339)))
	}
	if !a.NotAfter.IsZero() {
		obj.Insert(keyNotAfter, ast.StringTerm(a.NotAfter.UTC().Format(time.RFC3339)))
	}
	return obj
}

// parsePathAndQuery returns parsed_path and parsed_query (see path.go).
func parsePathAndQuery(raw string) (*ast.Term, *ast.Term, error) {
	p, q := cutTarget(raw)
	path, err := parsedPathTerm(p)
	if err != nil {
		return nil, nil, err
	}
	query, err := parsedQueryTerm(q)
	if err != nil {
		return nil, nil, fmt.Errorf("query: %w", err)
	}
	return path, query, nil
}

// bodyKind is what ParseBody does with a request body.
type bodyKind uint8

const (
	bodyNull      bodyKind = iota // not parsed: parsed_body is null
	bodyTruncated                 // shorter than content-length: null, truncated_body true
	bodyForm                      // application/x-www-form-urlencoded
	bodyJSON                      // application/json
	bodyMultipart                 // multipart/form-data
)

// classifyBody is the part of ParseBody that looks at the headers and the
// body length only (n is len(body), or len(raw) when body is empty); input
// validation shares it. Its errors are ParseBody's.
func classifyBody(headers map[string]string, n int) (bodyKind, error) {
	// Envoy's mark of a body cut at with_request_body.max_request_bytes,
	// reliable also without content-length (HTTP/2, chunked).
	if headers["x-envoy-auth-partial-body"] == "true" {
		return bodyTruncated, nil
	}
	ct, ok := headers["content-type"]
	if !ok {
		return bodyNull, nil
	}
	kind := bodyNull
	switch {
	case strings.Contains(ct, "application/json"):
		kind = bodyJSON
	case strings.Contains(ct, "application/x-www-form-urlencoded"):
		kind = bodyForm
	case strings.Contains(ct, "multipart/form-data"):
		kind = bodyMultipart
	}
	if kind == bodyNull || n == 0 {
		return bodyNull, nil
	}
	if n > MaxBodyBytes {
		return bodyNull, fmt.Errorf("body of %d bytes exceeds %d", n, MaxBodyBytes)
	}
	if cl, ok := headers["content-length"]; ok {
		l, err := strconv.ParseInt(cl, 10, 64)
		if err != nil {
			return bodyNull, fmt.Errorf("content-length: %w", err)
		}
		if l != -1 && l > int64(n) {
			return bodyTruncated, nil
		}
	}
	return kind, nil
}

// bodyLen is the length of the body ParseBody looks at: body, or raw when
// body is empty.
func bodyLen(body string, raw []byte) int {
	if body != "" {
		return len(body)
	}
	return len(raw)
}

// ParseBody mirrors opa-envoy-plugin (getParsedBody) for JSON, URL-encoded
// and multipart form bodies: parsed only when content-type says so; a body Envoy marked partial
// (x-envoy-auth-partial-body: true) or shorter than content-length is
// truncated and not parsed. Other content types give null.
func ParseBody(headers map[string]string, body string, raw []byte) (*ast.Term, bool, error) {
	kind, err := classifyBody(headers, bodyLen(body, raw))
	switch {
	case err != nil:
		return nil, false, err
	case kind == bodyNull:
		return nullTerm, false, nil
	case kind == bodyTruncated:
		return nullTerm, true, nil
	}
	if body == "" {
		body = string(raw)
	}
	switch kind {
	case bodyForm:
		vals, err := url.ParseQuery(body)
		if err != nil {
			return nil, false, err
		}
		return ast.NewTerm(valuesObject(vals)), false, nil
	case bodyMultipart:
		return parseMultipart(headers["content-type"], body)
	}
	var data any
	if err := util.UnmarshalJSON([]byte(body), &data); err != nil {
		return nil, false, err
	}
	v, err := ast.InterfaceToValue(data)
	if err != nil {
		return nil, false, err
	}
	return ast.NewTerm(v), false, nil
}

// parseMultipart is opa-envoy-plugin's multipart/form-data parsing: each
// named part's value appended under its form name, as a string, or as
// JSON when the part's content-type says so; unnamed parts skipped. A
// content-type without a boundary gives null.
func parseMultipart(contentType, body string) (*ast.Term, bool, error) {
	_, params, err := mime.ParseMediaType(contentType)
	if err != nil {
		return nil, false, err
	}
	boundary, ok := params["boundary"]
	if !ok {
		return nullTerm, false, nil
	}
	values := map[string][]*ast.Term{}
	var names []string
	mr := multipart.NewReader(strings.NewReader(body), boundary)
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, false, err
		}
		name := p.FormName()
		if name == "" {
			continue
		}
		value, err := io.ReadAll(p)
		if err != nil {
			return nil, false, err
		}
		t := ast.StringTerm(string(value))
		if strings.Contains(p.Header.Get("Content-Type"), "application/json") {
			var data any
			if err := util.UnmarshalJSON(value, &data); err != nil {
				return nil, false, err
			}
			v, err := ast.InterfaceToValue(data)
			if err != nil {
				return nil, false, err
			}
			t = ast.NewTerm(v)
		}
		if _, seen := values[name]; !seen {
			names = append(names, name)
		}
		values[name] = append(values[name], t)
	}
	kv := make([][2]*ast.Term, len(names))
	for i, n := range names {
		kv[i] = ast.Item(ast.StringTerm(n), ast.ArrayTerm(values[n]...))
	}
	return ast.NewTerm(ast.NewObject(kv...)), false, nil
}
