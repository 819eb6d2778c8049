// Package testca is an in-memory certificate authority for tests. It issues
// native-profile agent certificates and, through options, every kind of
// broken certificate a test needs. Nothing it makes is ever written to the
// repository.
package testca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// CA is a test root CA for one trust domain.
type CA struct {
	t           testing.TB
	TrustDomain string
	Cert        *x509.Certificate
	Key         crypto.Signer
	serial      atomic.Int64
}

// New creates a CA for trust domain "example.test".
func New(t testing.TB) *CA { return NewDomain(t, "example.test") }

// NewDomain creates a CA for the given trust domain.
func NewDomain(t testing.TB, trustDomain string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: trustDomain + " test CA", Organization: []string{"Test Org"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &CA{t: t, TrustDomain: trustDomain, Cert: cert, Key: key}
	ca.serial.Store(1000)
	return ca
}

// PEM is the CA certificate in PEM form.
func (ca *CA) PEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// WriteBundle writes the CA certificate to a file in a temporary directory and
// returns its path.
func (ca *CA) WriteBundle() string {
	ca.t.Helper()
	p := filepath.Join(ca.t.TempDir(), "bundle.pem")
	if err := os.WriteFile(p, ca.PEM(), 0o644); err != nil {
		ca.t.Fatal(err)
	}
	return p
}

// Leaf is an issued certificate and its key.
type Leaf struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// PEM is the leaf certificate in PEM form.
func (l *Leaf) PEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: l.Cert.Raw})
}

// KeyPEM is the leaf's private key in PKCS#8 PEM form.
func (l *Leaf) KeyPEM() []byte {
	der, err := x509.MarshalPKCS8PrivateKey(l.Key)
	if err != nil {
		panic(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// URLEncodedPEM is the leaf PEM as Envoy puts it in XFCC Cert= and in
// attributes.source.certificate.
func (l *Leaf) URLEncodedPEM() string { return url.QueryEscape(string(l.PEM())) }

// Option changes the certificate template before signing.
type Option func(*x509.Certificate, *issueOpts)

type issueOpts struct {
	ed25519 bool
}

// Trust sets the single trust OU (default L2).
func Trust(level int) Option {
	return func(c *x509.Certificate, _ *issueOpts) {
		c.Subject.OrganizationalUnit = replaceTrust(c.Subject.OrganizationalUnit, fmt.Sprintf("trust:L%d", level))
	}
}

// Scopes adds scope OUs.
func Scopes(scopes ...string) Option {
	return func(c *x509.Certificate, _ *issueOpts) {
		for _, s := range scopes {
			c.Subject.OrganizationalUnit = append(c.Subject.OrganizationalUnit, "scope:"+s)
		}
	}
}

// Owner sets the owner OU.
func Owner(owner string) Option {
	return func(c *x509.Certificate, _ *issueOpts) {
		c.Subject.OrganizationalUnit = append(c.Subject.OrganizationalUnit, "owner:"+owner)
	}
}

// OUs replaces every OU with the given raw values.
func OUs(ous ...string) Option {
	return func(c *x509.Certificate, _ *issueOpts) { c.Subject.OrganizationalUnit = ous }
}

// CN overrides the subject common name.
func CN(cn string) Option {
	return func(c *x509.Certificate, _ *issueOpts) { c.Subject.CommonName = cn }
}

// URIs replaces the URI SANs.
func URIs(uris ...string) Option {
	return func(c *x509.Certificate, _ *issueOpts) {
		c.URIs = nil
		for _, u := range uris {
			parsed, err := url.Parse(u)
			if err != nil {
				panic(err)
			}
			c.URIs = append(c.URIs, parsed)
		}
	}
}

// Validity sets the validity window.
func Validity(notBefore, notAfter time.Time) Option {
	return func(c *x509.Certificate, _ *issueOpts) { c.NotBefore, c.NotAfter = notBefore, notAfter }
}

// EKU replaces the extended key usages.
func EKU(usages ...x509.ExtKeyUsage) Option {
	return func(c *x509.Certificate, _ *issueOpts) { c.ExtKeyUsage = usages }
}

// Ed25519 issues an Ed25519 key instead of P-256.
func Ed25519() Option {
	return func(_ *x509.Certificate, o *issueOpts) { o.ed25519 = true }
}

// Template gives raw access to the template, for anything else.
func Template(f func(*x509.Certificate)) Option {
	return func(c *x509.Certificate, _ *issueOpts) { f(c) }
}

// Issue issues a native-profile agent certificate for agentID, trust L2 and no
// scopes unless options say otherwise.
func (ca *CA) Issue(agentID string, opts ...Option) *Leaf {
	ca.t.Helper()
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(ca.serial.Add(1)),
		Subject: pkix.Name{
			CommonName:         agentID,
			Organization:       []string{"Test Org"},
			OrganizationalUnit: []string{"trust:L2"},
		},
		NotBefore:   now.Add(-time.Minute),
		NotAfter:    now.Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	u, err := url.Parse("spiffe://" + ca.TrustDomain + "/agent/" + agentID)
	if err != nil {
		ca.t.Fatal(err)
	}
	tmpl.URIs = []*url.URL{u}
	var o issueOpts
	for _, opt := range opts {
		opt(tmpl, &o)
	}
	var key crypto.Signer
	if o.ed25519 {
		_, key, err = ed25519.GenerateKey(rand.Reader)
	} else {
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		ca.t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		ca.t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		ca.t.Fatal(err)
	}
	return &Leaf{Cert: cert, Key: key}
}

// CRL returns a DER CRL revoking the given serials, signed by the CA.
func (ca *CA) CRL(number int64, thisUpdate, nextUpdate time.Time, serials ...*big.Int) []byte {
	ca.t.Helper()
	tmpl := &x509.RevocationList{
		Number:     big.NewInt(number),
		ThisUpdate: thisUpdate,
		NextUpdate: nextUpdate,
	}
	for _, s := range serials {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries,
			x509.RevocationListEntry{SerialNumber: s, RevocationTime: thisUpdate, ReasonCode: 1})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.Key)
	if err != nil {
		ca.t.Fatal(err)
	}
	return der
}

func replaceTrust(ous []string, trust string) []string {
	out := ous[:0:0]
	for _, ou := range ous {
		if len(ou) < 6 || ou[:6] != "trust:" {
			out = append(out, ou)
		}
	}
	return append(out, trust)
}
