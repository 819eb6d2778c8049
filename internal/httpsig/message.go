// Package httpsig implements the parts of RFC 9421 (HTTP Message Signatures)
// and RFC 9530 (Digest Fields) that agentauthz's signed responses use:
// Ed25519 signatures over derived components and header fields, with "req"
// components taken from the request a response answers, and Content-Digest
// with sha-256 (sha-512 is verified too). It knows nothing of Envoy or of
// decisions; internal/extproc signs with it, `agentauthz response verify`
// verifies with it.
package httpsig

import (
	"strings"
)

// Field is one header or trailer field line. Names are compared without
// regard to case; Message keeps them as given.
type Field struct {
	Name  string
	Value string
}

// Message is an HTTP request or response as far as signatures need it.
type Message struct {
	// Request side. Authority is the host[:port] (":authority" or Host);
	// Path is the path without the query; Query is "" or starts with '?'.
	Method    string
	Scheme    string
	Authority string
	Path      string
	Query     string

	// Status is set for a response (and zero for a request).
	Status int

	Header []Field
	Body   []byte

	// Request is the request a response answers, for "req" components.
	Request *Message
}

// Values returns every value of the named field, in order.
func (m *Message) Values(name string) []string {
	var out []string
	for _, f := range m.Header {
		if strings.EqualFold(f.Name, name) {
			out = append(out, f.Value)
		}
	}
	return out
}

// Get returns the field's values combined as RFC 9421 §2.1 does: each value
// trimmed of leading and trailing whitespace, joined by ", "; ok is false
// when the field is absent.
func (m *Message) Get(name string) (string, bool) {
	first, n := -1, 0
	for i, f := range m.Header {
		if strings.EqualFold(f.Name, name) {
			if n == 0 {
				first = i
			}
			n++
		}
	}
	switch n {
	case 0:
		return "", false
	case 1:
		return canonicalValue(m.Header[first].Value), true
	}
	b := make([]byte, 0, 64)
	for i, f := range m.Header[first:] {
		if !strings.EqualFold(f.Name, name) {
			continue
		}
		if i > 0 {
			b = append(b, ", "...)
		}
		b = append(b, canonicalValue(f.Value)...)
	}
	return string(b), true
}

// Set replaces every value of the named field with v (appends when absent).
func (m *Message) Set(name, v string) {
	m.Del(name)
	m.Header = append(m.Header, Field{Name: name, Value: v})
}

// Del removes the named field.
func (m *Message) Del(name string) {
	out := m.Header[:0]
	for _, f := range m.Header {
		if !strings.EqualFold(f.Name, name) {
			out = append(out, f)
		}
	}
	m.Header = out
}

// canonicalValue trims and replaces obsolete line folding with one space
// (RFC 9421 §2.1).
func canonicalValue(v string) string {
	v = strings.Trim(v, " \t")
	if strings.ContainsAny(v, "\r\n") {
		var b strings.Builder
		fold := false
		for i := 0; i < len(v); i++ {
			c := v[i]
			if c == '\r' || c == '\n' {
				fold = true
				continue
			}
			if fold && (c == ' ' || c == '\t') {
				continue
			}
			if fold {
				b.WriteByte(' ')
				fold = false
			}
			b.WriteByte(c)
		}
		v = b.String()
	}
	return v
}
