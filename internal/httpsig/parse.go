package httpsig

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http/httputil"
	"net/url"
	"sort"
	"strconv"
	"strings"
)

// Bounds of a saved message (ParseRaw, ParseJSON).
const (
	MaxHeadBytes  = 1 << 20 // the request or response line and its fields
	MaxFields     = 1000
	MaxSavedBytes = 256 << 20
)

// ErrParse wraps every error of ParseRaw and ParseJSON.
var ErrParse = errors.New("parse message")

func parseErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrParse, fmt.Sprintf(format, a...))
}

// ParseRaw reads a saved HTTP/1.1 response, as `curl -i` or a proxy log
// writes it: status line, fields, an empty line, the body. It may be
// preceded by the request head it answers (request line and fields and an
// empty line; a request body only with Content-Length), which supplies the
// "req" components. Lines end in CRLF or LF. A chunked body is decoded.
func ParseRaw(data []byte) (*Message, error) {
	if len(data) > MaxSavedBytes {
		return nil, parseErr("message larger than %d bytes", MaxSavedBytes)
	}
	rest := data
	var req *Message
	if !bytes.HasPrefix(rest, []byte("HTTP/")) {
		line, fields, after, err := readHead(rest)
		if err != nil {
			return nil, fmt.Errorf("request: %w", err)
		}
		req, err = requestFromLine(line, fields)
		if err != nil {
			return nil, err
		}
		if cl, ok := req.Get("content-length"); ok {
			n, err := strconv.Atoi(cl)
			if err != nil || n < 0 || n > len(after) {
				return nil, parseErr("request Content-Length %q does not fit the text", cl)
			}
			req.Body, after = after[:n], after[n:]
		}
		rest = after
	}
	line, fields, body, err := readHead(rest)
	if err != nil {
		return nil, fmt.Errorf("response: %w", err)
	}
	m := &Message{Header: fields, Request: req}
	proto, status, ok := strings.Cut(line, " ")
	if !ok || !strings.HasPrefix(proto, "HTTP/") {
		return nil, parseErr("want a status line (HTTP/1.1 200 OK), got %q", clip(line))
	}
	code, _, _ := strings.Cut(status, " ")
	if len(code) != 3 {
		return nil, parseErr("bad status code %q", clip(code))
	}
	if m.Status, err = strconv.Atoi(code); err != nil || m.Status < 100 {
		return nil, parseErr("bad status code %q", clip(code))
	}
	if te, _ := m.Get("transfer-encoding"); strings.EqualFold(te, "chunked") {
		dec, err := io.ReadAll(io.LimitReader(httputil.NewChunkedReader(bytes.NewReader(body)), MaxSavedBytes))
		if err != nil {
			return nil, parseErr("chunked body: %v", err)
		}
		m.Body = dec
	} else if cl, ok := m.Get("content-length"); ok {
		n, err := strconv.Atoi(cl)
		if err != nil || n < 0 {
			return nil, parseErr("bad Content-Length %q", clip(cl))
		}
		if n != len(body) {
			return nil, parseErr("body is %d bytes but Content-Length says %d", len(body), n)
		}
		m.Body = body
	} else {
		m.Body = body
	}
	return m, nil
}

// readHead splits a start line and fields off data; it returns what
// follows the empty line.
func readHead(data []byte) (line string, fields []Field, rest []byte, err error) {
	total := 0
	first := true
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			return "", nil, nil, parseErr("head does not end with an empty line")
		}
		l := data[:i]
		data = data[i+1:]
		total += i + 1
		if total > MaxHeadBytes {
			return "", nil, nil, parseErr("head larger than %d bytes", MaxHeadBytes)
		}
		l = bytes.TrimSuffix(l, []byte("\r"))
		if first {
			if len(l) == 0 {
				return "", nil, nil, parseErr("empty start line")
			}
			line, first = string(l), false
			continue
		}
		if len(l) == 0 {
			return line, fields, data, nil
		}
		if l[0] == ' ' || l[0] == '\t' {
			return "", nil, nil, parseErr("obsolete line folding is not accepted")
		}
		name, value, ok := bytes.Cut(l, []byte(":"))
		if !ok || len(name) == 0 || !validFieldName(name) {
			return "", nil, nil, parseErr("bad field line %q", clip(string(l)))
		}
		if len(fields) >= MaxFields {
			return "", nil, nil, parseErr("more than %d fields", MaxFields)
		}
		for _, c := range value {
			if (c < 0x20 && c != '\t') || c == 0x7f {
				return "", nil, nil, parseErr("control byte in field %s", name)
			}
		}
		fields = append(fields, Field{Name: string(name), Value: strings.Trim(string(value), " \t")})
	}
}

func validFieldName(b []byte) bool {
	for _, c := range b {
		if !isTChar(c) {
			return false
		}
	}
	return true
}

func requestFromLine(line string, fields []Field) (*Message, error) {
	parts := strings.Split(line, " ")
	if len(parts) != 3 || !strings.HasPrefix(parts[2], "HTTP/") || parts[0] == "" {
		return nil, parseErr("want a request line (GET /path HTTP/1.1) or a status line, got %q", clip(line))
	}
	for i := 0; i < len(parts[0]); i++ {
		if !isTChar(parts[0][i]) {
			return nil, parseErr("bad method %q", clip(parts[0]))
		}
	}
	r := &Message{Method: parts[0], Header: fields}
	if err := r.setTarget(parts[1]); err != nil {
		return nil, err
	}
	if r.Authority == "" {
		if h, ok := r.Get("host"); ok {
			r.Authority = h
		}
	}
	return r, nil
}

// setTarget fills Path, Query (and Scheme and Authority for an absolute
// target) from a request target.
func (m *Message) setTarget(target string) error {
	if target == "" {
		return parseErr("empty request target")
	}
	if !strings.HasPrefix(target, "/") {
		u, err := url.Parse(target)
		if err != nil || u.Scheme == "" || u.Host == "" {
			return parseErr("bad request target %q", clip(target))
		}
		m.Scheme, m.Authority = u.Scheme, u.Host
		target = u.EscapedPath()
		if u.RawQuery != "" || u.ForceQuery {
			target += "?" + u.RawQuery
		}
	}
	m.Path, m.Query = target, ""
	if i := strings.IndexByte(target, '?'); i >= 0 {
		m.Path, m.Query = target[:i], target[i:]
	}
	return nil
}

// JSONMessage is the JSON form of a saved response (and, optionally, the
// request it answers). Headers are either [[name, value], ...] or
// {name: value or [values]}; the body is "body" (text) or "body_base64".
type JSONMessage struct {
	Request    *JSONRequest `json:"request,omitempty"`
	Status     int          `json:"status"`
	Headers    JSONHeaders  `json:"headers"`
	Body       *string      `json:"body,omitempty"`
	BodyBase64 *string      `json:"body_base64,omitempty"`
}

// JSONRequest is the request part of JSONMessage. Either URL or Authority
// and Path (with an optional Query) say where it went.
type JSONRequest struct {
	Method    string      `json:"method"`
	URL       string      `json:"url,omitempty"`
	Authority string      `json:"authority,omitempty"`
	Path      string      `json:"path,omitempty"`
	Scheme    string      `json:"scheme,omitempty"`
	Headers   JSONHeaders `json:"headers,omitempty"`
}

// JSONHeaders accepts both header shapes of JSONMessage.
type JSONHeaders []Field

// UnmarshalJSON reads [[name, value], ...] or {name: value | [values]}.
func (h *JSONHeaders) UnmarshalJSON(b []byte) error {
	var pairs [][]string
	if err := json.Unmarshal(b, &pairs); err == nil {
		for _, p := range pairs {
			if len(p) != 2 {
				return errors.New("a header pair must be [name, value]")
			}
			*h = append(*h, Field{Name: p[0], Value: p[1]})
		}
		return nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(b, &obj); err != nil {
		return errors.New("headers must be [[name, value], ...] or {name: value}")
	}
	names := make([]string, 0, len(obj))
	for k := range obj {
		names = append(names, k)
	}
	sort.Strings(names) // JSON objects have no order; fields of one name keep theirs
	for _, k := range names {
		var one string
		if err := json.Unmarshal(obj[k], &one); err == nil {
			*h = append(*h, Field{Name: k, Value: one})
			continue
		}
		var many []string
		if err := json.Unmarshal(obj[k], &many); err != nil {
			return fmt.Errorf("header %q: want a string or a list of strings", k)
		}
		for _, v := range many {
			*h = append(*h, Field{Name: k, Value: v})
		}
	}
	return nil
}

// MarshalJSON writes the pairs form.
func (h JSONHeaders) MarshalJSON() ([]byte, error) {
	pairs := make([][2]string, len(h))
	for i, f := range h {
		pairs[i] = [2]string{f.Name, f.Value}
	}
	return json.Marshal(pairs)
}

// ParseJSON reads the JSON form (JSONMessage).
func ParseJSON(data []byte) (*Message, error) {
	if len(data) > MaxSavedBytes {
		return nil, parseErr("message larger than %d bytes", MaxSavedBytes)
	}
	var j JSONMessage
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return nil, parseErr("JSON: %v", err)
	}
	if j.Status < 100 || j.Status > 999 {
		return nil, parseErr("status %d is not a 3-digit HTTP status", j.Status)
	}
	if len(j.Headers) > MaxFields {
		return nil, parseErr("more than %d fields", MaxFields)
	}
	m := &Message{Status: j.Status, Header: j.Headers}
	switch {
	case j.Body != nil && j.BodyBase64 != nil:
		return nil, parseErr("give body or body_base64, not both")
	case j.Body != nil:
		m.Body = []byte(*j.Body)
	case j.BodyBase64 != nil:
		b, err := base64.StdEncoding.DecodeString(*j.BodyBase64)
		if err != nil {
			return nil, parseErr("body_base64: %v", err)
		}
		m.Body = b
	}
	if r := j.Request; r != nil {
		req := &Message{Method: r.Method, Header: r.Headers, Scheme: r.Scheme, Authority: r.Authority}
		if r.Method == "" {
			return nil, parseErr("request.method is required")
		}
		target := r.Path
		if r.URL != "" {
			target = r.URL
		}
		if target != "" {
			if err := req.setTarget(target); err != nil {
				return nil, err
			}
		}
		if r.Authority != "" {
			req.Authority = r.Authority
		}
		if r.Scheme != "" {
			req.Scheme = r.Scheme
		}
		m.Request = req
	}
	return m, nil
}

// Parse reads either form: JSON when the first non-space byte is '{'.
func Parse(data []byte) (*Message, error) {
	if t := bytes.TrimLeft(data, " \t\r\n"); len(t) > 0 && t[0] == '{' {
		return ParseJSON(data)
	}
	return ParseRaw(data)
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// ParseRequest reads a saved HTTP/1.1 request (request line, fields, an
// empty line, a body as long as Content-Length says or the rest).
func ParseRequest(data []byte) (*Message, error) {
	if len(data) > MaxSavedBytes {
		return nil, parseErr("message larger than %d bytes", MaxSavedBytes)
	}
	line, fields, body, err := readHead(data)
	if err != nil {
		return nil, err
	}
	req, err := requestFromLine(line, fields)
	if err != nil {
		return nil, err
	}
	req.Body = body
	if cl, ok := req.Get("content-length"); ok {
		n, err := strconv.Atoi(cl)
		if err != nil || n < 0 || n > len(body) {
			return nil, parseErr("Content-Length %q does not fit the text", clip(cl))
		}
		req.Body = body[:n]
	}
	return req, nil
}
