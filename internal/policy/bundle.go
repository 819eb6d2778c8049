package policy

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/bundle"

	"github.com/agentauthz/agentauthz/internal/durable"
)

// HTTPDoer fetches bundle URLs (*http.Client satisfies it).
type HTTPDoer interface {
	Do(*http.Request) (*http.Response, error)
}

// maxBundleBytes bounds a bundle download and its uncompressed content.
const maxBundleBytes = 64 << 20

// bundleSource fetches a bundle from a file or URL. It is used under the
// engine's reload mutex only.
type bundleSource struct {
	loc      string
	client   HTTPDoer
	verify   *bundle.VerificationConfig // nil: signatures not required
	etag     string
	lastHash string
}

func newBundleSource(cfg Config) (*bundleSource, error) {
	b := &bundleSource{loc: cfg.Bundle, client: cfg.HTTPClient}
	if b.client == nil {
		b.client = &http.Client{Timeout: 30 * time.Second}
	}
	if cfg.BundleVerificationKey != "" {
		kc, err := loadVerificationKey(cfg.BundleVerificationKey)
		if err != nil {
			return nil, err
		}
		id := cfg.BundleVerificationKeyID
		if id == "" {
			id = "default"
		}
		b.verify = bundle.NewVerificationConfig(map[string]*bundle.KeyConfig{id: kc}, id, "", nil)
	}
	return b, nil
}

func (b *bundleSource) isURL() bool {
	return strings.HasPrefix(b.loc, "http://") || strings.HasPrefix(b.loc, "https://")
}

// forget makes the next fetch load the bundle even if it did not change.
func (b *bundleSource) forget() { b.etag, b.lastHash = "", "" }

// loadVerificationKey reads a PEM public key (or certificate) and picks the
// JWS algorithm from its type; anything that is not PEM is an HS256 secret.
func loadVerificationKey(path string) (*bundle.KeyConfig, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("policy: bundle verification key: %w", err)
	}
	block, _ := pem.Decode(raw)
	if block == nil {
		secret := strings.TrimRight(string(raw), "\r\n")
		if secret == "" {
			return nil, fmt.Errorf("policy: bundle verification key %s is empty", path)
		}
		return &bundle.KeyConfig{Key: secret, Algorithm: "HS256"}, nil
	}
	var pub any
	switch block.Type {
	case "PUBLIC KEY":
		pub, err = x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		pub, err = x509.ParsePKCS1PublicKey(block.Bytes)
	case "CERTIFICATE":
		var c *x509.Certificate
		if c, err = x509.ParseCertificate(block.Bytes); err == nil {
			pub = c.PublicKey
		}
	default:
		return nil, fmt.Errorf("policy: bundle verification key %s: PEM block %q is not a public key", path, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("policy: bundle verification key %s: %w", path, err)
	}
	alg := ""
	switch k := pub.(type) {
	case *rsa.PublicKey:
		alg = "RS256"
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			alg = "ES256"
		case elliptic.P384():
			alg = "ES384"
		case elliptic.P521():
			alg = "ES512"
		}
	}
	if alg == "" {
		return nil, fmt.Errorf("policy: bundle verification key %s: unsupported key type %T (use RSA or ECDSA)", path, pub)
	}
	return &bundle.KeyConfig{Key: string(raw), Algorithm: alg}, nil
}

// fetch returns the bundle when it changed since the last successful fetch.
func (b *bundleSource) fetch(ctx context.Context) (*bundle.Bundle, bool, error) {
	var raw []byte
	var etag string
	var err error
	if b.isURL() {
		raw, etag, err = b.download(ctx)
	} else {
		raw, err = durable.ReadFile(b.loc, maxBundleBytes)
	}
	if err != nil {
		return nil, false, fmt.Errorf("%w: bundle %s: %w", ErrPolicyRejected, b.loc, err)
	}
	if raw == nil { // 304 Not Modified
		return nil, false, nil
	}
	sum := sha256.Sum256(raw)
	hash := hex.EncodeToString(sum[:])[:12]
	if hash == b.lastHash {
		b.etag = etag
		return nil, false, nil
	}
	r := bundle.NewReader(bytes.NewReader(raw)).WithSizeLimitBytes(maxBundleBytes)
	if b.verify != nil {
		r = r.WithBundleVerificationConfig(b.verify)
	} else {
		r = r.WithSkipBundleVerification(true)
	}
	bu, err := r.Read()
	if err != nil {
		return nil, false, fmt.Errorf("%w: bundle %s: %w", ErrPolicyRejected, b.loc, err)
	}
	if b.verify != nil && len(bu.Signatures.Signatures) == 0 {
		return nil, false, fmt.Errorf("%w: bundle %s is not signed", ErrPolicyRejected, b.loc)
	}
	b.etag, b.lastHash = etag, hash
	return &bu, true, nil
}

func (b *bundleSource) download(ctx context.Context) ([]byte, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.loc, nil)
	if err != nil {
		return nil, "", err
	}
	if b.etag != "" {
		req.Header.Set("If-None-Match", b.etag)
	}
	resp, err := b.client.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNotModified:
		return nil, b.etag, nil
	case http.StatusOK:
	default:
		return nil, "", fmt.Errorf("GET: status %s", resp.Status)
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxBundleBytes+1))
	if err != nil {
		return nil, "", err
	}
	if len(raw) > maxBundleBytes {
		return nil, "", fmt.Errorf("bundle larger than %d bytes", maxBundleBytes)
	}
	return raw, resp.Header.Get("ETag"), nil
}
