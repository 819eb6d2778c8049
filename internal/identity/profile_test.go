package identity

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"math/big"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/reason"
	"github.com/agentauthz/agentauthz/internal/testca"
	"github.com/agentauthz/agentauthz/internal/testenv"
)

// TestAgentPassOpenSSL makes an AgentPass certificate with the openssl CLI,
// not with this project's code, and checks that it is accepted when its
// bundle's profile is agentpass and rejected when the profile is native.
func TestAgentPassOpenSSL(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl", "openssl")
	dir := t.TempDir()
	run := func(args ...string) {
		t.Helper()
		cmd := exec.Command(openssl, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "OPENSSL_CONF="+filepath.Join(dir, "req.cnf"))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	writeFile := func(name, text string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A config of our own so that the system openssl.cnf adds nothing.
	writeFile("req.cnf", "[req]\ndistinguished_name = dn\nx509_extensions = v3_ca\n[dn]\n"+
		"[v3_ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n")
	// The documented extfile (docs/identity.md): OCTWRAP puts the
	// UTF8String inside an OCTET STRING, as the AgentPass CA does.
	writeFile("agent.ext", `basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
1.3.6.1.4.1.99999.1.1 = ASN1:OCTWRAP,UTF8String:L3
1.3.6.1.4.1.99999.1.2 = ASN1:OCTWRAP,UTF8String:payments:initiate,accounts:read,sanctions
1.3.6.1.4.1.99999.1.3 = ASN1:OCTWRAP,UTF8String:dev-001
`)
	// The same without the OCTET STRING wrapper: not the AgentPass format.
	writeFile("bare.ext", `extendedKeyUsage = clientAuth
1.3.6.1.4.1.99999.1.1 = ASN1:UTF8String:L3
1.3.6.1.4.1.99999.1.2 = ASN1:UTF8String:payments:initiate
1.3.6.1.4.1.99999.1.3 = ASN1:UTF8String:dev-001
`)
	run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key")
	run("req", "-x509", "-new", "-key", "ca.key", "-sha256", "-days", "2",
		"-subj", "/O=AgentPass Test/CN=AgentPass Test CA", "-out", "ca.pem")
	run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "agent.key")
	run("req", "-new", "-key", "agent.key", "-subj", "/O=AgentPass/CN=Payments Bot (payments-bot-1)", "-out", "agent.csr")
	run("x509", "-req", "-in", "agent.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "0x0a1b2c3d",
		"-days", "1", "-sha256", "-extfile", "agent.ext", "-out", "agent.pem")
	run("x509", "-req", "-in", "agent.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "0x0a1b2c3e",
		"-days", "1", "-sha256", "-extfile", "bare.ext", "-out", "bare.pem")

	readURL := func(name string) string {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return url.QueryEscape(string(b))
	}
	verifier := func(p Profile) *Verifier {
		b, err := LoadBundle("agentpass.example", filepath.Join(dir, "ca.pem"), p)
		if err != nil {
			t.Fatal(err)
		}
		v, err := NewVerifier(Config{Bundles: []Bundle{b}})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}

	a := allowed(t, verifier(ProfileAgentPass), peerAttrs(readURL("agent.pem")))
	if a.ID != "payments-bot-1" || a.TrustLevel != 3 || a.Profile != ProfileAgentPass || a.IssuerID != "dev-001" ||
		a.Tenant != "agentpass.example" || a.SPIFFEID != "spiffe://agentpass.example/agent/payments-bot-1" ||
		a.Serial != "a1b2c3d" || !reflect.DeepEqual(a.Scopes, []string{"accounts:read", "payments:initiate", "sanctions"}) {
		t.Fatalf("agent %+v", a)
	}
	// Through XFCC as well.
	allowed(t, verifier(ProfileAgentPass), xfccAttrs(`Hash=1;Cert="`+readURL("agent.pem")+`"`))

	e := denied(t, verifier(ProfileNative), peerAttrs(readURL("agent.pem")), reason.InvalidAgentProfile)
	if e.CertSHA256 == "" || !strings.Contains(e.Subject, "payments-bot-1") {
		t.Fatalf("error lacks certificate details: %+v", e)
	}
	e = denied(t, verifier(ProfileAgentPass), peerAttrs(readURL("bare.pem")), reason.InvalidAgentProfile)
	if !strings.Contains(e.Error(), "OCTET STRING") {
		t.Fatalf("error does not explain the wrapping: %v", e)
	}
}

// agentPassExt encodes an AgentPass extension value: OCTET STRING { UTF8String }.
func agentPassExt(t testing.TB, oid asn1.ObjectIdentifier, s string) pkix.Extension {
	inner, err := asn1.MarshalWithParams(s, "utf8")
	if err != nil {
		t.Fatal(err)
	}
	outer, err := asn1.Marshal(inner)
	if err != nil {
		t.Fatal(err)
	}
	return pkix.Extension{Id: oid, Value: outer}
}

// agentPassTemplate is a valid AgentPass leaf template.
func agentPassTemplate(t testing.TB) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber: big.NewInt(42),
		Subject:      pkix.Name{CommonName: "Research Agent (research-7)", Organization: []string{"AgentPass"}},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		ExtraExtensions: []pkix.Extension{
			agentPassExt(t, oidAgentPassTrust(), "L2"),
			agentPassExt(t, oidAgentPassScopes(), "search:read, payments"),
			agentPassExt(t, oidAgentPassIssuer(), "dev-001"),
		},
	}
}

func signLeaf(t testing.TB, ca *testca.CA, tmpl *x509.Certificate) *x509.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestParseAgentPass(t *testing.T) {
	ca := testca.NewDomain(t, "ap.test")
	good := signLeaf(t, ca, agentPassTemplate(t))
	a, err := ParseAgentPass(good, "ap.test")
	if err != nil {
		t.Fatal(err)
	}
	if a.ID != "research-7" || a.TrustLevel != 2 || !reflect.DeepEqual(a.Scopes, []string{"payments", "search:read"}) ||
		a.IssuerID != "dev-001" || a.SPIFFEID != "spiffe://ap.test/agent/research-7" || a.Profile != ProfileAgentPass {
		t.Fatalf("agent %+v", a)
	}

	setExt := func(oid asn1.ObjectIdentifier, ext *pkix.Extension) func(*x509.Certificate) {
		return func(c *x509.Certificate) {
			var out []pkix.Extension
			for _, e := range c.ExtraExtensions {
				if !e.Id.Equal(oid) {
					out = append(out, e)
				}
			}
			if ext != nil {
				out = append(out, *ext)
			}
			c.ExtraExtensions = out
		}
	}
	ext := func(oid asn1.ObjectIdentifier, s string) *pkix.Extension { e := agentPassExt(t, oid, s); return &e }
	raw := func(oid asn1.ObjectIdentifier, b ...byte) *pkix.Extension { return &pkix.Extension{Id: oid, Value: b} }
	tests := []struct {
		name string
		mod  func(*x509.Certificate)
	}{
		{"trust missing", setExt(oidAgentPassTrust(), nil)},
		{"scopes missing", setExt(oidAgentPassScopes(), nil)},
		{"issuer missing", setExt(oidAgentPassIssuer(), nil)},
		{"trust L7", setExt(oidAgentPassTrust(), ext(oidAgentPassTrust(), "L7"))},
		{"trust lowercase", setExt(oidAgentPassTrust(), ext(oidAgentPassTrust(), "l2"))},
		{"trust bare UTF8String", setExt(oidAgentPassTrust(), raw(oidAgentPassTrust(), 0x0c, 2, 'L', '2'))},
		{"trust PrintableString inside", setExt(oidAgentPassTrust(), raw(oidAgentPassTrust(), 0x04, 4, 0x13, 2, 'L', '2'))},
		{"trailing bytes inside", setExt(oidAgentPassTrust(), raw(oidAgentPassTrust(), 0x04, 5, 0x0c, 2, 'L', '2', 0))},
		{"truncated", setExt(oidAgentPassTrust(), raw(oidAgentPassTrust(), 0x04, 4, 0x0c, 3, 'L', '2'))},
		{"non-minimal length", setExt(oidAgentPassTrust(), raw(oidAgentPassTrust(), 0x04, 0x81, 4, 0x0c, 2, 'L', '2'))},
		{"invalid UTF-8", setExt(oidAgentPassIssuer(), raw(oidAgentPassIssuer(), 0x04, 4, 0x0c, 2, 0xff, 0xfe))},
		{"empty issuer", setExt(oidAgentPassIssuer(), ext(oidAgentPassIssuer(), ""))},
		{"control char in issuer", setExt(oidAgentPassIssuer(), ext(oidAgentPassIssuer(), "dev\n001"))},
		{"bad scope", setExt(oidAgentPassScopes(), ext(oidAgentPassScopes(), "Payments:Init"))},
		{"too many scopes", setExt(oidAgentPassScopes(), ext(oidAgentPassScopes(), strings.Join(manyScopes(MaxScopes+1), ",")))},
		{"critical", func(c *x509.Certificate) {
			e := agentPassExt(t, oidAgentPassTrust(), "L2")
			e.Critical = true
			setExt(oidAgentPassTrust(), &e)(c)
		}},
		{"CN without id", func(c *x509.Certificate) { c.Subject.CommonName = "Research Agent" }},
		{"CN empty name", func(c *x509.Certificate) { c.Subject.CommonName = " (research-7)" }},
		{"CN bad id", func(c *x509.Certificate) { c.Subject.CommonName = "Research Agent (Research 7)" }},
		{"CN control char", func(c *x509.Certificate) { c.Subject.CommonName = "Re\x07search (research-7)" }},
		{"no clientAuth", func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} }},
		{"huge serial", func(c *x509.Certificate) { c.SerialNumber = new(big.Int).Lsh(big.NewInt(1), 200) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl := agentPassTemplate(t)
			tt.mod(tmpl)
			c := signLeaf(t, ca, tmpl)
			if a, err := ParseAgentPass(c, "ap.test"); !errors.Is(err, ErrInvalidProfile) {
				t.Fatalf("ParseAgentPass = %+v, %v; want ErrInvalidProfile", a, err)
			}
		})
	}
	t.Run("signature not ECDSA with SHA-256", func(t *testing.T) {
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ed CA"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
		caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, pub, priv)
		if err != nil {
			t.Fatal(err)
		}
		edCA, _ := x509.ParseCertificate(caDER)
		leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, err := x509.CreateCertificate(rand.Reader, agentPassTemplate(t), edCA, &leafKey.PublicKey, priv)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		if _, err := ParseAgentPass(c, "ap.test"); !errors.Is(err, ErrInvalidProfile) {
			t.Fatalf("Ed25519-signed AgentPass certificate accepted: %v", err)
		}
	})
	if _, err := ParseAgentPass(good, "Bad TD"); !errors.Is(err, ErrInvalidProfile) {
		t.Fatalf("bad trust domain accepted: %v", err)
	}
}

func TestParseNative(t *testing.T) {
	ca := testca.New(t)
	leaf := ca.Issue("bot-1", testca.Trust(4), testca.Scopes("a:b"), testca.Owner("team-x"))
	a, err := ParseNative(leaf.Cert, "example.test")
	if err != nil {
		t.Fatal(err)
	}
	if a.ID != "bot-1" || a.TrustLevel != 4 || a.Owner != "team-x" || a.Source != "" {
		t.Fatalf("agent %+v", a)
	}
	if _, err := ParseNative(leaf.Cert, "other.test"); !errors.Is(err, ErrInvalidProfile) {
		t.Fatalf("wrong trust domain accepted: %v", err)
	}
	if _, err := ParseNative(nil, "example.test"); !errors.Is(err, ErrInvalidProfile) {
		t.Fatalf("nil accepted: %v", err)
	}
	bad := []struct {
		name string
		opts []testca.Option
	}{
		{"key usage without digitalSignature", []testca.Option{testca.Template(func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageKeyEncipherment })}},
		{"two CNs", []testca.Option{testca.Template(func(c *x509.Certificate) {
			// pkix.Name cannot hold two CNs; write the subject DER directly.
			raw, err := asn1.Marshal(pkix.RDNSequence{
				{{Type: oidCommonName(), Value: "bot-1"}},
				{{Type: oidCommonName(), Value: "bot-2"}},
				{{Type: asn1.ObjectIdentifier{2, 5, 4, 11}, Value: "trust:L2"}},
			})
			if err != nil {
				t.Fatal(err)
			}
			c.RawSubject = raw
		})}},
		{"URI with query", []testca.Option{testca.URIs("spiffe://example.test/agent/bot-1?x=y")}},
		{"URI other scheme", []testca.Option{testca.URIs("https://example.test/agent/bot-1")}},
		{"uppercase trust OU key", []testca.Option{testca.OUs("Trust:L2")}},
		{"owner with space", []testca.Option{testca.Owner("Alice Smith")}},
		{"scope with three parts", []testca.Option{testca.Scopes("a:b:c")}},
		{"long CN", []testca.Option{testca.CN(strings.Repeat("a", 64)), testca.URIs("spiffe://example.test/agent/" + strings.Repeat("a", 64))}},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			c := ca.Issue("bot-1", tt.opts...).Cert
			if a, err := ParseNative(c, "example.test"); !errors.Is(err, ErrInvalidProfile) {
				t.Fatalf("ParseNative = %+v, %v; want ErrInvalidProfile", a, err)
			}
		})
	}
}

func TestValidators(t *testing.T) {
	for _, id := range []string{"a", "0", "bot-1", "a.b_c-d", strings.Repeat("a", 63)} {
		if !ValidAgentID(id) {
			t.Errorf("ValidAgentID(%q) = false", id)
		}
	}
	for _, id := range []string{"", "-a", ".a", "A", "a b", "a/b", "bø", strings.Repeat("a", 64), "a\x00"} {
		if ValidAgentID(id) {
			t.Errorf("ValidAgentID(%q) = true", id)
		}
	}
	for _, s := range []string{"payments:initiate", "a:b", "a.b-c_d:x9"} {
		if !ValidScope(s) {
			t.Errorf("ValidScope(%q) = false", s)
		}
	}
	for _, s := range []string{"", "payments", ":a", "a:", "a:b:c", "A:b", "a :b", strings.Repeat("a", 64) + ":" + strings.Repeat("b", 64)} {
		if ValidScope(s) {
			t.Errorf("ValidScope(%q) = true", s)
		}
	}
	for _, l := range []string{"L0", "L4"} {
		if _, err := ParseTrustLevel(l); err != nil {
			t.Errorf("ParseTrustLevel(%q): %v", l, err)
		}
	}
	for _, l := range []string{"", "L", "L5", "l1", "L01", "2"} {
		if _, err := ParseTrustLevel(l); err == nil {
			t.Errorf("ParseTrustLevel(%q) accepted", l)
		}
	}
	for _, id := range []string{"spiffe://td/a", "spiffe://cluster.local/ns/x/sa/Y_z-1.2"} {
		if _, _, err := ParseSPIFFEID(id); err != nil {
			t.Errorf("ParseSPIFFEID(%q): %v", id, err)
		}
	}
	for _, id := range []string{"", "spiffe://", "spiffe://td", "spiffe://td/", "spiffe://TD/a", "spiffe://td/a/", "spiffe://td/./a",
		"spiffe://td/a?b", "spiffe://td/a#b", "spiffe://td:80/a", "spiffe://u@td/a", "http://td/a", "spiffe://td/a%20b"} {
		if _, _, err := ParseSPIFFEID(id); err == nil {
			t.Errorf("ParseSPIFFEID(%q) accepted", id)
		}
	}
}

// TestDocsAgentPassRecipe runs the openssl recipe in docs/identity.md as
// written and checks that its certificate is accepted under an agentpass
// bundle, so the documentation cannot drift from the code.
func TestDocsAgentPassRecipe(t *testing.T) {
	openssl := testenv.LookPath(t, "openssl", "openssl")
	bash := testenv.LookPath(t, "bash", "bash")
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "identity.md"))
	if err != nil {
		t.Fatal(err)
	}
	const first = "openssl ecparam -name prime256v1 -genkey -noout -out ca.key"
	start := strings.Index(string(doc), first)
	end := strings.Index(string(doc), "openssl asn1parse")
	if start < 0 || end < start {
		t.Fatal("openssl recipe not found in docs/identity.md")
	}
	dir := t.TempDir()
	cmd := exec.Command(bash, "-e", "-c", string(doc[start:end]))
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(openssl)+string(os.PathListSeparator)+os.Getenv("PATH"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("recipe: %v\n%s", err, out)
	}
	b, err := LoadBundle("acme.example", filepath.Join(dir, "ca.pem"), ProfileAgentPass)
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(Config{Bundles: []Bundle{b}})
	if err != nil {
		t.Fatal(err)
	}
	pemData, err := os.ReadFile(filepath.Join(dir, "agent.pem"))
	if err != nil {
		t.Fatal(err)
	}
	a := allowed(t, v, peerAttrs(url.QueryEscape(string(pemData))))
	if a.ID != "payments-bot-1" || a.TrustLevel != 3 || !reflect.DeepEqual(a.Scopes, []string{"accounts:read", "payments:initiate"}) {
		t.Fatalf("agent %+v", a)
	}
}
