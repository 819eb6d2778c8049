package termtext

import "testing"

func TestEscape(t *testing.T) {
	for in, want := range map[string]string{
		"":                   "",
		"plain /v1/payments": "plain /v1/payments",
		"ünïcode ✓":          "ünïcode ✓",
		"a\\b":               `a\\b`,
		"\x1b[0m":            `\x1b[0m`,
		"\xff\xfe":           `\xff\xfe`,
		"\u200b\u2066":       `\u200b\u2066`,
		"\ufffd":             "\ufffd",
	} {
		if got := Escape(in); got != want {
			t.Errorf("Escape(%q) = %q, want %q", in, got, want)
		}
	}
}
