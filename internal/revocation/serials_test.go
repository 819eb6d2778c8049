package revocation

import (
	"crypto/x509"
	"math/big"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/identity"
	"github.com/agentauthz/agentauthz/internal/reason"
	"github.com/agentauthz/agentauthz/internal/testca"
)

func hexInt(t testing.TB, s string) *big.Int {
	t.Helper()
	v, ok := new(big.Int).SetString(s, 16)
	if !ok {
		t.Fatalf("bad hex %q", s)
	}
	return v
}

// edgeSerials are serials at every boundary of the compact representation.
func edgeSerials(t testing.TB) []*big.Int {
	return []*big.Int{
		big.NewInt(0),
		big.NewInt(1),
		big.NewInt(0x7f),
		big.NewInt(0x80),                    // DER 00 80
		big.NewInt(0xff),                    // DER 00 ff; DER ff alone is -1
		hexInt(t, "100"),                    // odd number of hex digits
		hexInt(t, strings.Repeat("ff", 20)), // largest compact: 20 bytes (DER 21 with 00)
		hexInt(t, "7f"+strings.Repeat("ff", 19)),
		hexInt(t, "1"+strings.Repeat("00", 20)), // 2^160: 21 bytes
		hexInt(t, strings.Repeat("ab", 32)),     // 32 bytes
		big.NewInt(-1),                          // negative: x509 accepts them in CRLs
		big.NewInt(-0xff),
		hexInt(t, "-"+strings.Repeat("ff", 20)),
	}
}

func TestSerialSetEdges(t *testing.T) {
	serials := edgeSerials(t)
	want := map[string]bool{}
	for _, s := range serials {
		want[s.Text(16)] = true
	}
	// Duplicates and nil entries change nothing.
	set := NewSerialSet(append(serials, nil, big.NewInt(0xff), hexInt(t, strings.Repeat("ff", 20)), big.NewInt(-1))...)
	checkSerialSet(t, set, want)

	for _, absent := range []string{
		"", "00", "0ff", "00ff", "FF", "0xff", "fe", "2", "-0", "-2", "-", "g", "ff ",
		strings.Repeat("ff", 19), strings.Repeat("ff", 20) + "0", "ff" + strings.Repeat("00", 19),
		"1" + strings.Repeat("00", 19) + "1", strings.Repeat("ab", 31),
		"80" + strings.Repeat("00", 19), // same low 20 bytes as 2^160, one bit higher
	} {
		if set.Contains(absent) {
			t.Errorf("Contains(%q) = true", absent)
		}
	}
}

func TestSerialSetWidth(t *testing.T) {
	// A set of short serials has narrow keys; longer lookups miss.
	set := NewSerialSet(big.NewInt(0xab), big.NewInt(0))
	if set.width != 1 {
		t.Errorf("width = %d, want 1", set.width)
	}
	for s, want := range map[string]bool{"ab": true, "0": true, "1ab": false, "abab": false, "ab00": false} {
		if set.Contains(s) != want {
			t.Errorf("Contains(%q) = %v", s, !want)
		}
	}
	// Only zero: still one byte wide.
	if set := NewSerialSet(big.NewInt(0)); set.width != 1 || !set.Contains("0") || set.Contains("1") || set.Len() != 1 {
		t.Errorf("zero-only set: width %d len %d", set.width, set.Len())
	}
	// Only oversized and negative serials: no compact table at all.
	set = NewSerialSet(big.NewInt(-5), hexInt(t, strings.Repeat("11", 21)))
	if set.width != 0 || set.Len() != 2 || !set.Contains("-5") || !set.Contains(strings.Repeat("11", 21)) || set.Contains("5") {
		t.Errorf("fallback-only set: width %d len %d", set.width, set.Len())
	}
}

func TestSerialSetEmpty(t *testing.T) {
	var none *SerialSet
	for _, set := range []*SerialSet{none, NewSerialSet(), NewSerialSet(nil)} {
		if set.Len() != 0 || set.Contains("0") || set.Contains("1") || set.Contains("-1") {
			t.Errorf("empty set %+v reports members", set)
		}
		for s := range set.All() {
			t.Errorf("empty set yields %q", s)
		}
	}
}

func TestSerialSetMany(t *testing.T) {
	serials := randomSerials(50_000)
	set := NewSerialSet(serials...)
	if set.Len() != len(serials) {
		t.Fatalf("Len = %d, want %d", set.Len(), len(serials))
	}
	for _, s := range serials {
		if !set.Contains(s.Text(16)) {
			t.Fatalf("%s missing", s.Text(16))
		}
		if set.Contains(new(big.Int).Add(s, big.NewInt(1)).Text(16)) {
			// Consecutive random serials are as good as impossible.
			t.Fatalf("%s+1 found", s.Text(16))
		}
	}
}

// TestParseCRLEdgeSerials takes the edge serials through a signed CRL and
// the Checker: what x509 parses from the DER is what is revoked.
func TestParseCRLEdgeSerials(t *testing.T) {
	ca := testca.New(t)
	now := time.Now()
	serials := edgeSerials(t)
	der := ca.CRL(1, now, now.Add(time.Hour), append(serials, big.NewInt(0xff))...)
	crl, err := ParseCRL(der, []*x509.Certificate{ca.Cert}, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, s := range serials {
		want[s.Text(16)] = true
	}
	checkSerialSet(t, crl.Serials, want)

	c, ca := benchChecker(t, 0)
	c.mu.Lock()
	c.tenants[td].held[heldKey{ca: identity.CAKeyOf(ca.Cert)}].Serials = crl.Serials
	c.tenants[td].snap = nil
	c.publishLocked()
	c.mu.Unlock()
	for s := range want {
		if got := c.Check(td, issuedBy(ca, s), "bot"); got != reason.CertificateRevoked {
			t.Errorf("Check(%q) = %q", s, got)
		}
	}
	for _, s := range []string{"2", "00ff", "fe", "-2"} {
		if got := c.Check(td, issuedBy(ca, s), "bot"); got != "" {
			t.Errorf("Check(%q) = %q", s, got)
		}
	}
}

// TestSerialSetRejectsEveryOtherByte replaces each digit of members, in
// every position the decoder treats differently (odd first digit, eight-digit
// groups, trailing pairs), by every byte that is not a lowercase hex digit.
func TestSerialSetRejectsEveryOtherByte(t *testing.T) {
	members := []string{"0", "a", "1f", "abc", "deadbeef", "123456789", "fedcba9876543210",
		"5c1e0f3a9d2b7e4411a0c3d5e6f70819", "1" + strings.Repeat("0a", 19), strings.Repeat("f9", 20)}
	var serials []*big.Int
	for _, m := range members {
		serials = append(serials, hexInt(t, m))
	}
	set := NewSerialSet(serials...)
	for _, m := range members {
		if !set.Contains(m) {
			t.Fatalf("%q missing", m)
		}
		for i := range len(m) {
			for c := range 256 {
				if strings.IndexByte(hexDigits, byte(c)) >= 0 {
					continue
				}
				q := m[:i] + string([]byte{byte(c)}) + m[i+1:]
				if set.Contains(q) {
					t.Errorf("Contains(%q) = true (member %q)", q, m)
				}
			}
		}
	}
}

// TestKeyText checks the key-to-hex conversions against big.Int.Text on
// keys of every width with every number of leading zero bytes and nibbles.
func TestKeyText(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for w := 1; w <= maxCompactSerial; w++ {
		for zeros := 0; zeros <= 2*w; zeros++ {
			key := make([]byte, w)
			for i := range key {
				key[i] = byte(r.Uint32())
			}
			// Clear the leading zeros nibbles, and make the next one
			// non-zero.
			for i := 0; i < zeros; i++ {
				key[i/2] &= 0x0f << (4 * (i % 2))
			}
			if zeros < 2*w && key[zeros/2]>>(4*(1-zeros%2))&0xf == 0 {
				key[zeros/2] |= 1 << (4 * (1 - zeros%2))
			}
			want := new(big.Int).SetBytes(key).Text(16)
			if got := string(appendKeyText(nil, key)); got != want {
				t.Fatalf("appendKeyText(%x) = %q, want %q", key, got, want)
			}
			if !keyTextIs(key, want) {
				t.Fatalf("keyTextIs(%x, %q) = false", key, want)
			}
			for _, other := range []string{"0" + want, want + "0", want[1:], strings.ToUpper(want), "x" + want[1:]} {
				if other != want && keyTextIs(key, other) {
					t.Fatalf("keyTextIs(%x, %q) = true", key, other)
				}
			}
		}
	}
}
