// Package jsonstring writes JSON strings by one fixed rule, for the bytes
// that are hashed or signed (decision records, change-log rows, push
// messages): they must not depend on the Go toolchain that wrote them.
// encoding/json does not promise that; go1.27 writes invalid UTF-8 as a raw
// U+FFFD where go1.26 wrote the escape \ufffd, and a change-log row is
// re-encoded when it is verified.
//
// The rule is encoding/json's as of go1.26 (so every row and record written
// before this package existed is written the same way):
//
//   - '"' and '\\' are escaped with a backslash; \b \f \n \r \t by name; the
//     other bytes below 0x20 as \u00xx (lowercase hex);
//   - each byte that is not part of valid UTF-8 is written as \ufffd;
//   - U+2028 and U+2029 are written as \u2028 and \u2029;
//   - with HTML escaping (AppendHTML), '<', '>' and '&' are written as
//     \u003c, \u003e and \u0026;
//   - everything else, other UTF-8 included, is written as itself.
package jsonstring

import "unicode/utf8"

// Append appends s as a JSON string without HTML escaping.
func Append(b []byte, s string) []byte { return appendString(b, s, false) }

// AppendHTML appends s as a JSON string with '<', '>' and '&' escaped, as
// json.Marshal writes them.
func AppendHTML(b []byte, s string) []byte { return appendString(b, s, true) }

// safe and htmlSafe: the ASCII bytes written as themselves.
var safe, htmlSafe = asciiSafe(false), asciiSafe(true)

func asciiSafe(html bool) (t [utf8.RuneSelf]bool) {
	for c := byte(0x20); c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\' && (!html || c != '<' && c != '>' && c != '&')
	}
	return t
}

func appendString(b []byte, s string, html bool) []byte {
	const hex = "0123456789abcdef"
	set := &safe
	if html {
		set = &htmlSafe
	}
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if set[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default: // below 0x20, or '<', '>', '&'
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
