package revocation

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The committed FuzzParseCRL seeds are signed by a CA committed beside them
// (testdata/fuzzca), so the seeds named valid-* reach the accepting path of
// ParseCRL and the fuzzer mutates near a good signature. Regenerate them
// (and the CA, if its files are missing) with
//
//	go test ./internal/revocation -run TestFuzzParseCRLSeeds -regenerate-crl-seeds
//
// The CA's key is a test key with no other use.
var regenerateCRLSeeds = flag.Bool("regenerate-crl-seeds", false, "rewrite testdata/fuzz/FuzzParseCRL from testdata/fuzzca")

const (
	fuzzCADir   = "testdata/fuzzca"
	crlSeedsDir = "testdata/fuzz/FuzzParseCRL"
)

// fuzzCA loads the committed seed CA.
func fuzzCA(tb testing.TB) (*x509.Certificate, *ecdsa.PrivateKey) {
	tb.Helper()
	certPEM, err := os.ReadFile(filepath.Join(fuzzCADir, "ca.pem"))
	if err != nil {
		tb.Fatal(err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(fuzzCADir, "ca.key"))
	if err != nil {
		tb.Fatal(err)
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		tb.Fatal("testdata/fuzzca: no PEM block")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		tb.Fatal(err)
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		tb.Fatal(err)
	}
	return cert, key
}

func writeFuzzCA(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "FuzzParseCRL seed CA", Organization: []string{"agentauthz tests"}},
		NotBefore:             time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(2126, 1, 1, 0, 0, 0, 0, time.UTC),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(fuzzCADir, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(fuzzCADir, "ca.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(filepath.Join(fuzzCADir, "ca.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
}

// crlSeeds makes the seed set: CRLs that verify (a few entries, none, many,
// a huge serial, PEM with text around it) and near misses (truncated, a
// flipped signature bit, two CRLs of one CA in one file).
func crlSeeds(t *testing.T, ca *x509.Certificate, key *ecdsa.PrivateKey) map[string][]byte {
	this := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	crl := func(number int64, serials ...*big.Int) []byte {
		tmpl := &x509.RevocationList{Number: big.NewInt(number), ThisUpdate: this, NextUpdate: this.Add(100 * 365 * 24 * time.Hour)}
		for _, s := range serials {
			tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries,
				x509.RevocationListEntry{SerialNumber: s, RevocationTime: this, ReasonCode: 1})
		}
		der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca, key)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	pemOf := func(der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}) }
	two := crl(3, big.NewInt(0xabc), big.NewInt(1))
	var many []*big.Int
	for i := range 64 {
		many = append(many, big.NewInt(int64(1000+i*7919)))
	}
	huge := new(big.Int).Lsh(big.NewInt(1), 158) // a 20-octet serial
	flipped := append([]byte(nil), two...)
	flipped[len(flipped)-3] ^= 1
	return map[string][]byte{
		"valid-der":         two,
		"valid-pem":         pemOf(two),
		"valid-empty":       crl(1),
		"valid-many":        crl(7, many...),
		"valid-huge-serial": crl(9, huge, big.NewInt(0x7f)),
		"valid-pem-in-text": append(append([]byte("Certificate Revocation List (CRL):\n  Version 2 (0x1)\n"), pemOf(crl(4, big.NewInt(2)))...), "trailing text\n"...),
		"truncated":         two[:len(two)/2],
		"flipped-signature": flipped,
		"two-crls-one-ca":   append(pemOf(crl(5, big.NewInt(3))), pemOf(crl(6, big.NewInt(4)))...),
		"garbage":           []byte("-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n"),
		"empty":             {},
	}
}

// TestFuzzParseCRLSeeds checks that every committed valid-* seed verifies
// against the committed CA (and every other seed is refused), or with
// -regenerate-crl-seeds rewrites them.
func TestFuzzParseCRLSeeds(t *testing.T) {
	if *regenerateCRLSeeds {
		if _, err := os.Stat(filepath.Join(fuzzCADir, "ca.key")); err != nil {
			writeFuzzCA(t)
		}
		ca, key := fuzzCA(t)
		old, _ := filepath.Glob(filepath.Join(crlSeedsDir, "*"))
		for _, f := range old {
			os.Remove(f)
		}
		if err := os.MkdirAll(crlSeedsDir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, data := range crlSeeds(t, ca, key) {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%s)\n", strconv.Quote(string(data)))
			if err := os.WriteFile(filepath.Join(crlSeedsDir, name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	ca, _ := fuzzCA(t)
	files, err := filepath.Glob(filepath.Join(crlSeedsDir, "*"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no seeds in %s: %v", crlSeedsDir, err)
	}
	valid := 0
	for _, f := range files {
		data := readSeed(t, f)
		crl, err := ParseCRL(data, []*x509.Certificate{ca}, 1<<20)
		name := filepath.Base(f)
		if strings.HasPrefix(name, "valid-") {
			valid++
			if err != nil {
				t.Errorf("%s does not verify against %s: %v (regenerate: go test ./internal/revocation -run TestFuzzParseCRLSeeds -regenerate-crl-seeds)", name, fuzzCADir, err)
			} else if crl.Serials == nil {
				t.Errorf("%s: no serial set", name)
			}
		} else if err == nil {
			t.Errorf("%s is accepted; name it valid-* or make it a near miss", name)
		}
	}
	if valid < 3 {
		t.Fatalf("%d valid seeds; the accepting path needs several", valid)
	}
}

// readSeed decodes a one-[]byte corpus file ("go test fuzz v1").
func readSeed(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.TrimSpace(string(b))
	body, ok := strings.CutPrefix(s, "go test fuzz v1\n[]byte(")
	if !ok || !strings.HasSuffix(body, ")") {
		t.Fatalf("%s: not a one-[]byte corpus file", path)
	}
	data, err := strconv.Unquote(strings.TrimSuffix(body, ")"))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return []byte(data)
}
