package jsonstring

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/agentauthz/agentauthz/internal/testenv"
)

// TestRule pins the rule byte for byte, with no encoding/json involved: the
// bytes a toolchain move must not change.
func TestRule(t *testing.T) {
	for _, c := range []struct{ in, plain, html string }{
		{"", `""`, `""`},
		{"payments-bot", `"payments-bot"`, `"payments-bot"`},
		{"a\"b\\c/", `"a\"b\\c/"`, `"a\"b\\c/"`},
		{"\b\f\n\r\t", `"\b\f\n\r\t"`, `"\b\f\n\r\t"`},
		{"\x00\x01\x1f\x7f", `"\u0000\u0001\u001f` + "\x7f" + `"`, `"\u0000\u0001\u001f` + "\x7f" + `"`},
		{"<a&b>", `"<a&b>"`, `"\u003ca\u0026b\u003e"`},
		{"x\xffy", `"x\ufffdy"`, `"x\ufffdy"`},                           // one escape per invalid byte
		{"\xe2\x80", `"\ufffd\ufffd"`, `"\ufffd\ufffd"`},                 // a cut rune: two bytes
		{"\xed\xa0\x80", `"\ufffd\ufffd\ufffd"`, `"\ufffd\ufffd\ufffd"`}, // a surrogate half
		{"\ufffd", "\"\ufffd\"", "\"\ufffd\""},                           // a real U+FFFD is itself
		{"\u2028\u2029", `"\u2028\u2029"`, `"\u2028\u2029"`},
		{"é€😀\u00ad\ufeff", "\"é€😀\u00ad\ufeff\"", "\"é€😀\u00ad\ufeff\""},
	} {
		if got := Append(nil, c.in); string(got) != c.plain {
			t.Errorf("Append(%q) = %s, want %s", c.in, got, c.plain)
		}
		if got := AppendHTML([]byte("x"), c.in); string(got) != "x"+c.html {
			t.Errorf("AppendHTML(%q) = %s, want x%s", c.in, got, c.html)
		}
	}
}

// FuzzAppend: for any string, the rule is what encoding/json writes
// (go1.26: with invalid bytes as \ufffd), and it decodes to the string with
// each invalid byte replaced by U+FFFD.
func FuzzAppend(f *testing.F) {
	for _, s := range []string{"", "plain", "a\"b\\c\x00\x1f\x7f", "<script>&amp;", "\xff\xfe", "\xe2\x80", "é\u2028\u2029\ufffd"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ref := testenv.NewJSONRef(s)
		html, err := json.Marshal(ref.In(s))
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(ref.In(s)); err != nil {
			t.Fatal(err)
		}
		plain := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
		if got, want := Append(nil, s), ref.Out(plain); !bytes.Equal(got, want) {
			t.Fatalf("Append(%q) = %s, want %s", s, got, want)
		}
		got := AppendHTML(nil, s)
		if want := ref.Out(html); !bytes.Equal(got, want) {
			t.Fatalf("AppendHTML(%q) = %s, want %s", s, got, want)
		}
		var back string
		if err := json.Unmarshal(got, &back); err != nil || back != string([]rune(s)) {
			t.Fatalf("%s decodes to %q (%v), want %q", got, back, err, string([]rune(s)))
		}
	})
}
