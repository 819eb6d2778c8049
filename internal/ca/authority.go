package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/agentauthz/agentauthz/internal/durable"
)

// KeyPermissionError is ErrKeyPermissions with the offending file.
type KeyPermissionError struct {
	Path string
	Mode os.FileMode
}

func (e *KeyPermissionError) Error() string {
	return fmt.Sprintf("ca key %s has mode %04o: it must not be readable by group or others", e.Path, e.Mode.Perm())
}
func (e *KeyPermissionError) Unwrap() error { return ErrKeyPermissions }

// InitRequest creates a new CA for a trust domain.
type InitRequest struct {
	TrustDomain string
	Org         string        // Subject O of the CA and of every agent certificate; optional
	CRLURL      string        // CRL distribution point put into agent certificates; optional
	MaxTTL      time.Duration // longest agent certificate lifetime; 0 means DefaultMaxTTL
	Operator    string        // who did it, for the event log
}

// ImportRequest brings an existing CA or intermediate (PEM files).
type ImportRequest struct {
	TrustDomain string
	CertPEM     []byte // the CA certificate first, then optionally its chain
	KeyPEM      []byte // PKCS#8, SEC 1 or PKCS#1
	Org         string // default: the CA certificate's O
	CRLURL      string
	MaxTTL      time.Duration
	Operator    string
}

// CAInfo describes one trust domain's CA.
type CAInfo struct {
	TrustDomain string        `json:"trust_domain"`
	Org         string        `json:"org,omitempty"`
	CRLURL      string        `json:"crl_url,omitempty"`
	MaxTTL      time.Duration `json:"max_ttl"`
	Imported    bool          `json:"imported"`
	Subject     string        `json:"subject"`
	NotAfter    time.Time     `json:"not_after"`
	CertPath    string        `json:"cert_path"`
	KeyPath     string        `json:"key_path"`
}

// caDir is where one trust domain's CA files live.
func (a *Authority) caDir(td string) string { return filepath.Join(a.dir, "ca", td) }

// CertPath is the CA certificate (trust bundle) file of a trust domain.
func (a *Authority) CertPath(td string) string { return filepath.Join(a.caDir(td), "ca.pem") }

// KeyPath is the CA private key file of a trust domain.
func (a *Authority) KeyPath(td string) string { return filepath.Join(a.caDir(td), "ca.key") }

// Init creates a self-signed ECDSA P-256 CA for req.TrustDomain.
func (a *Authority) Init(req InitRequest) (*CAInfo, error) {
	if err := a.checkTDRequest(req.TrustDomain, req.Org, req.CRLURL, &req.MaxTTL, req.Operator); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), a.rand)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := a.newSerial()
	if err != nil {
		return nil, err
	}
	now := a.now()
	subj := pkix.Name{CommonName: req.TrustDomain + " agent CA"}
	if req.Org != "" {
		subj.Organization = []string{req.Org}
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subj,
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: req.TrustDomain}},
	}
	der, err := x509.CreateCertificate(a.rand, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal CA key: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if err := a.storeCA(req.TrustDomain, req.Org, req.CRLURL, req.MaxTTL, false, req.Operator, certPEM, keyPEM); err != nil {
		return nil, err
	}
	return a.CAInfo(req.TrustDomain)
}

// Import stores an existing CA (root or intermediate) for req.TrustDomain
// after checking that it is a CA certificate, valid now, and that the key
// matches it.
func (a *Authority) Import(req ImportRequest) (*CAInfo, error) {
	if len(req.CertPEM) > maxInputFileSize || len(req.KeyPEM) > maxInputFileSize {
		return nil, fieldf("ca", "certificate or key input is larger than %d bytes", maxInputFileSize)
	}
	certs, err := parseCertsPEM(req.CertPEM)
	if err != nil {
		return nil, err
	}
	cert := certs[0]
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return nil, fieldf("ca", "certificate %q is not a CA certificate (basicConstraints CA:TRUE missing)", cert.Subject.String())
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fieldf("ca", "ca certificate %q lacks the keyCertSign key usage", cert.Subject.String())
	}
	now := a.now()
	if now.After(cert.NotAfter) || now.Before(cert.NotBefore) {
		return nil, fieldf("ca", "ca certificate %q is not valid now (valid %s to %s)", cert.Subject.String(),
			fmtTime(cert.NotBefore), fmtTime(cert.NotAfter))
	}
	key, err := parseKeyPEM(req.KeyPEM)
	if err != nil {
		return nil, err
	}
	if !publicKeysEqual(key.Public(), cert.PublicKey) {
		return nil, fieldf("ca", "the private key does not match the ca certificate")
	}
	if req.Org == "" && len(cert.Subject.Organization) > 0 {
		req.Org = cert.Subject.Organization[0]
	}
	if err := a.checkTDRequest(req.TrustDomain, req.Org, req.CRLURL, &req.MaxTTL, req.Operator); err != nil {
		return nil, err
	}
	var certOut bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&certOut, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal CA key: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if err := a.storeCA(req.TrustDomain, req.Org, req.CRLURL, req.MaxTTL, true, req.Operator, certOut.Bytes(), keyPEM); err != nil {
		return nil, err
	}
	return a.CAInfo(req.TrustDomain)
}

func (a *Authority) checkTDRequest(td, org, crlURL string, maxTTL *time.Duration, operator string) error {
	if err := ValidateTrustDomain(td); err != nil {
		return err
	}
	if err := validateText("org", org, maxOrgLen); err != nil {
		return err
	}
	if crlURL != "" {
		if len(crlURL) > maxCRLURLLen {
			return fieldf("crl_url", "crl url is longer than %d characters", maxCRLURLLen)
		}
		u, err := url.Parse(crlURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fieldf("crl_url", "crl url %q must be an absolute http or https URL", crlURL)
		}
	}
	if *maxTTL == 0 {
		*maxTTL = DefaultMaxTTL
	}
	if *maxTTL < time.Minute || *maxTTL > caValidity {
		return fieldf("max_ttl", "max ttl %s must be between 1m and %s", *maxTTL, caValidity)
	}
	return validateOperator(operator)
}

func validateOperator(op string) error {
	if op == "" {
		return fieldf("operator", "operator is empty")
	}
	return validateText("operator", op, maxOperatorLen)
}

// storeCA writes the CA files and its inventory row in one step: if either
// fails, neither remains.
func (a *Authority) storeCA(td, org, crlURL string, maxTTL time.Duration, imported bool, operator string, certPEM, keyPEM []byte) error {
	dir := a.caDir(td)
	if _, err := os.Stat(a.KeyPath(td)); err == nil {
		return fmt.Errorf("%w: a CA for trust domain %q already exists in %s", ErrExists, td, dir)
	}
	now := a.now()
	wrote := false // our files are on disk: only then may a failed commit remove them
	err := a.tx(context.Background(), func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRow(`SELECT count(*) FROM trust_domains WHERE name = ?`, td).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("%w: trust domain %q is already in the inventory", ErrExists, td)
		}
		imp := 0
		event := "ca_init"
		if imported {
			imp, event = 1, "ca_import"
		}
		if _, err := tx.Exec(`INSERT INTO trust_domains (name, org, crl_url, max_ttl_seconds, imported, created_at) VALUES (?, ?, ?, ?, ?, ?)`,
			td, org, crlURL, int64(maxTTL/time.Second), imp, fmtTime(now)); err != nil {
			return fmt.Errorf("record trust domain: %w", err)
		}
		if err := a.addEvent(tx, now, td, "", "", event, operator, fmt.Sprintf("org=%q crl_url=%q max_ttl=%s", org, crlURL, maxTTL)); err != nil {
			return err
		}
		// Files last, inside the transaction, so a failed write rolls the row back.
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create %s: %w", dir, err)
		}
		if err := durable.WriteFile(a.KeyPath(td), keyPEM, 0o600); err != nil {
			return err
		}
		if err := durable.WriteFile(a.CertPath(td), certPEM, 0o644); err != nil {
			os.Remove(a.KeyPath(td))
			return err
		}
		wrote = true
		return nil
	})
	if err != nil {
		// A commit that failed after our files were written. A transaction
		// that never began (the store busy with another process's ca init
		// for the same trust domain) must not remove that process's files.
		var se *StoreError
		if wrote && errors.As(err, &se) {
			os.Remove(a.KeyPath(td))
			os.Remove(a.CertPath(td))
		}
		return err
	}
	return nil
}

// tdConfig is a trust domain's inventory row.
type tdConfig struct {
	name, org, crlURL string
	maxTTL            time.Duration
	imported          bool
}

func (a *Authority) tdConfig(q interface {
	QueryRow(string, ...any) *sql.Row
}, td string) (*tdConfig, error) {
	c := &tdConfig{name: td}
	var maxTTL int64
	var imp int
	err := q.QueryRow(`SELECT org, crl_url, max_ttl_seconds, imported FROM trust_domains WHERE name = ?`, td).
		Scan(&c.org, &c.crlURL, &maxTTL, &imp)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: no CA for trust domain %q", ErrNotFound, td)
	}
	if err != nil {
		return nil, &StoreError{Path: a.dbPath, Err: err}
	}
	c.maxTTL = time.Duration(maxTTL) * time.Second
	c.imported = imp != 0
	return c, nil
}

// signer is a loaded CA: its certificate, chain and key.
type signer struct {
	cert  *x509.Certificate
	chain []*x509.Certificate // cert first
	key   crypto.Signer
}

// loadCA reads a trust domain's CA files, refusing a key file that group or
// others can read.
func (a *Authority) loadCA(td string) (*signer, error) {
	kp := a.KeyPath(td)
	st, err := os.Stat(kp)
	if err != nil {
		return nil, fmt.Errorf("ca key for trust domain %q: %w", td, err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, &KeyPermissionError{Path: kp, Mode: st.Mode()}
	}
	keyPEM, err := readBounded(kp, maxInputFileSize)
	if err != nil {
		return nil, fmt.Errorf("ca key for trust domain %q: %w", td, err)
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("ca key %s: %w", kp, err)
	}
	certPEM, err := readBounded(a.CertPath(td), maxInputFileSize)
	if err != nil {
		return nil, fmt.Errorf("ca certificate for trust domain %q: %w", td, err)
	}
	certs, err := parseCertsPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("ca certificate %s: %w", a.CertPath(td), err)
	}
	if !publicKeysEqual(key.Public(), certs[0].PublicKey) {
		return nil, fmt.Errorf("ca key %s does not match %s", kp, a.CertPath(td))
	}
	return &signer{cert: certs[0], chain: certs, key: key}, nil
}

// CAInfo describes the CA of one trust domain.
func (a *Authority) CAInfo(td string) (*CAInfo, error) {
	c, err := a.tdConfig(a.db, td)
	if err != nil {
		return nil, err
	}
	info := &CAInfo{TrustDomain: td, Org: c.org, CRLURL: c.crlURL, MaxTTL: c.maxTTL, Imported: c.imported,
		CertPath: a.CertPath(td), KeyPath: a.KeyPath(td)}
	if b, err := readBounded(info.CertPath, maxInputFileSize); err == nil {
		if certs, err := parseCertsPEM(b); err == nil {
			info.Subject = certs[0].Subject.String()
			info.NotAfter = certs[0].NotAfter
		}
	}
	return info, nil
}

// ListCAs describes every trust domain in the inventory, sorted by name.
func (a *Authority) ListCAs() ([]CAInfo, error) {
	rows, err := a.db.Query(`SELECT name FROM trust_domains ORDER BY name`)
	if err != nil {
		return nil, &StoreError{Path: a.dbPath, Err: err}
	}
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return nil, &StoreError{Path: a.dbPath, Err: err}
		}
		names = append(names, n)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, &StoreError{Path: a.dbPath, Err: err}
	}
	out := make([]CAInfo, 0, len(names))
	for _, n := range names {
		info, err := a.CAInfo(n)
		if err != nil {
			return nil, err
		}
		out = append(out, *info)
	}
	return out, nil
}

// TrustDomains lists the trust domains in the inventory.
func (a *Authority) TrustDomains() ([]string, error) {
	cas, err := a.ListCAs()
	if err != nil {
		return nil, err
	}
	out := make([]string, len(cas))
	for i, c := range cas {
		out[i] = c.TrustDomain
	}
	return out, nil
}

func (a *Authority) newSerial() (*big.Int, error) {
	b := make([]byte, 16)
	for {
		if _, err := a.rand.Read(b); err != nil {
			return nil, fmt.Errorf("serial: %w", err)
		}
		b[0] &= 0x7f // positive in DER without a padding byte
		n := new(big.Int).SetBytes(b)
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

func parseCertsPEM(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for len(out) < 16 {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fieldf("certificate", "parse certificate: %v", err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fieldf("certificate", "no PEM CERTIFICATE block found")
	}
	return out, nil
}

func parseKeyPEM(b []byte) (crypto.Signer, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, fieldf("key", "no PEM private key block found")
		}
		var k any
		var err error
		switch blk.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(blk.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
		default:
			continue // e.g. EC PARAMETERS before the key
		}
		if err != nil {
			return nil, fieldf("key", "parse private key: %v", err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fieldf("key", "unsupported private key type %T", k)
		}
		switch s.(type) {
		case *ecdsa.PrivateKey, ed25519.PrivateKey, *rsa.PrivateKey:
			return s, nil
		}
		return nil, fieldf("key", "unsupported private key type %T", k)
	}
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}
