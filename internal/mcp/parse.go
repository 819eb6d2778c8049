// Package mcp reads Model Context Protocol calls (JSON-RPC 2.0 over
// streamable HTTP) as agentauthz authorizes them: which methods, tools and
// resources one POST asks for, and nothing of what it passes to them. The
// parser fails closed: a body it cannot read exactly as an MCP server
// would is refused, not guessed at.
package mcp

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Kind is what one JSON-RPC message is.
type Kind uint8

// Message kinds.
const (
	Request      Kind = iota + 1 // has a method and an id: expects a response
	Notification                 // has a method and no id
	Response                     // has an id and a result or an error (the client answering a server request)
)

func (k Kind) String() string {
	switch k {
	case Request:
		return "request"
	case Notification:
		return "notification"
	case Response:
		return "response"
	}
	return "invalid"
}

// Message is what authorization needs of one JSON-RPC message: never the
// arguments, only their digest.
type Message struct {
	Kind   Kind
	Method string // "" for a response
	// ID is the id as JSON text (`7`, `"a-1"`), exactly as sent, so that an
	// error can answer with the same id; "" for a notification.
	ID string
	// Tool is params.name of tools/call.
	Tool string
	// URI is params.uri of resources/read, resources/subscribe and
	// resources/unsubscribe.
	URI string
	// ArgumentsSHA256 is the lowercase hex SHA-256 of tools/call's
	// params.arguments value, byte for byte as sent; "" when there are none.
	ArgumentsSHA256 string
}

// Call is one HTTP POST to an MCP endpoint: one message, or a batch.
type Call struct {
	Messages []Message
	Batch    bool
	// From the Mcp-Session-Id and MCP-Protocol-Version headers; "" when absent.
	SessionID       string
	ProtocolVersion string
}

// Bounds.
const (
	// DefaultMaxBodyBytes is the body limit when the policy data sets none.
	DefaultMaxBodyBytes = 64 << 10
	// MaxBatch bounds the messages of one batch.
	MaxBatch = 32
	// maxID bounds a request id's JSON text.
	maxID = 128
	// maxName bounds a method, tool name or resource URI.
	maxName = 2048
	// maxSessionID bounds Mcp-Session-Id.
	maxSessionID = 256
)

// Header names as Envoy sends them (lower case).
const (
	HeaderSessionID       = "mcp-session-id"
	HeaderProtocolVersion = "mcp-protocol-version"
)

// batchLastRevision is the last protocol revision with JSON-RPC batches.
const batchLastRevision = "2025-03-26"

// ErrInvalid wraps every reason a body or header is refused.
var ErrInvalid = errors.New("not a valid MCP JSON-RPC message")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Methods whose params the parser reads.
const (
	MethodInitialize  = "initialize"
	MethodToolsCall   = "tools/call"
	MethodToolsList   = "tools/list"
	MethodRead        = "resources/read"
	MethodSubscribe   = "resources/subscribe"
	MethodUnsubscribe = "resources/unsubscribe"
)

// HasURI reports whether method names a resource by params.uri.
func HasURI(method string) bool {
	return method == MethodRead || method == MethodSubscribe || method == MethodUnsubscribe
}

// Parse reads one POST body and its headers. It refuses (ErrInvalid) a
// body longer than max bytes, one that is not UTF-8 JSON, that is not a
// JSON-RPC 2.0 message or a non-empty batch of them, that names a member
// twice or in another case (encoding/json matches "Method" to "method":
// the server must not read a different call than the one authorized), and
// invalid session or protocol version headers.
func Parse(body []byte, headers map[string]string, max int) (*Call, error) {
	c := &Call{}
	if err := readHeaders(c, headers); err != nil {
		return nil, err
	}
	if len(body) == 0 {
		return nil, invalid("empty body")
	}
	if len(body) > max {
		return nil, invalid("body of %d bytes exceeds %d", len(body), max)
	}
	if !utf8.Valid(body) {
		return nil, invalid("body is not UTF-8")
	}
	if !validJSON(body) {
		return nil, invalid("body is not JSON (or nested deeper than %d)", maxDepth)
	}
	s := scanner{b: body}
	s.ws()
	switch s.b[s.i] {
	case '{':
		m, err := s.message()
		if err != nil {
			return nil, err
		}
		c.Messages = []Message{m}
	case '[':
		if c.ProtocolVersion > batchLastRevision {
			return nil, invalid("a batch in protocol revision %s (batches ended with %s)", c.ProtocolVersion, batchLastRevision)
		}
		c.Batch = true
		s.i++
		for first := true; ; first = false {
			s.ws()
			if s.b[s.i] == ']' {
				break
			}
			if !first {
				s.i++ // ','
				s.ws()
			}
			if s.b[s.i] != '{' {
				return nil, invalid("batch element %d is not an object", len(c.Messages))
			}
			if len(c.Messages) == MaxBatch {
				return nil, invalid("more than %d messages in a batch", MaxBatch)
			}
			m, err := s.message()
			if err != nil {
				return nil, fmt.Errorf("batch element %d: %w", len(c.Messages), err)
			}
			if m.Method == MethodInitialize {
				return nil, invalid("initialize in a batch")
			}
			c.Messages = append(c.Messages, m)
		}
		if len(c.Messages) == 0 {
			return nil, invalid("empty batch")
		}
	default:
		return nil, invalid("body is neither an object nor an array")
	}
	return c, nil
}

func readHeaders(c *Call, h map[string]string) error {
	if v, ok := h[HeaderSessionID]; ok {
		// Visible ASCII only (MCP, "Session Management").
		if v == "" || len(v) > maxSessionID {
			return invalid("%s of %d bytes", HeaderSessionID, len(v))
		}
		for i := 0; i < len(v); i++ {
			if v[i] < 0x21 || v[i] > 0x7e {
				return invalid("%s has a byte outside visible ASCII", HeaderSessionID)
			}
		}
		c.SessionID = v
	}
	if v, ok := h[HeaderProtocolVersion]; ok {
		if !isDate(v) {
			return invalid("%s %q is not a revision date YYYY-MM-DD", HeaderProtocolVersion, clip(v))
		}
		c.ProtocolVersion = v
	}
	return nil
}

func isDate(v string) bool {
	if len(v) != 10 || v[4] != '-' || v[7] != '-' {
		return false
	}
	for i := 0; i < 10; i++ {
		if i != 4 && i != 7 && (v[i] < '0' || v[i] > '9') {
			return false
		}
	}
	return true
}

// clip shortens a client-sent value quoted in an error.
func clip(s string) string {
	if len(s) > 40 {
		return strings.ToValidUTF8(s[:40], "") + "…"
	}
	return s
}

// scanner walks a body that validJSON accepted, so it only has to find
// value boundaries, not reject malformed JSON.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// skip moves past the value at s.i and returns its bytes.
func (s *scanner) skip() []byte {
	start := s.i
	switch s.b[s.i] {
	case '"':
		s.skipString()
	case '{', '[':
		depth := 0
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case '"':
				s.skipString()
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
			}
			s.i++
			if depth == 0 {
				break
			}
		}
	default: // number, true, false, null
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return s.b[start:s.i]
			}
			s.i++
		}
	}
	return s.b[start:s.i]
}

func (s *scanner) skipString() {
	s.i++ // opening quote
	for s.i < len(s.b) {
		// The closing quote is the first one not escaped: IndexByte finds
		// candidates at memory speed (a 2 KB argument string is common).
		q := bytes.IndexByte(s.b[s.i:], '"')
		if q < 0 {
			s.i = len(s.b)
			return
		}
		e := bytes.IndexByte(s.b[s.i:s.i+q], '\\')
		if e < 0 {
			s.i += q + 1
			return
		}
		s.i += e + 2 // past the escape and the character it escapes
	}
}

// str reads the string at s.i (the caller checked it starts with '"').
func (s *scanner) str() string {
	raw := s.skip()
	inner := raw[1 : len(raw)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return string(inner)
	}
	var v string
	_ = json.Unmarshal(raw, &v) // valid JSON: cannot fail
	return v
}

// members calls f for each member of the object at s.i, with s.i at the
// value; f must consume the value. Keys are unescaped.
func (s *scanner) members(f func(key string) error) error {
	s.i++ // '{'
	for first := true; ; first = false {
		s.ws()
		if s.b[s.i] == '}' {
			s.i++
			return nil
		}
		if !first {
			s.i++ // ','
			s.ws()
		}
		k := s.str()
		s.ws()
		s.i++ // ':'
		s.ws()
		if err := f(k); err != nil {
			return err
		}
		s.ws()
	}
}

// known checks key against the members a reader interprets: a second
// occurrence, or a case or Unicode fold variant ("METHOD", "paramſ"), is
// refused because JSON readers disagree on which one wins. It returns the
// index of the known member, or -1 for a member nobody reads.
func known(key string, names []string, seen *uint16) (int, error) {
	for i, n := range names {
		if key == n {
			if *seen&(1<<i) != 0 {
				return 0, invalid("member %q appears twice", n)
			}
			*seen |= 1 << i
			return i, nil
		}
		if strings.EqualFold(key, n) {
			return 0, invalid("member %q is a case variant of %q", clip(key), n)
		}
	}
	return -1, nil
}

var messageMembers = []string{"jsonrpc", "id", "method", "params", "result", "error"}

const (
	mJSONRPC = iota
	mID
	mMethod
	mParams
	mResult
	mError
)

func (s *scanner) message() (Message, error) {
	var m Message
	var seen uint16
	var params []byte
	err := s.members(func(k string) error {
		idx, err := known(k, messageMembers, &seen)
		if err != nil {
			return err
		}
		c := s.b[s.i]
		switch idx {
		case mJSONRPC:
			if c != '"' || s.str() != "2.0" {
				return invalid(`jsonrpc is not "2.0"`)
			}
			return nil
		case mID:
			raw := s.skip()
			if !validID(raw) {
				return invalid("id must be a string or an integer (at most %d bytes)", maxID)
			}
			m.ID = string(raw)
			return nil
		case mMethod:
			if c != '"' {
				return invalid("method is not a string")
			}
			m.Method = s.str()
			if m.Method == "" || len(m.Method) > maxName {
				return invalid("method of %d bytes", len(m.Method))
			}
			return nil
		case mParams:
			if c != '{' {
				return invalid("params is not an object")
			}
			params = s.skip()
			return nil
		}
		s.skip()
		return nil
	})
	if err != nil {
		return m, err
	}
	if seen&(1<<mJSONRPC) == 0 {
		return m, invalid(`jsonrpc "2.0" missing`)
	}
	isResponse := seen&(1<<mResult|1<<mError) != 0
	switch {
	case isResponse:
		if seen&(1<<mMethod|1<<mParams) != 0 || seen&(1<<mResult|1<<mError) == 1<<mResult|1<<mError || m.ID == "" {
			return m, invalid("a response has an id and exactly one of result and error, and no method")
		}
		m.Kind = Response
		return m, nil
	case m.Method == "":
		return m, invalid("method missing")
	case m.ID == "":
		m.Kind = Notification
	default:
		m.Kind = Request
	}
	if params != nil {
		if err := m.readParams(params); err != nil {
			return m, err
		}
	}
	if m.Method == MethodToolsCall && m.Tool == "" {
		return m, invalid("tools/call without params.name")
	}
	if HasURI(m.Method) && m.URI == "" {
		return m, invalid("%s without params.uri", m.Method)
	}
	return m, nil
}

var paramMembers = []string{"name", "arguments", "uri"}

func (m *Message) readParams(b []byte) error {
	tool, uri := m.Method == MethodToolsCall, HasURI(m.Method)
	if !tool && !uri {
		return nil
	}
	s := scanner{b: b}
	var seen uint16
	return s.members(func(k string) error {
		idx, err := known(k, paramMembers, &seen)
		if err != nil {
			return err
		}
		c := s.b[s.i]
		switch {
		case idx == 0 && tool:
			if c != '"' {
				return invalid("params.name is not a string")
			}
			m.Tool = s.str()
			if m.Tool == "" || len(m.Tool) > maxName {
				return invalid("params.name of %d bytes", len(m.Tool))
			}
			return nil
		case idx == 1 && tool:
			if c != '{' {
				return invalid("params.arguments is not an object")
			}
			sum := sha256.Sum256(s.skip())
			m.ArgumentsSHA256 = hex.EncodeToString(sum[:])
			return nil
		case idx == 2 && uri:
			if c != '"' {
				return invalid("params.uri is not a string")
			}
			m.URI = s.str()
			if m.URI == "" || len(m.URI) > maxName {
				return invalid("params.uri of %d bytes", len(m.URI))
			}
			return nil
		}
		s.skip()
		return nil
	})
}

// validID: a JSON string, or an integer without fraction or exponent (MCP
// forbids null ids; JSON-RPC discourages fractions).
func validID(raw []byte) bool {
	if len(raw) == 0 || len(raw) > maxID {
		return false
	}
	if raw[0] == '"' {
		return true
	}
	for i, c := range raw {
		if !(c >= '0' && c <= '9' || c == '-' && i == 0) {
			return false
		}
	}
	return true
}
