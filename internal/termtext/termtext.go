// Package termtext makes recorded strings safe for human output: one
// escaping for every command and report that prints what clients sent.
package termtext

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Escape makes a value from a record safe to print on a terminal.
// Request ids, paths and hosts come from clients: a raw ESC, CR or BEL could
// rewrite what the operator sees, a tab would shift the table's columns, and
// a bidirectional override (U+202E) reorders text. Control and format
// characters and invalid UTF-8 become Go escapes (\x1b, \u202e); a backslash
// is doubled so that the escapes are unambiguous. JSON output needs none of
// this: encoding/json escapes control characters itself.
func Escape(s string) string {
	clean := true
	for _, r := range s {
		if r == '\\' || r == utf8.RuneError || unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == '\\':
			b.WriteString(`\\`)
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r < 0x80 && unicode.IsControl(r):
			fmt.Fprintf(&b, `\x%02x`, r)
		case unicode.IsControl(r) || unicode.Is(unicode.Cf, r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}
