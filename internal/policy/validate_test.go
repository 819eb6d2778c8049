package policy

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentauthz/agentauthz/internal/testenv"
)

// validateCase is one fuzz input of FuzzValidateInput; the fields are the
// fuzz arguments in order.
type validateCase struct {
	method, path, contentType, contentLength string
	hasContentLength                         bool
	body                                     string
	raw                                      []byte
	secs, nanos                              int64
	shape                                    uint64
	num                                      float64
}

func (c validateCase) args() []any {
	return []any{c.method, c.path, c.contentType, c.contentLength, c.hasContentLength, c.body, c.raw, c.secs, c.nanos, c.shape, c.num}
}

// Shapes of the rarer parts of a request (validateCase.shape): the low
// four bits pick one, shapeTime sets attributes.request.time to secs/nanos.
const (
	shapeNone = iota
	shapeStructNumber
	shapeStructEmptyValue
	shapeAnyTimestamp
	shapeAnyUnknownType
	shapeRouteStructStrings
	shapeRouteAnyString
	shapeTLSSession
	shapeHeaderMap
	shapePipeAddress
	shapeInternalAddress
	shapeAnyDuration
	shapeNestedStruct
	shapeNilSocketAddress
	shapeAnyStructNumber
	shapeNamedPort

	shapeTime = 0x10
)

// request builds the CheckRequest of c. It panics only on a bug here.
func (c validateCase) request() *authv3.CheckRequest {
	req := sampleRequest(c.method, c.path, c.contentType, c.body)
	a := req.Attributes
	h := a.Request.Http
	if c.hasContentLength {
		h.Headers["content-length"] = c.contentLength
	}
	h.RawBody = c.raw
	if c.shape&shapeTime != 0 {
		a.Request.Time = &timestamppb.Timestamp{Seconds: c.secs, Nanos: int32(c.nanos)}
	} else {
		a.Request.Time = nil
	}
	mustAny := func(m proto.Message) *anypb.Any {
		x, err := anypb.New(m)
		if err != nil {
			panic(err)
		}
		return x
	}
	filter := func(s *structpb.Struct) *corev3.Metadata {
		return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"f": s}}
	}
	typed := func(x *anypb.Any) *corev3.Metadata {
		return &corev3.Metadata{TypedFilterMetadata: map[string]*anypb.Any{"t": x}}
	}
	num := &structpb.Value{Kind: &structpb.Value_NumberValue{NumberValue: c.num}}
	switch c.shape & 0xf {
	case shapeStructNumber:
		a.MetadataContext = filter(&structpb.Struct{Fields: map[string]*structpb.Value{"n": num, "s": structpb.NewStringValue(c.body)}})
	case shapeStructEmptyValue:
		a.MetadataContext = filter(&structpb.Struct{Fields: map[string]*structpb.Value{"v": {}}})
	case shapeAnyTimestamp:
		a.MetadataContext = typed(mustAny(&timestamppb.Timestamp{Seconds: c.secs, Nanos: int32(c.nanos)}))
	case shapeAnyUnknownType:
		a.MetadataContext = typed(&anypb.Any{TypeUrl: c.contentType, Value: c.raw})
	case shapeRouteStructStrings:
		a.RouteMetadataContext = filter(&structpb.Struct{Fields: map[string]*structpb.Value{c.path: structpb.NewStringValue(c.body)}})
	case shapeRouteAnyString:
		// By hand: proto.Marshal refuses invalid UTF-8, Envoy need not.
		v := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), c.body)
		a.RouteMetadataContext = typed(&anypb.Any{TypeUrl: "type.googleapis.com/google.protobuf.StringValue", Value: v})
	case shapeTLSSession:
		a.TlsSession = &authv3.AttributeContext_TLSSession{Sni: c.body}
	case shapeHeaderMap:
		h.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: c.contentType, Value: c.body, RawValue: c.raw}}}
	case shapePipeAddress:
		a.Destination = &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: c.path, Mode: uint32(c.nanos)}}}}
	case shapeInternalAddress:
		a.Destination = &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_EnvoyInternalAddress{
			EnvoyInternalAddress: &corev3.EnvoyInternalAddress{
				AddressNameSpecifier: &corev3.EnvoyInternalAddress_ServerListenerName{ServerListenerName: c.body}, EndpointId: c.path,
			},
		}}}
	case shapeAnyDuration:
		a.MetadataContext = typed(mustAny(&durationpb.Duration{Seconds: c.secs, Nanos: int32(c.nanos)}))
	case shapeNestedStruct:
		v := num
		for range c.nanos & 0x7f {
			v = structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{"x": v}})
		}
		a.MetadataContext = filter(&structpb.Struct{Fields: map[string]*structpb.Value{"deep": v}})
	case shapeNilSocketAddress:
		a.Source.Address = &corev3.Address{Address: &corev3.Address_SocketAddress{}}
	case shapeAnyStructNumber:
		a.MetadataContext = typed(mustAny(&structpb.Struct{Fields: map[string]*structpb.Value{"n": num}}))
	case shapeNamedPort:
		a.Source.Address = &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: c.path, PortSpecifier: &corev3.SocketAddress_NamedPort{NamedPort: c.body},
		}}}
	}
	return req
}

// checkValidateAgrees fails t unless validateInput(req) and buildInput agree:
// both succeed, or both fail with the same ErrInput error.
func checkValidateAgrees(t *testing.T, req *authv3.CheckRequest) error {
	t.Helper()
	verr := validateInput(req)
	_, berr := buildInput(req, nil, "")
	if (verr == nil) != (berr == nil) {
		t.Fatalf("validateInput: %v; buildInput: %v (shortcut vouched: %v)", verr, berr, inputBuildable(req))
	}
	if verr != nil && (!errors.Is(verr, ErrInput) || verr.Error() != berr.Error()) {
		t.Fatalf("validateInput error %q, buildInput error %q", verr, berr)
	}
	return verr
}

var (
	deepJSONOK  = strings.Repeat("[", 10000) + strings.Repeat("]", 10000)
	deepJSONBad = strings.Repeat("[", 10001) + strings.Repeat("]", 10001)
	// a JSON string of exactly MaxBodyBytes bytes
	maxBody = `"` + strings.Repeat("x", MaxBodyBytes-2) + `"`
)

func jsonCase(body string) validateCase {
	return validateCase{method: "POST", path: "/v1/payments", contentType: "application/json", body: body}
}

func formCase(body string) validateCase {
	return validateCase{method: "POST", path: "/v1/merchants", contentType: "application/x-www-form-urlencoded", body: body}
}

func pathCase(path string) validateCase {
	return validateCase{method: "GET", path: path}
}

func withLength(c validateCase, cl string) validateCase {
	c.contentLength, c.hasContentLength = cl, true
	return c
}

func withShape(c validateCase, shape uint64) validateCase {
	c.shape = shape
	return c
}

// validateCases are the known edge cases, and the committed seeds of
// FuzzValidateInput. ok is what buildInput does with them.
func validateCases() []struct {
	name string
	c    validateCase
	ok   bool
} {
	timeCase := func(secs, nanos int64) validateCase {
		c := pathCase("/")
		c.shape, c.secs, c.nanos = shapeTime, secs, nanos
		return c
	}
	rawJSON := jsonCase("")
	rawJSON.raw = []byte(`{"raw": [1, 2e3]}`)
	rawBadJSON := jsonCase("")
	rawBadJSON.raw = []byte(`{"raw": `)
	rawForm := formCase("")
	rawForm.raw = []byte("a=%zz")
	num := func(f float64, shape uint64) validateCase {
		c := withShape(pathCase("/"), shape)
		c.num = f
		return c
	}
	nested := func(depth int64) validateCase {
		c := withShape(pathCase("/"), shapeNestedStruct)
		c.nanos, c.num = depth, 1
		return c
	}
	return []struct {
		name string
		c    validateCase
		ok   bool
	}{
		{"get", pathCase("/v1/payments/p-1?expand=true"), true},
		{"empty path", pathCase(""), true},
		{"root", pathCase("/"), true},
		{"asterisk", pathCase("*"), true},
		{"path with CR LF", pathCase("/v1/payments\r\nx-injected: 1"), true}, // opa-envoy-plugin decodes it; no route matches
		{"path with LF", pathCase("/v1/\n"), true},
		{"path with DEL", pathCase("/v1/\x7f"), true},
		{"path with NUL", pathCase("/v1/\x00"), true},
		{"path with %zz", pathCase("/v1/%zz"), false},
		{"path with truncated escape", pathCase("/v1/%2"), false},
		{"path with encoded slash", pathCase("/v1/a%2Fb/%2e%2e"), true},
		{"query with %zz", pathCase("/v1/payments?q=%zz"), false},
		{"query key with %zz", pathCase("/v1/payments?%zz=1&b=2"), false},
		{"query with semicolon", pathCase("/v1/payments?a=1;b=2"), false},
		{"query with escapes", pathCase("/v1/payments?a=%2F&b=c+d&&=x"), true},
		{"query with a fragment", pathCase("/v1/payments?a=1#frag"), true},
		{"second question mark", pathCase("/v1/payments?a=1?b=2"), true},
		{"fragment with %zz", pathCase("/v1/payments#%zz"), false},
		{"fragment with escape", pathCase("/v1/payments#a%20b"), true},
		{"authority", pathCase("//host:80/v1"), true},
		{"bad authority port", pathCase("//host:x/v1"), true}, // not a URL: a path
		{"bad IPv6 authority", pathCase("//[::1/v1"), true},
		{"three slashes", pathCase("///v1"), true},
		{"absolute URL", pathCase("https://api.example/v1?x=1"), true},
		{"colon in first segment", pathCase("a:b/c"), true},
		{"relative colon segment", pathCase("a/b:c"), true},
		{"missing scheme", pathCase(":x"), true},
		{"space and UTF-8 in path", pathCase("/v1/a b/é"), true},
		{"invalid UTF-8 in path", pathCase("/v1/\xff"), true},

		{"JSON body", jsonCase(`{"amount": 1, "currency": "EUR"}`), true},
		{"JSON body exactly MaxBodyBytes", jsonCase(maxBody), true},
		{"JSON body one byte more", jsonCase(maxBody + " "), false},
		{"JSON trailing garbage", jsonCase(`{"a":1} x`), false},
		{"JSON trailing garbage without space", jsonCase(`{"a":1}x`), false},
		{"JSON two values", jsonCase(`{}{}`), false},
		{"JSON two numbers", jsonCase(`1 2`), false},
		{"JSON trailing white space", jsonCase("{}\r\n\t "), true},
		{"JSON only white space", jsonCase("  "), false},
		{"JSON truncated", jsonCase(`{"amount":`), false},
		{"JSON invalid UTF-8 in a string", jsonCase("{\"a\":\"\xff\xfe\"}"), true},
		{"JSON invalid UTF-8 outside strings", jsonCase("{\"a\":1}\xff"), false},
		{"JSON lone surrogate", jsonCase(`"\ud800"`), true},
		{"JSON byte order mark", jsonCase("\ufeff{}"), false},
		{"JSON control character in a string", jsonCase("\"a\x01\""), false},
		{"JSON duplicate keys", jsonCase(`{"a":1,"a":2}`), true},
		{"JSON nested 10000 deep", jsonCase(deepJSONOK), true},
		{"JSON nested 10001 deep", jsonCase(deepJSONBad), false},
		{"JSON small exponent", jsonCase(`[1e5, -0.5E-7, 1E+300, 0e0]`), true},
		{"JSON huge exponent", jsonCase(`{"n": 1e999999}`), false},
		{"JSON huge negative exponent", jsonCase(`[1E-999999]`), false},
		{"JSON long mantissa and exponent", jsonCase(`1` + strings.Repeat("0", 30000) + `e1`), true},
		{"JSON huge exponent replaced by a duplicate", jsonCase(`{"n": 1e999999, "n": 1}`), true},
		{"JSON huge exponent in a string", jsonCase(`{"n": "1e999999"}`), true},
		{"JSON NaN", jsonCase(`NaN`), false},
		{"JSON leading zero", jsonCase(`01`), false},
		{"JSON big integer", jsonCase(`123456789012345678901234567890`), true},
		{"JSON with form content type too", validateCase{method: "POST", path: "/", contentType: "application/x-www-form-urlencoded; application/json", body: "a=1"}, false},
		{"JSON raw body", rawJSON, true},
		{"JSON raw body malformed", rawBadJSON, false},
		{"JSON content-type with charset", validateCase{method: "POST", path: "/", contentType: "application/json; charset=utf-8", body: "{"}, false},
		{"text body not parsed", validateCase{method: "POST", path: "/", contentType: "text/plain", body: "{"}, true},
		{"no content-type", validateCase{method: "POST", path: "/", body: "{"}, true},

		{"content-length not a number", withLength(jsonCase(`{}`), "many"), false},
		{"content-length empty", withLength(jsonCase(`{}`), ""), false},
		{"content-length -1", withLength(jsonCase(`{}`), "-1"), true},
		{"content-length -1 malformed body", withLength(jsonCase(`{`), "-1"), false},
		{"content-length -2", withLength(jsonCase(`{`), "-2"), false},
		{"content-length equal", withLength(jsonCase(`{}`), "2"), true},
		{"content-length smaller", withLength(jsonCase(`{}`), "1"), true},
		{"content-length larger: truncated, not parsed", withLength(jsonCase(`{"amount":`), "100"), true},
		{"content-length with plus sign", withLength(jsonCase(`{}`), "+2"), true},
		{"content-length overflow", withLength(jsonCase(`{}`), "99999999999999999999"), false},
		{"content-length without a body", withLength(jsonCase(""), "x"), true},
		{"content-length on a text body", withLength(validateCase{method: "POST", path: "/", contentType: "text/plain", body: "x"}, "x"), true},

		{"form body", formCase("name=Acme&tag=a&tag=b&empty=&&=x"), true},
		{"multipart body", validateCase{method: "POST", path: "/", contentType: "multipart/form-data; boundary=XyZ", body: "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--XyZ\r\nContent-Disposition: form-data; name=\"j\"\r\nContent-Type: application/json\r\n\r\n{\"k\": [1, true]}\r\n--XyZ--\r\n"}, true},
		{"multipart without boundary", validateCase{method: "POST", path: "/", contentType: "multipart/form-data", body: "x"}, true},
		{"multipart bad media type", validateCase{method: "POST", path: "/", contentType: "multipart/form-data; boundary", body: "x"}, false},
		{"multipart malformed", validateCase{method: "POST", path: "/", contentType: "multipart/form-data; boundary=XyZ", body: "--XyZ\r\nno end"}, false},
		{"multipart bad JSON part", validateCase{method: "POST", path: "/", contentType: "multipart/form-data; boundary=XyZ", body: "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--XyZ\r\nContent-Disposition: form-data; name=\"j\"\r\nContent-Type: application/json\r\n\r\n{\"k\": [1,}\r\n--XyZ--\r\n"}, false},
		{"form bad escape", formCase("a=%zz"), false},
		{"form bad escape in a key", formCase("%g0=1"), false},
		{"form truncated escape", formCase("a=1&b=%2"), false},
		{"form semicolon", formCase("a=1;b=2"), false},
		{"form plus and escapes", formCase("a=1+2%20&b=%E2%82%AC"), true},
		{"form raw body bad escape", rawForm, false},
		{"form body truncated by content-length", withLength(formCase("a=%zz"), "10"), true},
		{"form too many parameters", formCase(strings.Repeat("a=1&", 10000) + "a=1"), false},
		{"form 10000 parameters", formCase(strings.Repeat("a=1&", 9999) + "a=1"), true},

		{"timestamp in range", timeCase(1700000000, 5), true},
		{"timestamp year 1", timeCase(-62135596800, 0), true},
		{"timestamp before year 1", timeCase(-62135596801, 0), true}, // numbers, not RFC 3339
		{"timestamp negative nanos", timeCase(0, -1), true},
		{"timestamp nanos too large", timeCase(0, 1e9), true},

		{"metadata number", num(1.5, shapeStructNumber), true},
		{"metadata NaN", num(math.NaN(), shapeStructNumber), false},
		{"metadata infinity", num(math.Inf(-1), shapeStructNumber), false},
		{"metadata empty Value", withShape(pathCase("/"), shapeStructEmptyValue), true}, // null, as AsMap
		{"metadata Any timestamp out of range", func() validateCase {
			c := withShape(pathCase("/"), shapeAnyTimestamp)
			c.secs = 253402300800
			return c
		}(), true}, // an Any is its type URL and bytes
		{"metadata Any timestamp", withShape(pathCase("/"), shapeAnyTimestamp), true},
		{"metadata Any unknown type", func() validateCase {
			c := withShape(pathCase("/"), shapeAnyUnknownType)
			c.contentType = "type.googleapis.com/no.such.Type"
			return c
		}(), true},
		{"metadata Any duration out of range", func() validateCase {
			c := withShape(pathCase("/"), shapeAnyDuration)
			c.secs = 315576000001
			return c
		}(), true},
		{"metadata Any Struct NaN", num(math.NaN(), shapeAnyStructNumber), true},
		{"metadata nested 20 deep", nested(20), true},
		{"metadata nested 61 deep", nested(61), true},
		{"metadata nested 62 deep", nested(62), false},
		{"route metadata invalid UTF-8 in a Struct", func() validateCase {
			c := withShape(pathCase("/"), shapeRouteStructStrings)
			c.body = "\xff"
			return c
		}(), true},
		{"route metadata Any invalid UTF-8", func() validateCase {
			c := withShape(pathCase("/"), shapeRouteAnyString)
			c.body = "\xff"
			return c
		}(), true},
		{"TLS session", withShape(pathCase("/"), shapeTLSSession), true},
		{"header map", func() validateCase {
			c := withShape(pathCase("/"), shapeHeaderMap)
			c.contentType, c.body, c.raw = "x-a", "\xff", []byte{0, 0xff}
			return c
		}(), true},
		{"pipe address", withShape(pathCase("/p"), shapePipeAddress), true},
		{"internal address", withShape(pathCase("/p"), shapeInternalAddress), true},
		{"socket address without a value", withShape(pathCase("/"), shapeNilSocketAddress), true},
		{"named port", withShape(pathCase("/"), shapeNamedPort), true},
	}
}

// TestValidateInput checks validateInput against buildInput on the known
// edge cases, and that each case does what it is meant to exercise.
func TestValidateInput(t *testing.T) {
	for _, tc := range validateCases() {
		t.Run(tc.name, func(t *testing.T) {
			req := tc.c.request()
			err := checkValidateAgrees(t, req)
			if (err == nil) != tc.ok {
				t.Fatalf("validateInput: %v; want ok=%v", err, tc.ok)
			}
		})
	}
	// The requests the other tests use.
	for name, req := range testRequests() {
		t.Run(name, func(t *testing.T) {
			if err := checkValidateAgrees(t, req); err != nil {
				t.Fatal(err)
			}
			if !inputBuildable(req) {
				t.Error("the shortcut does not vouch for it")
			}
		})
	}
}

// The shortcut vouches for the usual requests without running a parser
// that allocates: no body, a small JSON body, a GET with a query.
func TestValidateInputAllocations(t *testing.T) {
	testenv.SkipAllocsUnderRace(t)
	for name, req := range map[string]*authv3.CheckRequest{
		"no body":         sampleRequest("POST", "/v1/payments", "", ""),
		"get with query":  sampleRequest("GET", "/v1/payments/p-1?expand=true&x=%2F", "", ""),
		"small JSON body": sampleRequest("POST", "/v1/payments", "application/json", `{"amount": 12.5e2, "currency": "EUR", "tags": ["a", true, null]}`),
		"truncated body": func() *authv3.CheckRequest {
			r := jsonCase(`{"a":`).request()
			r.Attributes.Request.Http.Headers["content-length"] = "9"
			return r
		}(),
		"header map":  withShape(pathCase("/"), shapeHeaderMap).request(),
		"TLS session": withShape(pathCase("/"), shapeTLSSession).request(),
	} {
		if !inputBuildable(req) {
			t.Errorf("%s: the shortcut does not vouch for it", name)
		}
		if n := testing.AllocsPerRun(100, func() { _ = validateInput(req) }); n > 0 {
			t.Errorf("%s: %v allocations per validation, want 0", name, n)
		}
	}
}

// The flags reflect the go-control-plane types today; a change is not a
// bug (the flags follow the types) but costs validation speed.
func TestInfallibleMessages(t *testing.T) {
	if !addressInfallible || !headerMapInfallible || !tlsSessionInfallible {
		t.Errorf("Address %v, HeaderMap %v, TLSSession %v: want all infallible", addressInfallible, headerMapInfallible, tlsSessionInfallible)
	}
	if metadataInfallible {
		t.Error("Metadata (Struct, Any) reported infallible")
	}
	if infallible((&structpb.Value{}).ProtoReflect().Descriptor(), 1) {
		t.Error("google.protobuf.Value reported infallible")
	}
}

// FuzzValidateInput is the differential test of input validation: for any
// request built from the fuzzed parts, validateInput succeeds exactly when
// buildInput does, and fails with the same error.
func FuzzValidateInput(f *testing.F) {
	f.Fuzz(func(t *testing.T, method, path, contentType, contentLength string, hasContentLength bool,
		body string, raw []byte, secs, nanos int64, shape uint64, num float64) {
		c := validateCase{method, path, contentType, contentLength, hasContentLength, body, raw, secs, nanos, shape, num}
		checkValidateAgrees(t, c.request())
	})
}

// TestWriteValidateFuzzSeeds rewrites testdata/fuzz/FuzzValidateInput from
// validateCases when run with -update (inputs the fuzzer found are kept).
func TestWriteValidateFuzzSeeds(t *testing.T) {
	if !*update {
		t.Skip("run with -update to rewrite the seed corpus")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzValidateInput")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range validateCases() {
		if len(tc.c.body) > 64<<10 {
			continue // the large bodies stay in the table test
		}
		var b strings.Builder
		b.WriteString("go test fuzz v1\n")
		for _, v := range tc.c.args() {
			switch v := v.(type) {
			case string:
				fmt.Fprintf(&b, "string(%q)\n", v)
			case []byte:
				fmt.Fprintf(&b, "[]byte(%q)\n", v)
			default:
				fmt.Fprintf(&b, "%T(%v)\n", v, v)
			}
		}
		name := "seed-" + strings.Map(func(r rune) rune {
			if 'a' <= r && r <= 'z' || '0' <= r && r <= '9' {
				return r
			}
			if 'A' <= r && r <= 'Z' {
				return r + 'a' - 'A'
			}
			return '-'
		}, tc.name)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
