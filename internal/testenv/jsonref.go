package testenv

import (
	"bytes"
	"strings"
	"unicode/utf8"
)

// JSONRef lets a test hold a hand-written JSON encoder to internal/jsonstring's
// rule (encoding/json of go1.26) with whatever encoding/json the toolchain
// has: toolchains agree on valid UTF-8, and differ on invalid bytes (go1.27
// writes a raw U+FFFD where the rule writes \ufffd). In replaces each invalid
// byte of the test's strings with a private-use character none of them holds
// (which encoding/json writes as itself), Out turns that character in
// encoding/json's output into \ufffd.
type JSONRef struct{ stand string }

// NewJSONRef picks the stand-in for invalid bytes: a private-use
// character that none of ss contains.
func NewJSONRef(ss ...string) JSONRef {
	for r := rune(0xE000); ; r++ {
		c := string(r)
		if !containsAny(ss, c) {
			return JSONRef{c}
		}
	}
}

func containsAny(ss []string, c string) bool {
	for _, s := range ss {
		if strings.Contains(s, c) {
			return true
		}
	}
	return false
}

// In is s with each byte that is not valid UTF-8 replaced by the stand-in.
func (j JSONRef) In(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			b.WriteString(j.stand)
		} else {
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// Out is encoding/json's output with the stand-in written as \ufffd.
func (j JSONRef) Out(b []byte) []byte {
	return bytes.ReplaceAll(b, []byte(j.stand), []byte(`\ufffd`))
}
