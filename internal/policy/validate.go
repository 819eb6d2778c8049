package policy

import (
	"encoding/json"
	"net/url"
	"os"
	"strings"
	"unsafe"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Input validation: whether buildInput would fail, without building.
//
// With the decision cache on and a policy that reads only input.agent and
// input.operation, the input document is not needed to answer from the
// cache, but a request whose input cannot be built must still be denied
// with request_parse_error, as without the cache. validateInput answers that at a
// fraction of the cost of building.
//
// The design keeps it exact: inputBuildable is a sound shortcut ("certainly
// builds") made of the checks buildInput itself runs (classifyBody,
// url.PathUnescape, url.ParseQuery, messageToValue,
// ast.NumberChecked) plus allocation-free predicates that imply success of
// the parsers (validEscapes, simpleQuery, jsonBuildable). Whenever it cannot vouch for a
// request, validateInput runs buildInput itself, so the verdict and the
// error message are buildInput's. A shortcut that says "unsure" too often
// costs time, never correctness; FuzzValidateInput checks the converse.

// validateInput returns nil if and only if buildInput(req, …) succeeds, and
// otherwise buildInput's error (wrapping ErrInput).
func validateInput(req *authv3.CheckRequest) error {
	if inputBuildable(req) {
		return nil
	}
	_, err := buildInput(req, nil, "")
	return err
}

// inputBuildable reports that buildInput certainly succeeds for req. False
// means "maybe not".
func inputBuildable(req *authv3.CheckRequest) bool {
	a := req.GetAttributes()
	if a != nil && !attributesBuildable(a) {
		return false
	}
	h := a.GetRequest().GetHttp()
	return pathBuildable(h.GetPath()) && bodyBuildable(h.GetHeaders(), h.GetBody(), h.GetRawBody())
}

// attributesBuildable mirrors attributesValue: only the reflectively
// converted messages can fail there.
func attributesBuildable(a *authv3.AttributeContext) bool {
	for _, p := range [...]*authv3.AttributeContext_Peer{a.Source, a.Destination} {
		if p == nil || p.Address == nil || addressInfallible {
			continue
		}
		if sa, ok := p.Address.Address.(*corev3.Address_SocketAddress); ok && sa.SocketAddress != nil {
			continue // converted by hand: cannot fail
		}
		if _, err := messageToValue(p.Address.ProtoReflect(), 2); err != nil {
			return false
		}
	}
	if r := a.Request; r != nil {
		if h := r.Http; h != nil && h.HeaderMap != nil && !headerMapInfallible {
			if _, err := messageToValue(h.HeaderMap.ProtoReflect(), 3); err != nil {
				return false
			}
		}
	}
	if a.MetadataContext != nil && !metadataInfallible {
		if _, err := messageToValue(a.MetadataContext.ProtoReflect(), 1); err != nil {
			return false
		}
	}
	if a.RouteMetadataContext != nil && !metadataInfallible {
		if _, err := messageToValue(a.RouteMetadataContext.ProtoReflect(), 1); err != nil {
			return false
		}
	}
	if a.TlsSession != nil && !tlsSessionInfallible {
		if _, err := messageToValue(a.TlsSession.ProtoReflect(), 1); err != nil {
			return false
		}
	}
	return true
}

// Whether messageToValue can fail on these messages at the depth
// attributesValue converts them at, from their types alone. Today Address,
// HeaderMap and TLSSession cannot (strings, integers, enums, bytes), and
// Metadata can (a Struct number may be NaN): a go-control-plane upgrade
// that changes that flips the flag instead of making validation unsound.
var (
	addressInfallible    = infallible((&corev3.Address{}).ProtoReflect().Descriptor(), 2)
	headerMapInfallible  = infallible((&corev3.HeaderMap{}).ProtoReflect().Descriptor(), 3)
	tlsSessionInfallible = infallible((&authv3.AttributeContext_TLSSession{}).ProtoReflect().Descriptor(), 1)
	metadataInfallible   = infallible((&corev3.Metadata{}).ProtoReflect().Descriptor(), 1)
)

// infallible reports whether messageToValue(m, depth) succeeds for every
// message m of type md: no float or double field (NaN is refused) and no
// google.protobuf.Struct is reachable, and nesting stays within
// MaxProtoDepth (a recursive type never qualifies).
func infallible(md protoreflect.MessageDescriptor, depth int) bool {
	if depth > MaxProtoDepth || md.FullName() == "google.protobuf.Struct" {
		return false
	}
	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if fd.IsMap() {
			fd = fd.MapValue()
		}
		switch fd.Kind() {
		case protoreflect.FloatKind, protoreflect.DoubleKind:
			return false
		case protoreflect.MessageKind, protoreflect.GroupKind:
			if !infallible(fd.Message(), depth+1) {
				return false
			}
		}
	}
	return true
}

// pathBuildable: parsePathAndQuery fails exactly when url.PathUnescape
// fails on the path part or url.ParseQuery on the query part.
func pathBuildable(raw string) bool {
	p, q := cutTarget(raw)
	if !validEscapes(p) {
		return false
	}
	if simpleQuery(q) {
		return true
	}
	_, err := url.ParseQuery(q)
	return err == nil
}

// validEscapes reports that every '%' in s starts a valid escape: then
// url.PathUnescape and url.QueryUnescape succeed on s.
func validEscapes(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '%' {
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				return false
			}
			i += 2
		}
	}
	return true
}

// simpleQuery reports, without allocating, that url.ParseQuery(q)
// succeeds: no ';' (refused as a separator), valid escapes, and fewer
// parameters than its limit. The limit is 10000 unless GODEBUG sets
// urlmaxqueryparams; then ParseQuery itself decides.
func simpleQuery(q string) bool {
	return q == "" || !strings.Contains(q, ";") && validEscapes(q) &&
		strings.Count(q, "&") < 1000 && !strings.Contains(os.Getenv("GODEBUG"), "urlmaxqueryparams")
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// bodyBuildable mirrors ParseBody.
func bodyBuildable(headers map[string]string, body string, raw []byte) bool {
	kind, err := classifyBody(headers, bodyLen(body, raw))
	if err != nil {
		return false
	}
	switch kind {
	case bodyForm:
		// url.ParseQuery itself: besides syntax, it enforces a limit on the
		// number of parameters that GODEBUG can change at run time.
		s := body
		if s == "" {
			s = unsafe.String(unsafe.SliceData(raw), len(raw)) // read only; nothing is kept
		}
		_, err := url.ParseQuery(s)
		return err == nil
	case bodyMultipart:
		// Rare: the parser itself.
		s := body
		if s == "" {
			s = string(raw)
		}
		_, _, err := parseMultipart(headers["content-type"], s)
		return err == nil
	case bodyJSON:
		b := raw
		if body != "" {
			b = unsafe.Slice(unsafe.StringData(body), len(body)) // read only; nothing is kept
		}
		return jsonBuildable(b)
	}
	return true
}

// jsonBuildable reports that util.UnmarshalJSON followed by
// ast.InterfaceToValue certainly succeeds on b.
//
// util.UnmarshalJSON decodes the first value with encoding/json (UseNumber)
// and refuses anything but white space after it; with the same scanner,
// json.Valid accepts exactly one value surrounded by white space, with the
// same nesting limit, and decoding such a value into `any` cannot fail
// (invalid UTF-8 and lone surrogates become U+FFFD, duplicate names are
// allowed). ast.InterfaceToValue then fails only on a json.Number that
// ast.NumberChecked refuses (an exponent out of range); every number
// literal is checked here, which is stricter than needed when a duplicate
// name drops one. (A ".json" loader extension, which util.UnmarshalJSON
// consults when decoding fails, does not matter: decoding does not fail.)
func jsonBuildable(b []byte) bool {
	if !json.Valid(b) {
		return false
	}
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			for i++; i < len(b) && b[i] != '"'; i++ {
				if b[i] == '\\' {
					i++
				}
			}
		case c == '-' || '0' <= c && c <= '9':
			j, exp := i+1, false
			for ; j < len(b) && isNumberByte(b[j]); j++ {
				exp = exp || b[j] == 'e' || b[j] == 'E'
			}
			if exp {
				// read only: NumberChecked keeps nothing of it
				if _, err := ast.NumberChecked(unsafe.String(&b[i], j-i)); err != nil {
					return false
				}
			}
			i = j - 1
		}
	}
	return true
}

func isNumberByte(c byte) bool {
	return '0' <= c && c <= '9' || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-'
}
