package httpsig

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// This file is the part of RFC 8941 (Structured Field Values) that HTTP
// Message Signatures and Content-Digest use: dictionaries whose members are
// items or inner lists, with parameters. Parsing is strict; serialization is
// canonical, because a verifier rebuilds "@signature-params" from what it
// parsed.

// MaxFieldBytes bounds one structured field value we parse.
const MaxFieldBytes = 64 << 10

// Token is an RFC 8941 token (serialized without quotes).
type Token string

// Param is one parameter of an item or inner list.
type Param struct {
	Key   string
	Value any // int64, float64, string, Token, []byte or bool
}

// SFParams keeps parameters in order.
type SFParams []Param

// Get returns the value of key, if present.
func (ps SFParams) Get(key string) (any, bool) {
	for _, p := range ps {
		if p.Key == key {
			return p.Value, true
		}
	}
	return nil, false
}

// Item is a bare item with parameters.
type Item struct {
	Value  any
	Params SFParams
}

// InnerList is a list of items with parameters.
type InnerList struct {
	Items  []Item
	Params SFParams
}

// Member is one dictionary member: exactly one of Item or List is set.
type Member struct {
	Key  string
	Item *Item
	List *InnerList
}

// Dictionary keeps members in order; a later duplicate key replaces an
// earlier one, as RFC 8941 §4.2.2 requires.
type Dictionary []Member

// Get returns the member named key.
func (d Dictionary) Get(key string) (Member, bool) {
	for _, m := range d {
		if m.Key == key {
			return m, true
		}
	}
	return Member{}, false
}

var errSF = errors.New("structured field")

type sfParser struct {
	s string
	i int
}

func (p *sfParser) fail(format string, a ...any) error {
	return fmt.Errorf("%w: at byte %d: %s", errSF, p.i, fmt.Sprintf(format, a...))
}

func (p *sfParser) eof() bool { return p.i >= len(p.s) }

func (p *sfParser) peek() byte {
	if p.eof() {
		return 0
	}
	return p.s[p.i]
}

func (p *sfParser) skipSP() {
	for !p.eof() && p.s[p.i] == ' ' {
		p.i++
	}
}

func (p *sfParser) skipOWS() {
	for !p.eof() && (p.s[p.i] == ' ' || p.s[p.i] == '\t') {
		p.i++
	}
}

// ParseDictionary parses an RFC 8941 dictionary field value.
func ParseDictionary(s string) (Dictionary, error) {
	if len(s) > MaxFieldBytes {
		return nil, fmt.Errorf("%w: longer than %d bytes", errSF, MaxFieldBytes)
	}
	p := &sfParser{s: s}
	p.skipSP()
	var d Dictionary
	for !p.eof() {
		key, err := p.key()
		if err != nil {
			return nil, err
		}
		m := Member{Key: key}
		if p.peek() == '=' {
			p.i++
			if p.peek() == '(' {
				l, err := p.innerList()
				if err != nil {
					return nil, err
				}
				m.List = &l
			} else {
				it, err := p.item()
				if err != nil {
					return nil, err
				}
				m.Item = &it
			}
		} else {
			ps, err := p.params()
			if err != nil {
				return nil, err
			}
			m.Item = &Item{Value: true, Params: ps}
		}
		replaced := false
		for i := range d {
			if d[i].Key == key {
				d[i], replaced = m, true
			}
		}
		if !replaced {
			d = append(d, m)
		}
		p.skipOWS()
		if p.eof() {
			return d, nil
		}
		if p.peek() != ',' {
			return nil, p.fail("want ',' between members")
		}
		p.i++
		p.skipOWS()
		if p.eof() {
			return nil, p.fail("trailing ','")
		}
	}
	return d, nil
}

// ParseInnerList parses a field value that is one inner list with
// parameters (the value of a Signature-Input member).
func ParseInnerList(s string) (InnerList, error) {
	p := &sfParser{s: s}
	if p.peek() != '(' {
		return InnerList{}, p.fail("want '('")
	}
	l, err := p.innerList()
	if err != nil {
		return l, err
	}
	if !p.eof() {
		return l, p.fail("trailing bytes")
	}
	return l, nil
}

func isLCAlpha(c byte) bool { return c >= 'a' && c <= 'z' }
func isDigit(c byte) bool   { return c >= '0' && c <= '9' }
func isAlpha(c byte) bool   { return isLCAlpha(c) || (c >= 'A' && c <= 'Z') }

func isTChar(c byte) bool {
	if isAlpha(c) || isDigit(c) {
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func (p *sfParser) key() (string, error) {
	if c := p.peek(); !isLCAlpha(c) && c != '*' {
		return "", p.fail("key must start with a-z or '*'")
	}
	start := p.i
	for !p.eof() {
		c := p.s[p.i]
		if !isLCAlpha(c) && !isDigit(c) && c != '_' && c != '-' && c != '.' && c != '*' {
			break
		}
		p.i++
	}
	return p.s[start:p.i], nil
}

func (p *sfParser) innerList() (InnerList, error) {
	var l InnerList
	p.i++ // '('
	for !p.eof() {
		p.skipSP()
		if p.peek() == ')' {
			p.i++
			ps, err := p.params()
			if err != nil {
				return l, err
			}
			l.Params = ps
			return l, nil
		}
		it, err := p.item()
		if err != nil {
			return l, err
		}
		l.Items = append(l.Items, it)
		if c := p.peek(); c != ' ' && c != ')' {
			return l, p.fail("want ' ' or ')' in inner list")
		}
	}
	return l, p.fail("inner list not closed")
}

func (p *sfParser) item() (Item, error) {
	v, err := p.bareItem()
	if err != nil {
		return Item{}, err
	}
	ps, err := p.params()
	if err != nil {
		return Item{}, err
	}
	return Item{Value: v, Params: ps}, nil
}

func (p *sfParser) params() (SFParams, error) {
	var ps SFParams
	for p.peek() == ';' {
		p.i++
		p.skipSP()
		key, err := p.key()
		if err != nil {
			return nil, err
		}
		var v any = true
		if p.peek() == '=' {
			p.i++
			if v, err = p.bareItem(); err != nil {
				return nil, err
			}
		}
		replaced := false
		for i := range ps {
			if ps[i].Key == key {
				ps[i].Value, replaced = v, true
			}
		}
		if !replaced {
			ps = append(ps, Param{Key: key, Value: v})
		}
	}
	return ps, nil
}

func (p *sfParser) bareItem() (any, error) {
	c := p.peek()
	switch {
	case c == '-' || isDigit(c):
		return p.number()
	case c == '"':
		return p.str()
	case c == '*' || isAlpha(c):
		return p.token(), nil
	case c == ':':
		return p.bytes()
	case c == '?':
		p.i++
		switch p.peek() {
		case '0':
			p.i++
			return false, nil
		case '1':
			p.i++
			return true, nil
		}
		return nil, p.fail("bad boolean")
	}
	return nil, p.fail("unexpected %q", c)
}

func (p *sfParser) number() (any, error) {
	start := p.i
	if p.peek() == '-' {
		p.i++
	}
	if !isDigit(p.peek()) {
		return nil, p.fail("want a digit")
	}
	dot := -1
	for !p.eof() {
		c := p.s[p.i]
		if isDigit(c) {
			p.i++
		} else if c == '.' && dot < 0 {
			dot = p.i
			p.i++
		} else {
			break
		}
		n := p.i - start
		if dot < 0 && n > 15 || dot >= 0 && n > 16 {
			return nil, p.fail("number too long")
		}
	}
	s := p.s[start:p.i]
	if dot < 0 {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return nil, p.fail("bad integer")
		}
		return n, nil
	}
	frac := p.i - dot - 1
	if dot-start-boolInt(s[0] == '-') > 12 || frac < 1 || frac > 3 {
		return nil, p.fail("bad decimal")
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return nil, p.fail("bad decimal")
	}
	return f, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (p *sfParser) str() (string, error) {
	p.i++ // '"'
	var b strings.Builder
	for !p.eof() {
		c := p.s[p.i]
		p.i++
		switch {
		case c == '\\':
			if p.eof() {
				return "", p.fail("unterminated escape")
			}
			n := p.s[p.i]
			if n != '"' && n != '\\' {
				return "", p.fail("bad escape")
			}
			b.WriteByte(n)
			p.i++
		case c == '"':
			return b.String(), nil
		case c < 0x20 || c > 0x7e:
			return "", p.fail("byte %#x in string", c)
		default:
			b.WriteByte(c)
		}
	}
	return "", p.fail("unterminated string")
}

func (p *sfParser) token() Token {
	start := p.i
	p.i++
	for !p.eof() && (isTChar(p.s[p.i]) || p.s[p.i] == ':' || p.s[p.i] == '/') {
		p.i++
	}
	return Token(p.s[start:p.i])
}

func (p *sfParser) bytes() ([]byte, error) {
	p.i++ // ':'
	end := strings.IndexByte(p.s[p.i:], ':')
	if end < 0 {
		return nil, p.fail("unterminated byte sequence")
	}
	enc := p.s[p.i : p.i+end]
	for i := 0; i < len(enc); i++ {
		c := enc[i]
		if !isAlpha(c) && !isDigit(c) && c != '+' && c != '/' && c != '=' {
			return nil, p.fail("bad byte sequence")
		}
	}
	p.i += end + 1
	out, err := base64.StdEncoding.DecodeString(enc)
	if err != nil {
		return nil, p.fail("bad base64 in byte sequence")
	}
	return out, nil
}

// appendBareItem serializes v canonically (RFC 8941 §4.1).
func appendBareItem(b []byte, v any) ([]byte, error) {
	switch x := v.(type) {
	case int64:
		if x > 999_999_999_999_999 || x < -999_999_999_999_999 {
			return nil, fmt.Errorf("%w: integer out of range", errSF)
		}
		return strconv.AppendInt(b, x, 10), nil
	case float64:
		s := strconv.FormatFloat(x, 'f', 3, 64)
		s = strings.TrimRight(s, "0")
		if strings.HasSuffix(s, ".") {
			s += "0"
		}
		return append(b, s...), nil
	case string:
		return appendString(b, x)
	case Token:
		if x == "" || (!isAlpha(x[0]) && x[0] != '*') {
			return nil, fmt.Errorf("%w: bad token", errSF)
		}
		return append(b, x...), nil
	case []byte:
		b = append(b, ':')
		b = base64.StdEncoding.AppendEncode(b, x)
		return append(b, ':'), nil
	case bool:
		if x {
			return append(b, "?1"...), nil
		}
		return append(b, "?0"...), nil
	}
	return nil, fmt.Errorf("%w: cannot serialize %T", errSF, v)
}

// appendString serializes an sf-string (without boxing it in an any).
func appendString(b []byte, x string) ([]byte, error) {
	b = append(b, '"')
	for i := 0; i < len(x); i++ {
		c := x[i]
		if c < 0x20 || c > 0x7e {
			return nil, fmt.Errorf("%w: byte %#x cannot be in a string", errSF, c)
		}
		if c == '"' || c == '\\' {
			b = append(b, '\\')
		}
		b = append(b, c)
	}
	return append(b, '"'), nil
}

func appendParams(b []byte, ps SFParams) ([]byte, error) {
	var err error
	for _, p := range ps {
		b = append(b, ';')
		b = append(b, p.Key...)
		if v, ok := p.Value.(bool); ok && v {
			continue
		}
		b = append(b, '=')
		if b, err = appendBareItem(b, p.Value); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// AppendInnerList serializes l canonically.
func AppendInnerList(b []byte, l InnerList) ([]byte, error) {
	var err error
	b = append(b, '(')
	for i, it := range l.Items {
		if i > 0 {
			b = append(b, ' ')
		}
		if b, err = appendBareItem(b, it.Value); err != nil {
			return nil, err
		}
		if b, err = appendParams(b, it.Params); err != nil {
			return nil, err
		}
	}
	b = append(b, ')')
	return appendParams(b, l.Params)
}
