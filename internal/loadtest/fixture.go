package loadtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// TrustDomain is the tenant of every generated agent.
const TrustDomain = "bench.test"

// Bounds on generated fixtures, so a typo in a flag cannot fill the disk.
const (
	maxRoutes         = 10000 // policy.maxRoutes
	maxRevokedSerials = 1_000_000
	agentsPerKind     = 8
)

// pki is the generated CA plus a second, untrusted CA.
type pki struct {
	caCert    *x509.Certificate
	caKey     *ecdsa.PrivateKey
	caPEM     []byte
	otherCert *x509.Certificate
	otherKey  *ecdsa.PrivateKey
	now       time.Time
	serial    int64
}

func newPKI(now time.Time) (*pki, error) {
	p := &pki{now: now, serial: 1 << 40}
	var err error
	p.caCert, p.caKey, err = selfSigned("agentauthz bench CA", now)
	if err != nil {
		return nil, err
	}
	p.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.caCert.Raw})
	p.otherCert, p.otherKey, err = selfSigned("someone else's CA", now)
	return p, err
}

func selfSigned(cn string, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"agentauthz bench"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(48 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

// agentCert is one issued native-profile agent certificate.
type agentCert struct {
	id      string
	serial  *big.Int
	cert    *x509.Certificate
	certPEM []byte
}

// issue makes a native-profile certificate (docs/design.md) signed by the trusted
// CA, or by the untrusted one when untrusted is set.
func (p *pki) issue(id string, trust int, scopes []string, untrusted bool) (*agentCert, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	p.serial++
	ous := []string{fmt.Sprintf("trust:L%d", trust), "owner:team-bench"}
	for _, s := range scopes {
		ous = append(ous, "scope:"+s)
	}
	u, err := url.Parse("spiffe://" + TrustDomain + "/agent/" + id)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(p.serial),
		Subject:      pkix.Name{CommonName: id, Organization: []string{"agentauthz bench"}, OrganizationalUnit: ous},
		URIs:         []*url.URL{u},
		NotBefore:    p.now.Add(-time.Hour),
		NotAfter:     p.now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	parent, signer := p.caCert, p.caKey
	if untrusted {
		parent, signer = p.otherCert, p.otherKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &agentCert{id: id, serial: tmpl.SerialNumber, cert: cert,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// writeCRL writes a CRL signed by the trusted CA revoking the given serials
// plus extra synthetic ones. The synthetic serials are far from the issued
// range so they never hit a live agent.
func (p *pki) writeCRL(path string, revoked []*big.Int, extra int) error {
	if extra < 0 || extra > maxRevokedSerials {
		return fmt.Errorf("revoked serials %d: want 0..%d", extra, maxRevokedSerials)
	}
	entries := make([]x509.RevocationListEntry, 0, len(revoked)+extra)
	at := p.now.Add(-time.Minute)
	for _, s := range revoked {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: s, RevocationTime: at})
	}
	base := new(big.Int).Lsh(big.NewInt(1), 100)
	for i := range extra {
		s := new(big.Int).Add(base, big.NewInt(int64(i)*7919))
		entries = append(entries, x509.RevocationListEntry{SerialNumber: s, RevocationTime: at})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number:                    big.NewInt(1),
		ThisUpdate:                p.now.Add(-time.Minute),
		NextUpdate:                p.now.Add(24 * time.Hour),
		RevokedCertificateEntries: entries,
	}, p.caCert, p.caKey)
	if err != nil {
		return fmt.Errorf("create crl: %w", err)
	}
	return os.WriteFile(path, der, 0o644)
}

// policyData builds the policy data: the shipped data.json plus synthetic
// routes and operations up to routes entries in total.
func policyData(shipped []byte, routes int) ([]byte, error) {
	if routes < 0 || routes > maxRoutes {
		return nil, fmt.Errorf("routes %d: want 0..%d", routes, maxRoutes)
	}
	var doc map[string]any
	if err := json.Unmarshal(shipped, &doc); err != nil {
		return nil, fmt.Errorf("data.json: %w", err)
	}
	root, _ := doc["agentauthz"].(map[string]any)
	if root == nil {
		return nil, errors.New("data.json: no agentauthz object")
	}
	rs, _ := root["routes"].([]any)
	ops, _ := root["operations"].(map[string]any)
	if ops == nil {
		ops = map[string]any{}
		root["operations"] = ops
	}
	for i := 0; len(rs) < routes; i++ {
		op := fmt.Sprintf("gen%d:read", i)
		method := "GET"
		if i%2 == 1 {
			method = "POST"
		}
		rs = append(rs, map[string]any{"method": method, "path": fmt.Sprintf("/v1/gen%d/items/*", i), "operation": op})
		ops[op] = map[string]any{"description": "generated", "min_trust": 1, "scope": op}
	}
	root["routes"] = rs
	return json.MarshalIndent(doc, "", " ")
}

// serverConfig is the subset of config.Config the harness writes; keys are
// the documented YAML keys.
type serverConfig struct {
	DataDir   string `yaml:"data_dir"`
	LogLevel  string `yaml:"log_level"`
	LogFormat string `yaml:"log_format"`
	Policy    struct {
		Dir           string `yaml:"dir"`
		DecisionCache struct {
			Disabled bool `yaml:"disabled"`
		} `yaml:"decision_cache"`
	} `yaml:"policy"`
	TrustBundles []trustBundleConfig `yaml:"trust_bundles"`
	DecisionLog  struct {
		Mode string `yaml:"mode"`
		Name string `yaml:"name"`
	} `yaml:"decision_log"`
	ControlPlane *controlPlaneConfig `yaml:"control_plane,omitempty"`
}

// controlPlaneConfig is the replica's client side of the control plane's mTLS.
type controlPlaneConfig struct {
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

type trustBundleConfig struct {
	TrustDomain string `yaml:"trust_domain"`
	File        string `yaml:"file"`
	Revocation  struct {
		CRLFiles []string `yaml:"crl_files,omitempty"`
		WatchURL string   `yaml:"watch_url,omitempty"`
	} `yaml:"revocation"`
}

// serverSpec is what differs between the bench servers' configurations.
type serverSpec struct {
	PolicyDir       string
	Bundle          string // the tenant's CA bundle
	CRLFiles        []string
	WatchURL        string
	TrustDomain     string
	LogMode         string // sync unless measuring the trade-off
	NoDecisionCache bool   // measure every request evaluated
	ControlPlane    *controlPlaneConfig
}

// writeServerConfig writes a serve configuration with every feature on.
func writeServerConfig(dir string, s serverSpec) (string, error) {
	var c serverConfig
	c.DataDir = filepath.Join(dir, "data")
	c.LogLevel, c.LogFormat = "error", "text"
	c.Policy.Dir = s.PolicyDir
	c.Policy.DecisionCache.Disabled = s.NoDecisionCache
	tb := trustBundleConfig{TrustDomain: s.TrustDomain, File: s.Bundle}
	tb.Revocation.CRLFiles = s.CRLFiles
	tb.Revocation.WatchURL = s.WatchURL
	c.TrustBundles = []trustBundleConfig{tb}
	c.DecisionLog.Mode, c.DecisionLog.Name = s.LogMode, "bench"
	c.ControlPlane = s.ControlPlane
	out, err := yaml.Marshal(c)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "config.yaml")
	return path, os.WriteFile(path, out, 0o644)
}

// writePolicyDir copies the shipped policy (every non-test .rego file) and
// writes generated data with the given number of routes.
func writePolicyDir(dst, shippedDir string, routes int) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	ents, err := os.ReadDir(shippedDir)
	if err != nil {
		return fmt.Errorf("policies: %w", err)
	}
	copied := 0
	for _, e := range ents {
		n := e.Name()
		if e.IsDir() || !strings.HasSuffix(n, ".rego") || strings.HasSuffix(n, "_test.rego") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(shippedDir, n))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dst, n), b, 0o644); err != nil {
			return err
		}
		copied++
	}
	if copied == 0 {
		return fmt.Errorf("policies: no .rego file in %s", shippedDir)
	}
	shipped, err := os.ReadFile(filepath.Join(shippedDir, "data.json"))
	if err != nil {
		return fmt.Errorf("policies: %w", err)
	}
	data, err := policyData(shipped, routes)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dst, "data.json"), data, 0o644)
}
