// Package jsonvalid checks that bytes are one JSON value, with
// encoding/json's verdict, in one tight pass: encoding/json's
// byte-at-a-time state machine costs about 3 ns per byte, which is most of
// what reading an MCP call (internal/mcp) and verifying a decision log
// record (internal/decisionlog) would otherwise spend. FuzzValid holds it
// to json.Valid.
package jsonvalid

import (
	"encoding/binary"
	"math/bits"
)

// StdMaxDepth is encoding/json's nesting limit: Valid(b, StdMaxDepth) is
// json.Valid(b).
const StdMaxDepth = 10000

// Valid reports whether b is exactly one JSON value, with optional
// whitespace around it, nested at most maxDepth arrays and objects deep.
// Like json.Valid it does not check that strings are UTF-8.
func Valid(b []byte, maxDepth int) bool {
	v := validator{b: b, max: maxDepth}
	v.ws()
	if !v.value() {
		return false
	}
	v.ws()
	return v.i == len(v.b)
}

type validator struct {
	b     []byte
	i     int
	depth int
	max   int
}

func (v *validator) ws() {
	for v.i < len(v.b) {
		switch v.b[v.i] {
		case ' ', '\t', '\n', '\r':
			v.i++
		default:
			return
		}
	}
}

func (v *validator) value() bool {
	if v.i >= len(v.b) {
		return false
	}
	switch c := v.b[v.i]; {
	case c == '{':
		return v.object()
	case c == '[':
		return v.array()
	case c == '"':
		return v.str()
	case c == 't':
		return v.lit("true")
	case c == 'f':
		return v.lit("false")
	case c == 'n':
		return v.lit("null")
	case c == '-' || c >= '0' && c <= '9':
		return v.number()
	}
	return false
}

func (v *validator) lit(s string) bool {
	if len(v.b)-v.i < len(s) || string(v.b[v.i:v.i+len(s)]) != s {
		return false
	}
	v.i += len(s)
	return true
}

func (v *validator) object() bool {
	if v.depth++; v.depth > v.max {
		return false
	}
	v.i++ // '{'
	v.ws()
	if v.i < len(v.b) && v.b[v.i] == '}' {
		v.i++
		v.depth--
		return true
	}
	for {
		if v.i >= len(v.b) || v.b[v.i] != '"' || !v.str() {
			return false
		}
		v.ws()
		if v.i >= len(v.b) || v.b[v.i] != ':' {
			return false
		}
		v.i++
		v.ws()
		if !v.value() {
			return false
		}
		v.ws()
		if v.i >= len(v.b) {
			return false
		}
		switch v.b[v.i] {
		case ',':
			v.i++
			v.ws()
		case '}':
			v.i++
			v.depth--
			return true
		default:
			return false
		}
	}
}

func (v *validator) array() bool {
	if v.depth++; v.depth > v.max {
		return false
	}
	v.i++ // '['
	v.ws()
	if v.i < len(v.b) && v.b[v.i] == ']' {
		v.i++
		v.depth--
		return true
	}
	for {
		if !v.value() {
			return false
		}
		v.ws()
		if v.i >= len(v.b) {
			return false
		}
		switch v.b[v.i] {
		case ',':
			v.i++
			v.ws()
		case ']':
			v.i++
			v.depth--
			return true
		default:
			return false
		}
	}
}

// Eight bytes at a time: specials has the high bit of each byte that is
// '"', '\\' or below 0x20 (the bytes a string's scan stops at) set, and
// possibly of bytes above the first such byte (borrows run upwards), so
// its lowest set bit is exactly the first one (TestSpecials).
const (
	ones  = 0x0101010101010101
	highs = 0x8080808080808080
)

func specials(x uint64) uint64 {
	q, bs := x^(ones*'"'), x^(ones*'\\')
	return ((q-ones)&^q | (bs-ones)&^bs | (x-ones*0x20)&^x) & highs
}

func (v *validator) str() bool {
	v.i++ // opening quote
	for {
		for {
			if v.i+8 > len(v.b) {
				for v.i < len(v.b) && v.b[v.i] != '"' && v.b[v.i] != '\\' && v.b[v.i] >= 0x20 {
					v.i++
				}
				break
			}
			if m := specials(binary.LittleEndian.Uint64(v.b[v.i:])); m != 0 {
				v.i += bits.TrailingZeros64(m) >> 3
				break
			}
			v.i += 8
		}
		if v.i >= len(v.b) {
			return false
		}
		switch v.b[v.i] {
		case '"':
			v.i++
			return true
		case '\\':
			v.i++
			if v.i >= len(v.b) {
				return false
			}
			switch v.b[v.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				v.i++
			case 'u':
				if len(v.b)-v.i < 5 || !hex4(v.b[v.i+1:v.i+5]) {
					return false
				}
				v.i += 5
			default:
				return false
			}
		default: // below 0x20
			return false
		}
	}
}

func hex4(b []byte) bool {
	for _, c := range b {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

func (v *validator) digits() bool {
	start := v.i
	for v.i < len(v.b) && v.b[v.i] >= '0' && v.b[v.i] <= '9' {
		v.i++
	}
	return v.i > start
}

func (v *validator) number() bool {
	if v.b[v.i] == '-' {
		v.i++
	}
	if v.i >= len(v.b) {
		return false
	}
	if v.b[v.i] == '0' {
		v.i++
	} else if !v.digits() {
		return false
	}
	if v.i < len(v.b) && v.b[v.i] == '.' {
		v.i++
		if !v.digits() {
			return false
		}
	}
	if v.i < len(v.b) && (v.b[v.i] == 'e' || v.b[v.i] == 'E') {
		v.i++
		if v.i < len(v.b) && (v.b[v.i] == '+' || v.b[v.i] == '-') {
			v.i++
		}
		if !v.digits() {
			return false
		}
	}
	return true
}
