package revocation

import (
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/testca"
)

// FuzzParseCRL feeds arbitrary bytes to the parse/verify wrapper. The
// committed seeds (testdata/fuzz/FuzzParseCRL) are CRLs of a CA that no
// longer exists, so they exercise parsing and refusal; the seeds added here
// verify, so mutations near a valid signature are explored too.
func FuzzParseCRL(f *testing.F) {
	ca := testca.New(f)
	now := time.Now()
	good := ca.CRL(3, now, now.Add(time.Hour), big.NewInt(0xabc), big.NewInt(1))
	f.Add(good)
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: good}))
	cas := []*x509.Certificate{ca.Cert}
	f.Fuzz(func(t *testing.T, data []byte) {
		crl, err := ParseCRL(data, cas, 1<<20)
		if err != nil {
			if crl != nil {
				t.Fatal("CRL returned with an error")
			}
			return
		}
		if crl.CA != 0 || crl.NextUpdate.Before(crl.ThisUpdate) || crl.Serials == nil {
			t.Fatalf("accepted CRL breaks invariants: %+v", crl)
		}
		// Whatever verified must verify again from its own DER.
		again, err := ParseCRL(crl.Raw, cas, 1<<20)
		if err != nil || len(again.Serials) != len(crl.Serials) {
			t.Fatalf("round trip: %v", err)
		}
		for s := range crl.Serials {
			if s == "" || (len(s) > 1 && s[0] == '0') {
				t.Fatalf("serial %q not in canonical form", s)
			}
		}
	})
}
