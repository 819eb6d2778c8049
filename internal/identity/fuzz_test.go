package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/testca"
)

var updateFuzzSeeds = flag.Bool("update-fuzz-seeds", false, "rewrite the committed seed corpora under testdata/fuzz")

func FuzzParseXFCC(f *testing.F) {
	f.Fuzz(func(t *testing.T, header string) {
		els, err := ParseXFCC(header)
		last, ok, lerr := lastXFCCElement(header)
		if (err == nil) != (lerr == nil) {
			t.Fatalf("ParseXFCC err %v, lastXFCCElement err %v", err, lerr)
		}
		if err != nil {
			if !errors.Is(err, ErrMalformedXFCC) {
				t.Fatalf("error %v does not wrap ErrMalformedXFCC", err)
			}
			return
		}
		if len(els) > MaxXFCCElements || len(header) > MaxXFCCBytes {
			t.Fatalf("limits not enforced: %d elements, %d bytes", len(els), len(header))
		}
		if ok != (len(els) > 0) {
			t.Fatalf("lastXFCCElement ok=%v with %d elements", ok, len(els))
		}
		if ok && !reflect.DeepEqual(normEl(last), normEl(els[len(els)-1])) {
			t.Fatalf("last element differs:\n%#v\n%#v", last, els[len(els)-1])
		}
		// Round trip through Envoy's quoting. A value ending in a backslash
		// cannot be written unambiguously in Envoy's escaping, so skip those.
		for _, el := range els {
			if xfccAmbiguous(el) {
				return
			}
		}
		enc := encodeXFCC(els)
		if len(enc) > MaxXFCCBytes {
			return
		}
		again, err := ParseXFCC(enc)
		if err != nil {
			t.Fatalf("re-parse of %q: %v", enc, err)
		}
		if !reflect.DeepEqual(normEls(again), normEls(els)) {
			t.Fatalf("round trip changed elements:\n%#v\n%#v", els, again)
		}
	})
}

func xfccAmbiguous(el XFCCElement) bool {
	vals := append(append(append([]string{el.Hash, el.Cert, el.Chain, el.Subject}, el.By...), el.URI...), el.DNS...)
	if len(vals) > MaxXFCCPairsPerElt {
		return true // the encoder always writes Hash, one pair more
	}
	for _, v := range vals {
		if strings.HasSuffix(v, `\`) {
			return true
		}
	}
	return false
}

// fuzzSigner is a CA and one leaf key shared by every fuzz iteration, so an
// iteration costs one signature, not three key generations.
type fuzzSigner struct {
	ca  *testca.CA
	key *ecdsa.PrivateKey
}

func newFuzzSigner(f *testing.F) *fuzzSigner {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	return &fuzzSigner{ca: testca.New(f), key: key}
}

func (s *fuzzSigner) sign(tmpl *x509.Certificate) *x509.Certificate {
	tmpl.SerialNumber = big.NewInt(77)
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Minute), time.Now().Add(time.Hour)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.ca.Cert, &s.key.PublicKey, s.ca.Key)
	if err != nil {
		return nil // e.g. a string that is not valid UTF-8
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil
	}
	return c
}

// FuzzParseNative builds a certificate from fuzzed subject and SAN fields and
// checks that whatever ParseNative accepts satisfies the native profile.
func FuzzParseNative(f *testing.F) {
	s := newFuzzSigner(f)
	f.Fuzz(func(t *testing.T, cn, ous, uri string, clientAuth bool) {
		tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: cn}, KeyUsage: x509.KeyUsageDigitalSignature}
		if ous != "" {
			tmpl.Subject.OrganizationalUnit = strings.Split(ous, "\n")
		}
		if u, err := url.Parse(uri); err == nil && uri != "" {
			tmpl.URIs = []*url.URL{u}
		}
		if clientAuth {
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		}
		c := s.sign(tmpl)
		if c == nil {
			return
		}
		a, err := ParseNative(c, "example.test")
		if err != nil {
			if !errors.Is(err, ErrInvalidProfile) {
				t.Fatalf("error %v does not wrap ErrInvalidProfile", err)
			}
			return
		}
		if !ValidAgentID(a.ID) || a.ID != c.Subject.CommonName || a.SPIFFEID != "spiffe://example.test/agent/"+a.ID {
			t.Fatalf("bad identity %+v", a)
		}
		if len(c.URIs) != 1 || c.URIs[0].String() != a.SPIFFEID || !clientAuth {
			t.Fatalf("accepted URIs %v clientAuth %v", c.URIs, clientAuth)
		}
		trusts := 0
		for _, ou := range c.Subject.OrganizationalUnit {
			if strings.HasPrefix(ou, "trust:") {
				trusts++
			}
		}
		if trusts != 1 || a.TrustLevel < 0 || a.TrustLevel > 4 || a.TrustLabel() != strings.TrimPrefix(findOU(c, "trust:"), "trust:") {
			t.Fatalf("trust %d from OUs %q", a.TrustLevel, c.Subject.OrganizationalUnit)
		}
		checkScopes(t, a.Scopes, ValidScope)
		if a.Owner != "" && !ValidOwner(a.Owner) {
			t.Fatalf("owner %q", a.Owner)
		}
	})
}

// FuzzParseAgentPass builds a certificate with fuzzed CN and raw AgentPass
// extension values (empty means absent) and checks what ParseAgentPass
// accepts.
func FuzzParseAgentPass(f *testing.F) {
	s := newFuzzSigner(f)
	f.Fuzz(func(t *testing.T, cn string, trust, scopes, issuer []byte, critical bool) {
		tmpl := &x509.Certificate{
			Subject:     pkix.Name{CommonName: cn},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}
		for _, e := range []struct {
			oid asn1.ObjectIdentifier
			val []byte
		}{{oidAgentPassTrust(), trust}, {oidAgentPassScopes(), scopes}, {oidAgentPassIssuer(), issuer}} {
			if len(e.val) > 0 {
				tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, pkix.Extension{Id: e.oid, Value: e.val, Critical: critical})
			}
		}
		c := s.sign(tmpl)
		if c == nil {
			return
		}
		a, err := ParseAgentPass(c, "ap.test")
		if err != nil {
			if !errors.Is(err, ErrInvalidProfile) {
				t.Fatalf("error %v does not wrap ErrInvalidProfile", err)
			}
			return
		}
		if critical || len(trust) == 0 || len(scopes) == 0 || len(issuer) == 0 {
			t.Fatalf("accepted critical=%v or a missing extension", critical)
		}
		if !ValidAgentID(a.ID) || !strings.HasSuffix(cn, " ("+a.ID+")") || a.SPIFFEID != "spiffe://ap.test/agent/"+a.ID {
			t.Fatalf("bad identity %+v from CN %q", a, cn)
		}
		tv, err := decodeWrappedUTF8(trust)
		if err != nil || tv != a.TrustLabel() {
			t.Fatalf("trust %d from %x", a.TrustLevel, trust)
		}
		if a.IssuerID == "" || !validText(a.IssuerID, maxAgentPassText) {
			t.Fatalf("issuer id %q", a.IssuerID)
		}
		checkScopes(t, a.Scopes, validAgentPassScope)
	})
}

func findOU(c *x509.Certificate, prefix string) string {
	for _, ou := range c.Subject.OrganizationalUnit {
		if strings.HasPrefix(ou, prefix) {
			return ou
		}
	}
	return ""
}

func checkScopes(t *testing.T, scopes []string, valid func(string) bool) {
	t.Helper()
	if len(scopes) > MaxScopes || !sort.StringsAreSorted(scopes) {
		t.Fatalf("scopes %q: too many or unsorted", scopes)
	}
	for i, s := range scopes {
		if !valid(s) || (i > 0 && scopes[i-1] == s) {
			t.Fatalf("scopes %q: invalid or duplicate %q", scopes, s)
		}
	}
}

// TestWriteFuzzSeeds regenerates the committed seed corpora with
// -update-fuzz-seeds. The seeds hold no keys: only header text, subject
// fields and extension values.
func TestWriteFuzzSeeds(t *testing.T) {
	if !*updateFuzzSeeds {
		t.Skip("run with -update-fuzz-seeds to rewrite testdata/fuzz")
	}
	ca := testca.New(t)
	leaf := ca.Issue("payments-bot-1", testca.Trust(3), testca.Scopes("payments:initiate"))
	el := xfccElement(leaf)
	xfcc := []string{
		"",
		el,
		`By=spiffe://mesh/proxy;Hash=abc;Subject="CN=x,OU=\"q\"";URI=spiffe://example.test/agent/x`,
		`Hash=1;URI=a,Hash=2;URI=b, Hash=3 ; URI="c"`,
		`URI=spiffe://forged/agent/admin,` + el,
		`Cert="` + leaf.URLEncodedPEM() + `";Chain="` + url.QueryEscape(string(leaf.PEM())+string(ca.PEM())) + `"`,
		`Subject="CN=x\"`,
		`Subject="unterminated`,
		`Hash=1,,Hash=2`,
		`hash=1;HASH=2`,
		`Evil=1`,
		strings.Repeat("Hash=1,", 40) + "Hash=1",
		`DNS=a;DNS=b;By=c;By=d;Chain=;Cert=x`,
	}
	native := [][]any{
		{"bot-1", "trust:L2\nscope:payments:initiate\nowner:alice@acme.example", "spiffe://example.test/agent/bot-1", true},
		{"bot-1", "trust:L1\ntrust:L4", "spiffe://example.test/agent/bot-1", true},
		{"bot-1", "trust:L7", "spiffe://example.test/agent/bot-1", true},
		{"bot-1", "trust:L2", "spiffe://example.test/agent/bot-2", true},
		{"Bot_1", "trust:L2", "spiffe://example.test/agent/Bot_1", true},
		{"bot-1", "trust:L2", "spiffe://example.test/agent/bot-1", false},
		{"bot-1", "trust:L2\nscope:payments", "spiffe://other.test/agent/bot-1", true},
		{"bøt", "trust:L0\nEngineering", "spiffe://example.test/agent/b%C3%B8t", true},
	}
	wrap := func(s string) []byte {
		inner, _ := asn1.MarshalWithParams(s, "utf8")
		outer, _ := asn1.Marshal(inner)
		return outer
	}
	agentPass := [][]any{
		{"Payments Bot (payments-bot-1)", wrap("L3"), wrap("payments:initiate,accounts:read"), wrap("dev-001"), false},
		{"Research Agent (research-7)", wrap("L0"), wrap("payments, sanctions:search,"), wrap("dev-001"), false},
		{"No Id", wrap("L2"), wrap("a:b"), wrap("dev"), false},
		{"Bot (bot-1)", []byte{0x0c, 2, 'L', '2'}, wrap("a:b"), wrap("dev"), false},
		{"Bot (bot-1)", wrap("L9"), wrap(""), wrap("dev"), false},
		{"Bot (bot-1)", wrap("L2"), wrap("a:b"), wrap("dev"), true},
		{"Bot (bot-1)", []byte{0x04, 0x81, 4, 0x0c, 2, 'L', '2'}, wrap("a:b"), []byte{0x04, 4, 0x0c, 2, 0xff, 0xfe}, false},
	}
	write := func(target string, i int, vals ...any) {
		var b strings.Builder
		b.WriteString("go test fuzz v1\n")
		for _, v := range vals {
			switch v := v.(type) {
			case string:
				fmt.Fprintf(&b, "string(%q)\n", v)
			case []byte:
				fmt.Fprintf(&b, "[]byte(%q)\n", v)
			case bool:
				fmt.Fprintf(&b, "bool(%v)\n", v)
			}
		}
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for i, h := range xfcc {
		write("FuzzParseXFCC", i, h)
	}
	for i, v := range native {
		write("FuzzParseNative", i, v...)
	}
	for i, v := range agentPass {
		write("FuzzParseAgentPass", i, v...)
	}
}
