package jsonvalid

import (
	"encoding/binary"
	"encoding/json"
	"math/bits"
	"math/rand/v2"
	"strings"
	"testing"
)

// FuzzValid: Valid at StdMaxDepth is json.Valid.
func FuzzValid(f *testing.F) {
	for _, s := range []string{`{}`, `[]`, `{"a":[1,-0.5e+3,"\u00e9\n",true,false,null]}`, `01`, `1.`, "\"\x01\"", `{"a" 1}`, `[1,]`,
		`"\ud800"`, ` 7 `, `-`, `1e`, `{"a":1}}`, `"0123456789abcdef\"0123"`, `"0123456789\\abcdef"`, "\"01234567\x1f89\"", "\"\xff\xfe\x80 é\"",
		`{"index":7,"log":"agentauthz","kind":"decision","decision_id":"0193","agent":{"id":"a"},"decision":{"allowed":true,"http_status":200,"reasons":[]}}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := Valid(b, StdMaxDepth), json.Valid(b); got != want {
			t.Fatalf("Valid(%q) = %v, json.Valid = %v", b, got, want)
		}
	})
}

// TestDepth: StdMaxDepth is encoding/json's limit, and a smaller limit
// refuses what lies deeper.
func TestDepth(t *testing.T) {
	for _, n := range []int{StdMaxDepth, StdMaxDepth + 1} {
		b := []byte(strings.Repeat("[", n) + strings.Repeat("]", n))
		if got, want := Valid(b, StdMaxDepth), json.Valid(b); got != want {
			t.Errorf("depth %d: Valid %v, json.Valid %v", n, got, want)
		}
	}
	if !Valid([]byte(`[[{"a":[]}]]`), 4) || Valid([]byte(`[[{"a":[[]]}]]`), 4) {
		t.Error("maxDepth 4")
	}
}

// TestSpecials: the lowest flagged byte of specials is the first byte that
// is '"', '\\' or a control character, and none is flagged when there is
// none.
func TestSpecials(t *testing.T) {
	first := func(w [8]byte) int {
		for i, c := range w {
			if c == '"' || c == '\\' || c < 0x20 {
				return i
			}
		}
		return 8
	}
	got := func(w [8]byte) int {
		m := specials(binary.LittleEndian.Uint64(w[:]))
		if m == 0 {
			return 8
		}
		return bits.TrailingZeros64(m) >> 3
	}
	r := rand.New(rand.NewPCG(1, 2))
	var w [8]byte
	for i := range 500000 {
		for j := range w {
			w[j] = byte(0x20 + r.IntN(0xe0))
		}
		for range i % 3 {
			w[r.IntN(8)] = byte(r.IntN(256))
		}
		if got(w) != first(w) {
			t.Fatalf("%x: first special at %d, specials says %d", w, first(w), got(w))
		}
	}
	for pos := range 8 {
		for c := range 256 {
			for j := range w {
				w[j] = 'a'
			}
			w[pos] = byte(c)
			if got(w) != first(w) {
				t.Fatalf("%x: first special at %d, specials says %d", w, first(w), got(w))
			}
		}
	}
}

var record = []byte(`{"index":123456,"log":"agentauthz","kind":"decision","decision_id":"0193a0b4-7c1e-7d2a-9f3e-2b8c4d5e6f70","agent":{"id":"payments-bot","spiffe_id":"spiffe://acme.example/agent/payments-bot","tenant":"acme.example","trust_level":"L3","scopes":["payments:initiate","payments:read"],"owner":"team-payments","serial":"4f3a9c0e1d2b","cert_sha256":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","issuer":"CN=acme.example agent CA,O=Acme","source":"peer_certificate"},"request":{"id":"5b1e0c7a-2f9d-4e3b-8a6c-1d2e3f4a5b6c","method":"POST","host":"api.acme.example","path":"/v1/payments/transfers","operation":"payments:initiate","source":"10.0.0.7:40000"},"decision":{"allowed":true,"http_status":200,"reasons":["allowed"],"policy_revision":"rev-7"},"time":"2026-12-07T20:31:05.123456Z"}`)

func BenchmarkValid(b *testing.B) {
	b.SetBytes(int64(len(record)))
	for b.Loop() {
		if !Valid(record, StdMaxDepth) {
			b.Fatal()
		}
	}
}

func BenchmarkEncodingJSONValid(b *testing.B) {
	b.SetBytes(int64(len(record)))
	for b.Loop() {
		if !json.Valid(record) {
			b.Fatal()
		}
	}
}
