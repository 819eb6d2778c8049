package policy

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/url"
	"strconv"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/util"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/agentauthz/agentauthz/internal/identity"
)

// MaxBodyBytes bounds the request body the input builder parses. Envoy's
// with_request_body.max_request_bytes should be set well below it.
const MaxBodyBytes = 1 << 20

// maxProtoDepth bounds recursion through nested messages (google.protobuf.Struct
// can nest arbitrarily deep).
const maxProtoDepth = 64

// Keys of the input document, allocated once: the builder reuses these terms
// for every request (terms are never mutated after construction).
var (
	keyAttributes    = ast.StringTerm("attributes")
	keyParsedPath    = ast.StringTerm("parsed_path")
	keyParsedQuery   = ast.StringTerm("parsed_query")
	keyParsedBody    = ast.StringTerm("parsed_body")
	keyTruncatedBody = ast.StringTerm("truncated_body")
	keyVersion       = ast.StringTerm("version")
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
// (unparsable path, malformed JSON body, body too large, invalid protobuf
// value). The caller denies with policy_error, as opa-envoy-plugin does.
var ErrInput = errors.New("cannot build policy input")

// BuildInput builds the policy input document for req: the opa-envoy-plugin
// fields (attributes, parsed_path, parsed_query, parsed_body, truncated_body,
// version) plus agent (when agent is not nil) and operation (when not empty).
//
// The attributes value equals what protojson.Marshal → JSON → ast would give,
// without the round trip.
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
	kv := make([][2]*ast.Term, 0, 8)

	attrs := ast.NewObject()
	if a := req.GetAttributes(); a != nil {
		v, err := attributesValue(a)
		if err != nil {
			return nil, fmt.Errorf("%w: attributes: %w", ErrInput, err)
		}
		attrs = v
	}
	kv = append(kv, ast.Item(keyAttributes, ast.NewTerm(attrs)))

	path, query, err := parsePathAndQuery(httpReq.GetPath())
	if err != nil {
		return nil, fmt.Errorf("%w: path: %w", ErrInput, err)
	}
	kv = append(kv, ast.Item(keyParsedPath, path), ast.Item(keyParsedQuery, query))

	body, truncated, err := parseBody(httpReq.GetHeaders(), httpReq.GetBody(), httpReq.GetRawBody())
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

// bodyKind is what parseBody does with a request body.
type bodyKind uint8

const (
	bodyNull      bodyKind = iota // not parsed: parsed_body is null
	bodyTruncated                 // shorter than content-length: null, truncated_body true
	bodyForm                      // application/x-www-form-urlencoded
	bodyJSON                      // application/json
)

// classifyBody is the part of parseBody that looks at the headers and the
// body length only (n is len(body), or len(raw) when body is empty); input
// validation shares it. Its errors are parseBody's.
func classifyBody(headers map[string]string, n int) (bodyKind, error) {
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

// bodyLen is the length of the body parseBody looks at: body, or raw when
// body is empty.
func bodyLen(body string, raw []byte) int {
	if body != "" {
		return len(body)
	}
	return len(raw)
}

// parseBody mirrors opa-envoy-plugin for JSON and form bodies: parsed only
// when content-type says so; a body shorter than content-length is truncated
// and not parsed. Other content types give null.
func parseBody(headers map[string]string, body string, raw []byte) (*ast.Term, bool, error) {
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
	if kind == bodyForm {
		vals, err := url.ParseQuery(body)
		if err != nil {
			return nil, false, err
		}
		return ast.NewTerm(valuesObject(vals)), false, nil
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

// messageToValue converts m to the ast value of its protojson form (default
// options: populated fields only, lowerCamel JSON names, enums by name,
// 64-bit integers as strings, bytes as standard base64).
func messageToValue(m protoreflect.Message, depth int) (ast.Value, error) {
	if depth > maxProtoDepth {
		return nil, errors.New("message nesting too deep")
	}
	if wk, ok, err := wellKnownToValue(m, depth); ok || err != nil {
		return wk, err
	}
	obj := ast.NewObject()
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		var t *ast.Term
		t, err = fieldToTerm(fd, v, depth)
		if err != nil {
			return false
		}
		obj.Insert(jsonNameTerm(fd), t)
		return true
	})
	if err != nil {
		return nil, err
	}
	return obj, nil
}

// jsonNameTerm returns fd's JSON name as a term. Extensions are rare in
// AttributeContext; protojson writes them as "[full.name]".
func jsonNameTerm(fd protoreflect.FieldDescriptor) *ast.Term {
	if fd.IsExtension() {
		return ast.StringTerm("[" + string(fd.FullName()) + "]")
	}
	return ast.StringTerm(fd.JSONName())
}

func fieldToTerm(fd protoreflect.FieldDescriptor, v protoreflect.Value, depth int) (*ast.Term, error) {
	switch {
	case fd.IsMap():
		obj := ast.NewObject()
		kd, vd := fd.MapKey(), fd.MapValue()
		var err error
		v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
			var t *ast.Term
			t, err = singularToTerm(vd, mv, depth)
			if err != nil {
				return false
			}
			var key string
			if kd.Kind() == protoreflect.StringKind {
				key = k.String()
			} else {
				key = k.Value().String()
			}
			obj.Insert(ast.StringTerm(key), t)
			return true
		})
		if err != nil {
			return nil, err
		}
		return ast.NewTerm(obj), nil
	case fd.IsList():
		l := v.List()
		arr := make([]*ast.Term, l.Len())
		for i := range arr {
			t, err := singularToTerm(fd, l.Get(i), depth)
			if err != nil {
				return nil, err
			}
			arr[i] = t
		}
		return ast.ArrayTerm(arr...), nil
	default:
		return singularToTerm(fd, v, depth)
	}
}

func singularToTerm(fd protoreflect.FieldDescriptor, v protoreflect.Value, depth int) (*ast.Term, error) {
	switch fd.Kind() {
	case protoreflect.StringKind:
		return ast.StringTerm(v.String()), nil
	case protoreflect.BoolKind:
		if v.Bool() {
			return trueTerm, nil
		}
		return falseTerm, nil
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return ast.IntNumberTerm(int(v.Int())), nil
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return ast.UIntNumberTerm(v.Uint()), nil
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return ast.StringTerm(strconv.FormatInt(v.Int(), 10)), nil
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return ast.StringTerm(strconv.FormatUint(v.Uint(), 10)), nil
	case protoreflect.FloatKind:
		return floatTerm(v.Float(), 32), nil
	case protoreflect.DoubleKind:
		return floatTerm(v.Float(), 64), nil
	case protoreflect.BytesKind:
		return ast.StringTerm(base64.StdEncoding.EncodeToString(v.Bytes())), nil
	case protoreflect.EnumKind:
		if fd.Enum().FullName() == "google.protobuf.NullValue" {
			return nullTerm, nil
		}
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			return ast.StringTerm(string(ev.Name())), nil
		}
		return ast.IntNumberTerm(int(v.Enum())), nil
	case protoreflect.MessageKind, protoreflect.GroupKind:
		val, err := messageToValue(v.Message(), depth+1)
		if err != nil {
			return nil, err
		}
		return ast.NewTerm(val), nil
	}
	return nil, fmt.Errorf("unsupported field kind %v", fd.Kind())
}

// floatTerm writes NaN and infinities as protojson does (strings).
func floatTerm(f float64, bits int) *ast.Term {
	switch {
	case math.IsNaN(f):
		return ast.StringTerm("NaN")
	case math.IsInf(f, 1):
		return ast.StringTerm("Infinity")
	case math.IsInf(f, -1):
		return ast.StringTerm("-Infinity")
	}
	return ast.NumberTerm(json.Number(strconv.FormatFloat(f, 'g', -1, bits)))
}

// wellKnownToValue handles the google.protobuf types whose protojson form is
// not a plain object. Rare ones (Any, FieldMask, …) take the reference path
// through protojson, which is slow but exact.
func wellKnownToValue(m protoreflect.Message, depth int) (ast.Value, bool, error) {
	d := m.Descriptor()
	if d.ParentFile().Package() != "google.protobuf" {
		return nil, false, nil
	}
	fields := d.Fields()
	switch d.FullName() {
	case "google.protobuf.Timestamp":
		s, err := formatTimestamp(m.Get(fields.ByNumber(1)).Int(), m.Get(fields.ByNumber(2)).Int())
		if err != nil {
			return nil, true, err
		}
		return ast.String(s), true, nil
	case "google.protobuf.Duration":
		s, err := formatDuration(m.Get(fields.ByNumber(1)).Int(), m.Get(fields.ByNumber(2)).Int())
		if err != nil {
			return nil, true, err
		}
		return ast.String(s), true, nil
	case "google.protobuf.Struct":
		obj := ast.NewObject()
		var err error
		m.Get(fields.ByNumber(1)).Map().Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
			var val ast.Value
			val, err = messageToValue(v.Message(), depth+1)
			if err != nil {
				return false
			}
			obj.Insert(ast.StringTerm(k.String()), ast.NewTerm(val))
			return true
		})
		return obj, true, err
	case "google.protobuf.ListValue":
		l := m.Get(fields.ByNumber(1)).List()
		arr := make([]*ast.Term, l.Len())
		for i := range arr {
			val, err := messageToValue(l.Get(i).Message(), depth+1)
			if err != nil {
				return nil, true, err
			}
			arr[i] = ast.NewTerm(val)
		}
		return ast.NewArray(arr...), true, nil
	case "google.protobuf.Value":
		od := m.WhichOneof(d.Oneofs().ByName("kind"))
		if od == nil {
			return nil, true, errors.New("google.protobuf.Value: none of the oneof fields is set")
		}
		if od.Kind() == protoreflect.DoubleKind {
			f := m.Get(od).Float()
			if math.IsNaN(f) || math.IsInf(f, 0) {
				return nil, true, fmt.Errorf("google.protobuf.Value: invalid number %v", f)
			}
		}
		t, err := singularToTerm(od, m.Get(od), depth)
		if err != nil {
			return nil, true, err
		}
		return t.Value, true, nil
	case "google.protobuf.BoolValue", "google.protobuf.Int32Value", "google.protobuf.UInt32Value",
		"google.protobuf.Int64Value", "google.protobuf.UInt64Value", "google.protobuf.FloatValue",
		"google.protobuf.DoubleValue", "google.protobuf.StringValue", "google.protobuf.BytesValue":
		fd := fields.ByNumber(1)
		t, err := singularToTerm(fd, m.Get(fd), depth)
		if err != nil {
			return nil, true, err
		}
		return t.Value, true, nil
	case "google.protobuf.Empty":
		return ast.NewObject(), true, nil
	}
	// Any, FieldMask and anything else: exact via the reference path.
	bs, err := protojson.Marshal(m.Interface())
	if err != nil {
		return nil, true, err
	}
	var x any
	if err := util.UnmarshalJSON(bs, &x); err != nil {
		return nil, true, err
	}
	v, err := ast.InterfaceToValue(x)
	return v, true, err
}

// Limits of google.protobuf.Timestamp (0001-01-01 to 9999-12-31), as protojson
// enforces them.
const (
	minTimestampSeconds = -62135596800
	maxTimestampSeconds = 253402300799
)

// checkTimestamp is the range check of formatTimestamp, shared with input
// validation.
func checkTimestamp(secs, nanos int64) error {
	if secs < minTimestampSeconds || secs > maxTimestampSeconds {
		return fmt.Errorf("google.protobuf.Timestamp: seconds out of range %v", secs)
	}
	if nanos < 0 || nanos > 999999999 {
		return fmt.Errorf("google.protobuf.Timestamp: nanos out of range %v", nanos)
	}
	return nil
}

func formatTimestamp(secs, nanos int64) (string, error) {
	if err := checkTimestamp(secs, nanos); err != nil {
		return "", err
	}
	x := time.Unix(secs, nanos).UTC().Format("2006-01-02T15:04:05.000000000")
	x = strings.TrimSuffix(x, "000")
	x = strings.TrimSuffix(x, "000")
	x = strings.TrimSuffix(x, ".000")
	return x + "Z", nil
}

const maxDurationSeconds = 315576000000

func formatDuration(secs, nanos int64) (string, error) {
	if secs < -maxDurationSeconds || secs > maxDurationSeconds {
		return "", fmt.Errorf("google.protobuf.Duration: seconds out of range %v", secs)
	}
	if nanos <= -1e9 || nanos >= 1e9 || (secs > 0 && nanos < 0) || (secs < 0 && nanos > 0) {
		return "", fmt.Errorf("google.protobuf.Duration: nanos out of range %v", nanos)
	}
	sign := ""
	if secs < 0 || nanos < 0 {
		sign, secs, nanos = "-", -secs, -nanos
	}
	x := fmt.Sprintf("%s%d.%09d", sign, secs, nanos)
	x = strings.TrimSuffix(x, "000")
	x = strings.TrimSuffix(x, "000")
	x = strings.TrimSuffix(x, ".000")
	return x + "s", nil
}
