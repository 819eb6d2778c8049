package revocation

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"slices"
	"testing"
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
