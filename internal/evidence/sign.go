package evidence

import (
	"archive/zip"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/agentauthz/agentauthz/internal/durable"
)

// A pack is signed with Ed25519 over its exact bytes: NAME.sig holds the raw
// 64-byte signature and NAME.pub.pem the public key (PKIX PEM), so
// `agentauthz audit report-verify NAME` or `openssl pkeyutl -verify` checks
// it. `audit report` writes the three files; the console's download is a zip
// of the same three. Both sign through Sign with a key from LoadSigningKey.

// ErrSignature means a pack does not match its signature.
var ErrSignature = errors.New("the pack does not match its signature")

// Signed is a pack with its detached signature.
type Signed struct {
	Pack   []byte
	Sig    []byte // raw Ed25519 signature of Pack
	PubPEM []byte // the signer's public key, PKIX PEM
}

// Sign signs pack with key.
func Sign(key ed25519.PrivateKey, pack []byte) (*Signed, error) {
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, err
	}
	return &Signed{Pack: pack, Sig: ed25519.Sign(key, pack),
		PubPEM: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})}, nil
}

// WriteFiles writes out, out.sig and out.pub.pem durably.
func (s *Signed) WriteFiles(out string) error {
	for _, f := range s.files(out) {
		if err := durable.WriteFile(f.name, f.data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// WriteZip writes a zip of NAME, NAME.sig and NAME.pub.pem (the files
// WriteFiles writes), each dated at.
func (s *Signed) WriteZip(w io.Writer, name string, at time.Time) error {
	z := zip.NewWriter(w)
	for _, f := range s.files(name) {
		fw, err := z.CreateHeader(&zip.FileHeader{Name: f.name, Method: zip.Deflate, Modified: at})
		if err != nil {
			return err
		}
		if _, err := fw.Write(f.data); err != nil {
			return err
		}
	}
	return z.Close()
}

type file struct {
	name string
	data []byte
}

func (s *Signed) files(name string) []file {
	return []file{{name, s.Pack}, {name + ".sig", s.Sig}, {name + ".pub.pem", s.PubPEM}}
}

// Verify checks that pack matches sig under the public key pubPEM (PKIX
// PEM, Ed25519); ErrSignature when it does not.
func Verify(pack, sig, pubPEM []byte) error {
	blk, _ := pem.Decode(pubPEM)
	if blk == nil {
		return errors.New("no PEM public key")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return err
	}
	key, ok := k.(ed25519.PublicKey)
	if !ok {
		return errors.New("not an Ed25519 public key")
	}
	if len(sig) != ed25519.SignatureSize || !ed25519.Verify(key, pack, sig) {
		return ErrSignature
	}
	return nil
}

// LoadSigningKey reads the Ed25519 private key (PKCS#8 PEM) at path, and
// makes one there (mode 0600) when there is none.
func LoadSigningKey(path string) (ed25519.PrivateKey, error) {
	b, err := durable.ReadFile(path, 64<<10)
	if errors.Is(err, os.ErrNotExist) {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		der, err := x509.MarshalPKCS8PrivateKey(priv)
		if err != nil {
			return nil, err
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, err
		}
		if err := durable.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			return nil, err
		}
		return priv, nil
	}
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%s: no PEM private key", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: not an Ed25519 key", path)
	}
	return priv, nil
}

// SigningKeyPath is where a data directory keeps the key that signs packs:
// `audit report`'s default --sign-key, and the control plane's for the
// console's download.
func SigningKeyPath(dataDir string) string { return filepath.Join(dataDir, "keys", "report.key") }
