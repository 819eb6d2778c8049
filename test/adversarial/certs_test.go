package adversarial

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"testing"

	"github.com/agentauthz/agentauthz/internal/testca"
)

// agentSpec is one of the catalogue's agents, all issued by the trusted CA.
type agentSpec struct {
	id     string
	trust  int
	scopes []string
	owner  string
}

// catalogueAgents are the identities requests are made with. admin is the
// identity forged elements try to borrow.
func catalogueAgents() map[string]agentSpec {
	return map[string]agentSpec{
		"reader":  {id: "reader", trust: 1, scopes: []string{"payments:read"}, owner: "payments-team"},
		"payer":   {id: "payer", trust: 3, scopes: []string{"payments:initiate", "payments:read"}, owner: "payments-team"},
		"noowner": {id: "noowner", trust: 2, scopes: []string{"payments:read"}},
		"admin":   {id: "admin", trust: 4, scopes: []string{"payments:initiate", "payments:read", "merchants:onboard", "loans:repay", "sanctions:screen"}, owner: "root"},
	}
}

func issueSpec(ca *testca.CA, a agentSpec, extra ...testca.Option) *testca.Leaf {
	opts := []testca.Option{testca.Trust(a.trust), testca.Scopes(a.scopes...)}
	if a.owner != "" {
		opts = append(opts, testca.Owner(a.owner))
	}
	return ca.Issue(a.id, append(opts, extra...)...)
}

func pemOf(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// crossSign returns subject's CA certificate re-issued (same subject, same
// key) by issuer: one half of a cross-signing pair.
func crossSign(t *testing.T, subject, issuer *testca.CA) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          subject.Cert.SerialNumber,
		Subject:               subject.Cert.Subject,
		NotBefore:             subject.Cert.NotBefore,
		NotAfter:              subject.Cert.NotAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		SubjectKeyId:          subject.Cert.SubjectKeyId,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer.Cert, subject.Cert.PublicKey, issuer.Key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// withSerial re-encodes leaf with the given raw INTEGER content as its
// serial number and signs it again with ca's key. crypto/x509 refuses to
// create such certificates (negative, or longer than 20 octets), so the
// TBSCertificate is edited at the DER level.
func withSerial(t *testing.T, ca *testca.CA, leaf *x509.Certificate, serial []byte) []byte {
	t.Helper()
	var outer struct {
		TBS asn1.RawValue
		Alg asn1.RawValue
		Sig asn1.BitString
	}
	if _, err := asn1.Unmarshal(leaf.Raw, &outer); err != nil {
		t.Fatal(err)
	}
	var tbs asn1.RawValue
	if _, err := asn1.Unmarshal(outer.TBS.FullBytes, &tbs); err != nil {
		t.Fatal(err)
	}
	var elems [][]byte
	for rest := tbs.Bytes; len(rest) > 0; {
		var el asn1.RawValue
		var err error
		if rest, err = asn1.Unmarshal(rest, &el); err != nil {
			t.Fatal(err)
		}
		elems = append(elems, el.FullBytes)
	}
	// elems[0] is the explicit [0] version, elems[1] the serial.
	ser, err := asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagInteger, Bytes: serial})
	if err != nil {
		t.Fatal(err)
	}
	elems[1] = ser
	var body []byte
	for _, e := range elems {
		body = append(body, e...)
	}
	newTBS, err := asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSequence, IsCompound: true, Bytes: body})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(newTBS)
	sig, err := ecdsa.SignASN1(rand.Reader, ca.Key.(*ecdsa.PrivateKey), sum[:])
	if err != nil {
		t.Fatal(err)
	}
	sigBits, err := asn1.Marshal(asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)})
	if err != nil {
		t.Fatal(err)
	}
	cert := append(append(append([]byte(nil), newTBS...), outer.Alg.FullBytes...), sigBits...)
	der, err := asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSequence, IsCompound: true, Bytes: cert})
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// manyScopes is n distinct valid scope names.
func manyScopes(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("res%d:read", i)
	}
	return out
}
