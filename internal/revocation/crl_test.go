package revocation

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"testing/iotest"
	"time"

	"github.com/agentauthz/agentauthz/internal/testca"
)

func TestParseCRL(t *testing.T) {
	ca := testca.New(t)
	other := testca.NewDomain(t, "other.test")
	now := time.Now()
	good := ca.CRL(7, now, now.Add(time.Hour), big.NewInt(0x1a2b), big.NewInt(5))
	tampered := append([]byte(nil), good...)
	tampered[len(tampered)/2] ^= 0x01 // inside the signed TBS (the serial list)
	badSig := append([]byte(nil), good...)
	badSig[len(badSig)-3] ^= 0x01 // inside the signature value

	// Same subject as ca, different key: the name check alone must not do.
	impostor := testca.NewDomain(t, "example.test")

	cases := []struct {
		name string
		data []byte
		max  int64
		want error
	}{
		{"good", good, 0, nil},
		{"pem", pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: good}), 0, nil},
		{"pem wrong type", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: good}), 0, ErrCRLInvalid},
		{"tampered tbs", tampered, 0, nil /* set below: either refusal is right */},
		{"tampered signature", badSig, 0, ErrCRLSignature},
		{"other tenant's ca", other.CRL(7, now, now.Add(time.Hour)), 0, ErrCRLSignature},
		{"same name other key", impostor.CRL(7, now, now.Add(time.Hour)), 0, ErrCRLSignature},
		{"garbage", []byte("not a crl"), 0, ErrCRLInvalid},
		{"empty", nil, 0, ErrCRLInvalid},
		{"too large", good, int64(len(good) - 1), ErrCRLTooLarge},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			crl, err := ParseCRL(tc.data, []*x509.Certificate{ca.Cert}, tc.max)
			if tc.name == "tampered tbs" {
				if err == nil {
					t.Fatal("tampered CRL accepted")
				}
				if !errors.Is(err, ErrCRLSignature) && !errors.Is(err, ErrCRLInvalid) {
					t.Fatalf("err = %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if tc.want != nil {
				return
			}
			if crl.Number.Int64() != 7 || crl.CA != 0 {
				t.Errorf("number %v ca %d", crl.Number, crl.CA)
			}
			for _, s := range []string{"1a2b", "5"} {
				if !crl.Serials.Contains(s) {
					t.Errorf("serial %s missing from %v", s, slices.Collect(crl.Serials.All()))
				}
			}
		})
	}
}

func TestParseCRLSecondCA(t *testing.T) {
	old, cur := testca.New(t), testca.New(t)
	now := time.Now()
	crl, err := ParseCRL(cur.CRL(1, now, now.Add(time.Hour)), []*x509.Certificate{old.Cert, cur.Cert}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if crl.CA != 1 {
		t.Errorf("CA = %d, want 1", crl.CA)
	}
}

func TestNewerThan(t *testing.T) {
	now := time.Now()
	mk := func(n int64, this time.Time) *CRL {
		c := &CRL{ThisUpdate: this}
		if n >= 0 {
			c.Number = big.NewInt(n)
		}
		return c
	}
	cases := []struct {
		name      string
		cur, held *CRL
		ok        bool
	}{
		{"nothing held", mk(1, now), nil, true},
		{"higher number", mk(2, now.Add(-time.Hour)), mk(1, now), true},
		{"lower number", mk(1, now.Add(time.Hour)), mk(2, now), false},
		{"same number same time", mk(2, now), mk(2, now), true},
		{"same number older", mk(2, now.Add(-time.Second)), mk(2, now), false},
		{"no numbers newer", mk(-1, now), mk(-1, now.Add(-time.Second)), true},
		{"no numbers older", mk(-1, now.Add(-time.Second)), mk(-1, now), false},
	}
	for _, tc := range cases {
		err := tc.cur.newerThan(tc.held)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrCRLOlder)) {
			t.Errorf("%s: err = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

// shortReader returns at most n bytes per Read, like a network body.
type shortReader struct {
	r io.Reader
	n int
}

func (s shortReader) Read(p []byte) (int, error) { return s.r.Read(p[:min(len(p), s.n)]) }

func TestReadLimited(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	n := int64(len(data))
	cases := []struct {
		name      string
		max, size int64
		want      error
	}{
		{"unknown size", n, -1, nil},
		{"exact size", n, n, nil},
		{"size understated", n, n / 3, nil},        // a file that grew after its Stat
		{"size overstated", n + 100, n + 100, nil}, // a file that shrank after its Stat
		{"empty size", n, 0, nil},
		{"unknown size, over max", n - 1, -1, ErrCRLTooLarge},
		{"size over max", n - 1, n, ErrCRLTooLarge},
		{"size understated, over max", n - 1, 10, ErrCRLTooLarge},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readLimited(shortReader{bytes.NewReader(data), 1000}, tc.max, tc.size)
			if !errors.Is(err, tc.want) || tc.want == nil && err != nil {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if err == nil && !bytes.Equal(got, data) {
				t.Fatalf("read %d bytes, not the %d written", len(got), len(data))
			}
		})
	}
	// A reader error is returned as it is.
	broken := io.MultiReader(bytes.NewReader(data[:10]), iotest.ErrReader(io.ErrUnexpectedEOF))
	if _, err := readLimited(broken, n, n); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("err = %v", err)
	}
	// A regular file is read with its size.
	path := filepath.Join(t.TempDir(), "ca.crl")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := readFileLimited(path, n); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("readFileLimited: %d bytes, %v", len(got), err)
	}
	if _, err := readFileLimited(path, n-1); !errors.Is(err, ErrCRLTooLarge) {
		t.Fatalf("readFileLimited over max: %v", err)
	}
}

// TestReadLimitedAllocatesOnce checks that a CRL of known size is read into
// one buffer of its size, where io.ReadAll allocates about twice it.
// Allocation is deterministic up to the odd runtime allocation; the least
// of three runs is taken.
func TestReadLimitedAllocatesOnce(t *testing.T) {
	data := make([]byte, 8<<20)
	n := int64(len(data))
	alloc := func(size int64) uint64 {
		least := uint64(1 << 63)
		for range 3 {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			b, err := readLimited(shortReader{bytes.NewReader(data), 64 << 10}, DefaultMaxCRLBytes, size)
			runtime.ReadMemStats(&after)
			if err != nil || len(b) != len(data) {
				t.Fatalf("%d bytes, %v", len(b), err)
			}
			least = min(least, after.TotalAlloc-before.TotalAlloc)
		}
		return least
	}
	known, unknown := alloc(n), alloc(-1)
	t.Logf("reading %d bytes allocated %d bytes with the size known, %d without", n, known, unknown)
	if known > uint64(n)+uint64(n)/16 {
		t.Errorf("size known: allocated %d bytes for %d", known, n)
	}
}
