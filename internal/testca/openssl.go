package testca

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agentauthz/agentauthz/internal/testenv"
)

// OpenSSLPKI is a PKI made with the openssl CLI, the way an organisation
// that already runs one makes it (`openssl ca`, index.txt, `-gencrl`), so
// that tests exercise what such a PKI produces rather than what this
// project's code produces. Every file lives in Dir.
type OpenSSLPKI struct {
	t   testing.TB
	bin string
	Dir string
	// KeyType is the key of the CAs and agents made next: "" or "ec"
	// (P-256), "ec384", "rsa" (2048 bits) or "ed25519".
	KeyType string
}

// NewOpenSSLPKI returns an empty PKI in a temporary directory. It skips the
// test when openssl is missing, and fails it instead under CI=true.
func NewOpenSSLPKI(t testing.TB) *OpenSSLPKI {
	t.Helper()
	bin := testenv.LookPath(t, "openssl", "openssl")
	p := &OpenSSLPKI{t: t, bin: bin, Dir: t.TempDir()}
	p.write("empty.cnf", "[req]\ndistinguished_name = dn\n[dn]\n")
	return p
}

// Path returns the path of name in Dir.
func (p *OpenSSLPKI) Path(name string) string { return filepath.Join(p.Dir, name) }

func (p *OpenSSLPKI) write(name, text string) {
	p.t.Helper()
	if err := os.WriteFile(p.Path(name), []byte(text), 0o600); err != nil {
		p.t.Fatal(err)
	}
}

// Run runs openssl with args in Dir and returns its combined output,
// failing the test when it fails.
func (p *OpenSSLPKI) Run(args ...string) string {
	p.t.Helper()
	out, err := p.Try(args...)
	if err != nil {
		p.t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// Try runs openssl with args in Dir and returns its combined output and
// error.
func (p *OpenSSLPKI) Try(args ...string) (string, error) {
	cmd := exec.Command(p.bin, args...)
	cmd.Dir = p.Dir
	// Nothing from the system openssl.cnf.
	cmd.Env = append(os.Environ(), "OPENSSL_CONF="+p.Path("empty.cnf"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// caConfig is an `openssl ca` configuration for the CA in directory name.
// crlExt, when not empty, is the body of the CRL extension section.
func caConfig(name, crlExt string) string {
	crlExtRef := ""
	if crlExt != "" {
		crlExtRef = "crl_extensions = crl_ext\n"
	}
	s := fmt.Sprintf(`[ca]
default_ca = this
[this]
dir = %[1]s
database = $dir/index.txt
new_certs_dir = $dir
serial = $dir/serial
crlnumber = $dir/crlnumber
certificate = %[1]s.pem
private_key = %[1]s.key
default_md = default
default_days = 30
default_crl_days = 7
policy = any
copy_extensions = none
unique_subject = no
%[2]s[any]
commonName = supplied
organizationName = optional
organizationalUnitName = optional
[req]
distinguished_name = dn
[dn]
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
`, name, crlExtRef)
	if crlExt != "" {
		s += "[crl_ext]\n" + crlExt + "\n"
	}
	return s
}

// genKey writes a new key of keyType (see OpenSSLPKI.KeyType) to out.
func (p *OpenSSLPKI) genKey(keyType, out string) {
	p.t.Helper()
	switch keyType {
	case "", "ec":
		p.Run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", out)
	case "ec384":
		p.Run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384", "-out", out)
	case "rsa":
		p.Run("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", out)
	case "ed25519":
		p.Run("genpkey", "-algorithm", "ED25519", "-out", out)
	default:
		p.t.Fatalf("unknown key type %q", keyType)
	}
}

// Root makes a self-signed root CA called name (files name.pem, name.key
// and the `openssl ca` database in directory name).
func (p *OpenSSLPKI) Root(name string) {
	p.t.Helper()
	p.initCA(name, "")
	p.genKey(p.KeyType, name+".key")
	p.Run("req", "-config", name+".cnf", "-x509", "-new", "-key", name+".key", "-days", "3650",
		"-subj", "/O=BYO PKI/CN="+name, "-extensions", "ca_ext", "-set_serial", "1", "-out", name+".pem")
}

// Intermediate makes a CA called name issued by CA parent.
func (p *OpenSSLPKI) Intermediate(name, parent string) {
	p.t.Helper()
	p.initCA(name, "")
	p.genKey(p.KeyType, name+".key")
	p.Run("req", "-config", name+".cnf", "-new", "-key", name+".key", "-subj", "/O=BYO PKI/CN="+name, "-out", name+".csr")
	p.Run("ca", "-batch", "-config", parent+".cnf", "-extfile", name+".cnf", "-extensions", "ca_ext",
		"-days", "1000", "-in", name+".csr", "-out", name+".pem")
	p.Run("x509", "-in", name+".pem", "-out", name+".pem") // drop openssl ca's text dump
}

// SetCRLExtensions replaces the CRL extension section of CA name's
// configuration (e.g. an issuingDistributionPoint); "" removes it.
func (p *OpenSSLPKI) SetCRLExtensions(name, crlExt string) {
	p.t.Helper()
	p.write(name+".cnf", caConfig(name, crlExt))
}

func (p *OpenSSLPKI) initCA(name, crlExt string) {
	p.t.Helper()
	if err := os.MkdirAll(p.Path(name), 0o700); err != nil {
		p.t.Fatal(err)
	}
	p.write(filepath.Join(name, "index.txt"), "")
	p.write(filepath.Join(name, "serial"), "1000\n")
	p.write(filepath.Join(name, "crlnumber"), "01\n")
	p.write(name+".cnf", caConfig(name, crlExt))
}

// Agent issues a native-profile agent certificate (id.pem, id.key) from CA
// issuer for trust domain td. extra lines are appended to its extension
// section (e.g. "crlDistributionPoints = URI:http://crl.example/a.crl").
func (p *OpenSSLPKI) Agent(id, issuer, td string, extra ...string) {
	p.t.Helper()
	p.genKey(p.KeyType, id+".key")
	ext := fmt.Sprintf(`[agent]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = URI:spiffe://%s/agent/%s
%s
`, td, id, strings.Join(extra, "\n"))
	p.write(id+".ext", ext)
	p.Run("req", "-new", "-key", id+".key", "-subj",
		"/O=BYO PKI/OU=trust:L2/OU=scope:payments:read/CN="+id, "-out", id+".csr")
	p.Run("ca", "-batch", "-config", issuer+".cnf", "-extfile", id+".ext", "-extensions", "agent",
		"-days", "30", "-multivalue-rdn", "-preserveDN", "-in", id+".csr", "-out", id+".pem")
	p.Run("x509", "-in", id+".pem", "-out", id+".pem")
}

// Revoke revokes certificate file cert (e.g. "bot.pem") in CA ca's
// database.
func (p *OpenSSLPKI) Revoke(ca, cert string) {
	p.t.Helper()
	p.Run("ca", "-batch", "-config", ca+".cnf", "-revoke", cert, "-crl_reason", "keyCompromise")
}

// CRL writes CA ca's CRL (PEM) to out. args are extra `openssl ca -gencrl`
// arguments, e.g. "-crl_nextupdate", "99991231235959Z".
func (p *OpenSSLPKI) CRL(ca, out string, args ...string) {
	p.t.Helper()
	p.Run(append([]string{"ca", "-batch", "-config", ca + ".cnf", "-gencrl", "-out", out}, args...)...)
}

// Cat concatenates files into out, as `cat a b > out` does.
func (p *OpenSSLPKI) Cat(out string, files ...string) {
	p.t.Helper()
	var b []byte
	for _, f := range files {
		d, err := os.ReadFile(p.Path(f))
		if err != nil {
			p.t.Fatal(err)
		}
		b = append(b, d...)
	}
	if err := os.WriteFile(p.Path(out), b, 0o600); err != nil {
		p.t.Fatal(err)
	}
}

// Verify runs `openssl verify` on cert with the given trust and CRL
// options and reports whether openssl accepts it, with its output.
// Typical args: "-CAfile", "root.pem", "-untrusted", "issuing.pem",
// "-CRLfile", "crls.pem", "-crl_check_all".
func (p *OpenSSLPKI) Verify(cert string, args ...string) (bool, string) {
	p.t.Helper()
	out, err := p.Try(append(append([]string{"verify", "-purpose", "sslclient"}, args...), cert)...)
	return err == nil, out
}

// Read returns the bytes of file name.
func (p *OpenSSLPKI) Read(name string) []byte {
	p.t.Helper()
	b, err := os.ReadFile(p.Path(name))
	if err != nil {
		p.t.Fatal(err)
	}
	return b
}

// Cert parses the (first) PEM certificate in file name.
func (p *OpenSSLPKI) Cert(name string) *x509.Certificate {
	p.t.Helper()
	block, _ := pem.Decode(p.Read(name))
	if block == nil {
		p.t.Fatalf("%s: no PEM block", name)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		p.t.Fatalf("%s: %v", name, err)
	}
	return c
}

// URLEncoded returns the concatenated PEM of files, URL-encoded as Envoy
// forwards a certificate or an XFCC Chain=.
func (p *OpenSSLPKI) URLEncoded(files ...string) string {
	p.t.Helper()
	var b []byte
	for _, f := range files {
		b = append(b, p.Read(f)...)
	}
	return url.QueryEscape(string(b))
}
