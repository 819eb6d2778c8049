// Package control owns the control plane's access: the operator CA under
// <data>/operator that issues client certificates to people and replicas,
// the roles those certificates carry, the mTLS authentication and role check
// in front of every endpoint that changes state or reads records, and the
// HTTP API that `agentauthz control serve` serves over the CA inventory.
package control

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/agentauthz/agentauthz/internal/durable"
)

// Role is what an operator certificate allows.
type Role string

// Roles: auditors read, responders restrict and revoke, admins do
// everything; replicas only watch and ship their records; policy (a CI
// pipeline reviewing a policy change) reads the recorded decisions and
// appends simulation runs to the change log, and changes nothing else.
const (
	RoleAdmin     Role = "admin"
	RoleResponder Role = "responder"
	RoleAuditor   Role = "auditor"
	RoleReplica   Role = "replica"
	RolePolicy    Role = "policy"
)

// ParseRole parses a role name.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case RoleAdmin, RoleResponder, RoleAuditor, RoleReplica, RolePolicy:
		return r, nil
	}
	return "", fmt.Errorf("unknown role %q: want admin, responder, auditor, replica or policy", s)
}

const (
	roleOUPrefix = "role:"
	// DefaultOperatorTTL is the validity of an operator certificate.
	DefaultOperatorTTL = 90 * 24 * time.Hour
	// MaxOperatorTTL bounds it.
	MaxOperatorTTL   = 397 * 24 * time.Hour
	operatorCAYears  = 10
	serverCertTTL    = 365 * 24 * time.Hour
	maxOperatorFile  = 64 << 10
	operatorDirName  = "operator"
	operatorCertFile = "ca.pem"
	operatorKeyFile  = "ca.key"
)

// nameRE is what an operator or replica name may look like: it goes into a
// certificate CN, the change log and, for replicas, the log name.
var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._@-]{0,63}$`)

// ValidateName checks an operator or replica name.
func ValidateName(n string) error {
	if !nameRE.MatchString(n) {
		return fmt.Errorf("name %q must match [a-z0-9][a-z0-9._@-]{0,63}", n)
	}
	return nil
}

// OperatorCA issues the client certificates of operators and replicas and
// the control plane's server certificate.
type OperatorCA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	key     crypto.Signer
	dir     string
}

// OperatorDir is where a data directory keeps its operator CA.
func OperatorDir(dataDir string) string { return filepath.Join(dataDir, operatorDirName) }

// OperatorCAPath is the operator CA certificate clients verify the control
// plane with.
func OperatorCAPath(dataDir string) string {
	return filepath.Join(OperatorDir(dataDir), operatorCertFile)
}

// ErrNoOperatorCA means the data directory has no operator CA yet.
var ErrNoOperatorCA = errors.New("no operator CA")

// OpenOperatorCA loads the operator CA of dataDir, creating it first when
// create is set and there is none. Several processes may race to create it:
// it is written to a temporary directory renamed into place, so exactly one
// wins and the others load the winner's.
func OpenOperatorCA(dataDir string, create bool) (*OperatorCA, error) {
	dir := OperatorDir(dataDir)
	o, err := loadOperatorCA(dir)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		return o, err
	}
	if !create {
		return nil, fmt.Errorf("%w in %s", ErrNoOperatorCA, dataDir)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(dataDir, ".operator.tmp-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "agentauthz operator CA", Organization: []string{"agentauthz"}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.AddDate(operatorCAYears, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	if err := writeSynced(filepath.Join(tmp, operatorKeyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, err
	}
	if err := writeSynced(filepath.Join(tmp, operatorCertFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, err
	}
	if err := durable.SyncDir(tmp); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, dir); err != nil && !errors.Is(err, os.ErrExist) && !isNotEmpty(err) {
		return nil, fmt.Errorf("create operator CA: %w", err)
	}
	if err := durable.SyncDir(dataDir); err != nil {
		return nil, err
	}
	return loadOperatorCA(dir)
}

func isNotEmpty(err error) bool {
	var le *os.LinkError
	return errors.As(err, &le) && strings.Contains(le.Err.Error(), "not empty")
}

func loadOperatorCA(dir string) (*OperatorCA, error) {
	kp := filepath.Join(dir, operatorKeyFile)
	st, err := os.Stat(kp)
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("operator CA key %s is readable by group or others (mode %v): chmod 600 it", kp, st.Mode().Perm())
	}
	keyPEM, err := durable.ReadFile(kp, maxOperatorFile)
	if err != nil {
		return nil, err
	}
	certPEM, err := durable.ReadFile(filepath.Join(dir, operatorCertFile), maxOperatorFile)
	if err != nil {
		return nil, err
	}
	kb, _ := pem.Decode(keyPEM)
	cb, _ := pem.Decode(certPEM)
	if kb == nil || cb == nil {
		return nil, fmt.Errorf("operator CA in %s: not PEM", dir)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("operator CA key: %w", err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("operator CA key cannot sign")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("operator CA certificate: %w", err)
	}
	return &OperatorCA{Cert: cert, CertPEM: certPEM, key: signer, dir: dir}, nil
}

// Pool is a pool holding the operator CA.
func (o *OperatorCA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(o.Cert)
	return p
}

// Issued is a new client certificate and its key, PEM.
type Issued struct {
	CertPEM, KeyPEM []byte
	Serial          string
	NotAfter        time.Time
}

// Issue makes a client certificate for name with role, valid for ttl.
func (o *OperatorCA) Issue(name string, role Role, ttl time.Duration) (*Issued, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if _, err := ParseRole(string(role)); err != nil {
		return nil, err
	}
	if ttl <= 0 || ttl > MaxOperatorTTL {
		return nil, fmt.Errorf("ttl %v: want more than 0 and at most %v", ttl, MaxOperatorTTL)
	}
	now := time.Now()
	tpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: name, OrganizationalUnit: []string{roleOUPrefix + string(role)}},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(ttl),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	return o.sign(tpl)
}

// ServerCertificate makes the control plane's TLS certificate for hosts (IP
// addresses or DNS names), kept in memory only: clients trust the operator
// CA, so a new one at every start is fine.
func (o *OperatorCA) ServerCertificate(hosts []string) (tls.Certificate, error) {
	now := time.Now()
	tpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: "agentauthz control plane"},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(serverCertTTL),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tpl.IPAddresses = append(tpl.IPAddresses, ip)
		} else if h != "" {
			tpl.DNSNames = append(tpl.DNSNames, h)
		}
	}
	is, err := o.sign(tpl)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(is.CertPEM, is.KeyPEM)
}

func (o *OperatorCA) sign(tpl *x509.Certificate) (*Issued, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, o.Cert, key.Public(), o.key)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &Issued{
		CertPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:   pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		Serial:   tpl.SerialNumber.Text(16),
		NotAfter: tpl.NotAfter,
	}, nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return n.Add(n, big.NewInt(1))
}

func writeSynced(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// WriteIssued writes an issued certificate and key as NAME.pem and NAME.key
// (0600) in dir, refusing to overwrite existing files.
func WriteIssued(dir, name string, is *Issued) (certPath, keyPath string, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", err
	}
	certPath, keyPath = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	if err := writeSynced(keyPath, is.KeyPEM, 0o600); err != nil {
		return "", "", err
	}
	if err := writeSynced(certPath, is.CertPEM, 0o644); err != nil {
		os.Remove(keyPath)
		return "", "", err
	}
	return certPath, keyPath, durable.SyncDir(dir)
}
