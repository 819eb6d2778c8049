package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/agentauthz/agentauthz/internal/reason"
)

// newTestCA makes a CA certificate with the given validity window, signed by
// parent (self-signed when parent is nil). The same cn gives the same subject,
// which is how a test makes an impostor CA.
func newTestCA(tb testing.TB, cn string, parent *x509.Certificate, parentKey crypto.Signer, notBefore, notAfter time.Time) (*x509.Certificate, crypto.Signer) {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randSerial(tb),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"Test Org"}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		tb.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return c, key
}

// newTestLeaf issues a native agent certificate of example.test under parent
// and returns its DER.
func newTestLeaf(tb testing.TB, parent *x509.Certificate, parentKey crypto.Signer, id string, notBefore, notAfter time.Time, eku ...x509.ExtKeyUsage) []byte {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	if len(eku) == 0 {
		eku = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	u, err := url.Parse("spiffe://example.test/agent/" + id)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: randSerial(tb),
		Subject:      pkix.Name{CommonName: id, OrganizationalUnit: []string{"trust:L2"}},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  eku,
		URIs:         []*url.URL{u},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		tb.Fatal(err)
	}
	return der
}

func randSerial(tb testing.TB) *big.Int {
	tb.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

// A chain that fails only because a CA certificate of the tenant's bundle is
// outside its validity window is certificate_expired or
// certificate_not_yet_valid, naming that CA; any other untrusted chain stays
// untrusted_issuer. Every case but the first is a denial.
func TestCAValidityReasons(t *testing.T) {
	now := time.Now()
	valid := func() (time.Time, time.Time) { return now.Add(-time.Hour), now.Add(24 * time.Hour) }
	expired := func() (time.Time, time.Time) { return now.Add(-48 * time.Hour), now.Add(-24 * time.Hour) }
	future := func() (time.Time, time.Time) { return now.Add(24 * time.Hour), now.Add(48 * time.Hour) }
	ca := func(cn string, parent *x509.Certificate, key crypto.Signer, window func() (time.Time, time.Time)) (*x509.Certificate, crypto.Signer) {
		nb, na := window()
		return newTestCA(t, cn, parent, key, nb, na)
	}
	root, rootKey := ca("tenant root", nil, nil, valid)
	interOK, interOKKey := ca("issuing CA", root, rootKey, valid)
	interOld, interOldKey := ca("issuing CA 2023", root, rootKey, expired)
	interNext, interNextKey := ca("issuing CA 2026", root, rootKey, future)
	oldRoot, oldRootKey := ca("old root", nil, nil, expired)
	underOld, underOldKey := ca("issuing CA under old root", oldRoot, oldRootKey, valid)
	forwardedOld, forwardedOldKey := ca("forwarded CA", root, rootKey, expired)
	other, otherKey := ca("unrelated CA", nil, nil, valid)
	impostor, impostorKey := ca("issuing CA 2023", nil, nil, valid) // the expired CA's name, another key

	f := newFixture(t, func(c *Config) {
		c.Bundles = []Bundle{{TrustDomain: "example.test", Roots: []*x509.Certificate{root, interOK, interOld, interNext, oldRoot}}}
	})
	leaf := func(parent *x509.Certificate, key crypto.Signer, eku ...x509.ExtKeyUsage) string {
		return urlPEM(newTestLeaf(t, parent, key, "bot-1", now.Add(-time.Minute), now.Add(time.Hour), eku...))
	}
	withChain := func(cert string, chain ...*x509.Certificate) *authv3.AttributeContext {
		var pems []byte
		for _, c := range chain {
			pems = append(pems, pemCert(c.Raw)...)
		}
		return xfccAttrs(`Cert="` + cert + `";Chain="` + url.QueryEscape(string(pems)) + `"`)
	}
	expiredLeaf := urlPEM(newTestLeaf(t, interOld, interOldKey, "bot-1", now.Add(-2*time.Hour), now.Add(-time.Minute)))
	rfc := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }

	tests := []struct {
		name   string
		attrs  *authv3.AttributeContext
		want   reason.Code // "" means allowed
		detail []string    // substrings of the error detail
	}{
		{"valid chain through a bundle intermediate", peerAttrs(leaf(interOK, interOKKey)), "", nil},
		{"expired intermediate", peerAttrs(leaf(interOld, interOldKey)), reason.CertificateExpired,
			[]string{`"issuing CA 2023"`, "expired at " + rfc(interOld.NotAfter)}},
		{"not yet valid intermediate", peerAttrs(leaf(interNext, interNextKey)), reason.CertificateNotYetValid,
			[]string{`"issuing CA 2026"`, "not valid before " + rfc(interNext.NotBefore)}},
		{"expired root", peerAttrs(leaf(oldRoot, oldRootKey)), reason.CertificateExpired,
			[]string{`"old root"`, "expired at " + rfc(oldRoot.NotAfter)}},
		{"expired root above a forwarded intermediate", withChain(leaf(underOld, underOldKey), underOld), reason.CertificateExpired,
			[]string{`"old root"`, "expired at " + rfc(oldRoot.NotAfter)}},
		{"expired root, intermediate missing", peerAttrs(leaf(underOld, underOldKey)), reason.UntrustedIssuer, nil},
		{"unrelated untrusted CA", peerAttrs(leaf(other, otherKey)), reason.UntrustedIssuer, nil},
		{"untrusted CA named like the expired intermediate", peerAttrs(leaf(impostor, impostorKey)), reason.UntrustedIssuer, nil},
		{"untrusted CA forwarding the expired intermediate", withChain(leaf(impostor, impostorKey), interOld), reason.UntrustedIssuer, nil},
		// Only the tenant's bundle is judged this way: a forwarded
		// intermediate that is out of its window is not a trust anchor.
		{"expired forwarded intermediate", withChain(leaf(forwardedOld, forwardedOldKey), forwardedOld), reason.UntrustedIssuer, nil},
		{"expired leaf under expired intermediate: the leaf is named", peerAttrs(expiredLeaf), reason.CertificateExpired,
			[]string{"certificate expired at " + rfc(now.Add(-time.Minute))}},
		{"wrong EKU under expired intermediate: validity first", peerAttrs(leaf(interOld, interOldKey, x509.ExtKeyUsageServerAuth)), reason.CertificateExpired,
			[]string{`"issuing CA 2023"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, e := f.v.Identify(tt.attrs)
			if tt.want == "" {
				wantAgent(t, a, e)
				return
			}
			e = wantReason(t, a, e, tt.want)
			if len(e.CertSHA256) != 64 || e.Subject == "" {
				t.Fatalf("error lacks the leaf's details: %+v", e)
			}
			for _, d := range tt.detail {
				if !strings.Contains(e.Err.Error(), d) {
					t.Fatalf("detail %q lacks %q", e.Err, d)
				}
			}
		})
	}
	if n := f.v.state.Load().cache.len(); n != 1 {
		t.Fatalf("cache holds %d entries, want only the valid chain's", n)
	}
}

// The second verification is reserved for leaves whose issuer names lead to
// an out-of-window certificate of the bundle: for an unrelated CA the walk
// finds nothing, and staleCA returns before verifying again.
func TestIssuersInBundle(t *testing.T) {
	now := time.Now()
	root, rootKey := newTestCA(t, "tenant root", nil, nil, now.Add(-time.Hour), now.Add(time.Hour))
	inter, interKey := newTestCA(t, "issuing CA", root, rootKey, now.Add(-48*time.Hour), now.Add(-24*time.Hour))
	spare, _ := newTestCA(t, "spare root", nil, nil, now.Add(-time.Hour), now.Add(time.Hour))
	other, otherKey := newTestCA(t, "unrelated CA", nil, nil, now.Add(-time.Hour), now.Add(time.Hour))
	forwarded, forwardedKey := newTestCA(t, "forwarded CA", inter, interKey, now.Add(-time.Hour), now.Add(time.Hour))
	bundle := []*x509.Certificate{spare, inter, root}
	leafOf := func(parent *x509.Certificate, key crypto.Signer) *x509.Certificate {
		return mustParse(t, newTestLeaf(t, parent, key, "bot-1", now.Add(-time.Minute), now.Add(time.Hour)))
	}

	tests := []struct {
		name   string
		leaf   *x509.Certificate
		inters []*x509.Certificate
		want   []*x509.Certificate
	}{
		{"unrelated CA", leafOf(other, otherKey), nil, nil},
		{"unrelated CA, forwarding the root", leafOf(other, otherKey), []*x509.Certificate{root}, nil},
		{"bundle intermediate, then its root", leafOf(inter, interKey), nil, []*x509.Certificate{inter, root}},
		{"through a forwarded intermediate", leafOf(forwarded, forwardedKey), []*x509.Certificate{forwarded}, []*x509.Certificate{inter, root}},
		{"forwarded intermediate missing", leafOf(forwarded, forwardedKey), nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := issuersInBundle(tt.leaf, tt.inters, bundle); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %v, want %v", subjects(got), subjects(tt.want))
			}
		})
	}
	tb := &trustBundle{Bundle: Bundle{TrustDomain: "example.test", Roots: bundle}}
	opts := x509.VerifyOptions{CurrentTime: now}
	if code, err := staleCA(tb, leafOf(other, otherKey), nil, opts); code != "" || err != nil {
		t.Fatalf("unrelated CA: %s %v", code, err)
	}
	if code, err := staleCA(tb, leafOf(inter, interKey), nil, opts); code != reason.CertificateExpired || err == nil {
		t.Fatalf("expired intermediate: %s %v", code, err)
	}
}

func subjects(cs []*x509.Certificate) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Subject.CommonName)
	}
	return out
}
