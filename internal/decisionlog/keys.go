package decisionlog

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/mod/sumdb/note"

	"github.com/agentauthz/agentauthz/internal/durable"
)

// maxKeyFileBytes bounds every key file and key set we read.
const maxKeyFileBytes = 1 << 20

// Private key files in KeyDir are "ed25519-<kid>.key" (the prefix keeps a
// kid starting with '-' from looking like a command-line flag).
const (
	keyFilePrefix = "ed25519-"
	keyFileSuffix = ".key"
)

// currentKeyFile holds the kid of the key that signs new records of an empty
// log; a non-empty log names its own key (see Open).
const currentKeyFile = "current"

var b64 = base64.RawURLEncoding.Strict()

// KeyID returns the RFC 7638 JWK thumbprint (SHA-256, base64url) of an
// Ed25519 public key; it is the "kid" of every record the key signs.
func KeyID(pub ed25519.PublicKey) string {
	// RFC 7638 §3.2: required members in lexicographic order, no whitespace.
	h := sha256.Sum256([]byte(`{"crv":"Ed25519","kty":"OKP","x":"` + b64.EncodeToString(pub) + `"}`))
	return b64.EncodeToString(h[:])
}

// signingKey is a private key with its kid and precomputed JWS header.
type signingKey struct {
	kid    string
	priv   ed25519.PrivateKey
	header string // base64url of the protected header
}

func newSigningKey(priv ed25519.PrivateKey) *signingKey {
	pub := priv.Public().(ed25519.PublicKey)
	kid := KeyID(pub)
	hdr, _ := json.Marshal(struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		Typ string `json:"typ"`
	}{"EdDSA", kid, jwsType})
	return &signingKey{kid: kid, priv: priv, header: b64.EncodeToString(hdr)}
}

func (k *signingKey) public() ed25519.PublicKey { return k.priv.Public().(ed25519.PublicKey) }

// KeySet maps kid to Ed25519 public key.
type KeySet map[string]ed25519.PublicKey

// Add inserts pub under its thumbprint kid.
func (ks KeySet) Add(pub ed25519.PublicKey) string {
	kid := KeyID(pub)
	ks[kid] = pub
	return kid
}

// KIDs returns the key ids, sorted.
func (ks KeySet) KIDs() []string {
	out := make([]string, 0, len(ks))
	for k := range ks {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// JWK is one RFC 7517 / RFC 8037 OKP public key.
type JWK struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Kid string `json:"kid,omitempty"`
	Alg string `json:"alg,omitempty"`
	Use string `json:"use,omitempty"`
}

// JWKS is an RFC 7517 JWK Set.
type JWKS struct {
	Keys []JWK `json:"keys"`
}

// JWKS returns the set as an RFC 7517 JWK Set, sorted by kid.
func (ks KeySet) JWKS() JWKS {
	out := JWKS{Keys: []JWK{}}
	for _, kid := range ks.KIDs() {
		out.Keys = append(out.Keys, JWK{Kty: "OKP", Crv: "Ed25519", X: b64.EncodeToString(ks[kid]), Kid: kid, Alg: "EdDSA", Use: "sig"})
	}
	return out
}

// PEM returns every key as a PEM "PUBLIC KEY" (PKIX) block, sorted by kid.
// No PEM headers: openssl would read them as encryption parameters.
func (ks KeySet) PEM() []byte {
	var out []byte
	for _, kid := range ks.KIDs() {
		der, err := x509.MarshalPKIXPublicKey(ks[kid])
		if err != nil {
			continue // cannot happen for a valid Ed25519 key
		}
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})...)
	}
	return out
}

// ParseKeySet reads Ed25519 public keys from PEM ("PUBLIC KEY" blocks, or a
// "CERTIFICATE" with an Ed25519 key), a JWK Set, a single JWK, or signed-note
// verifier keys ("<name>+<hash>+<base64>", one per line, as witnesses are
// configured).
func ParseKeySet(data []byte) (KeySet, error) {
	if len(data) > maxKeyFileBytes {
		return nil, errors.New("key set too large")
	}
	ks := KeySet{}
	trimmed := strings.TrimSpace(string(data))
	if strings.HasPrefix(trimmed, "{") {
		var set struct {
			Keys []JWK `json:"keys"`
			JWK
		}
		if err := json.Unmarshal(data, &set); err != nil {
			return nil, fmt.Errorf("parse JWKS: %w", err)
		}
		if set.Keys == nil && set.Kty != "" {
			set.Keys = []JWK{set.JWK}
		}
		for _, k := range set.Keys {
			if k.Kty != "OKP" || k.Crv != "Ed25519" {
				continue
			}
			x, err := b64.DecodeString(k.X)
			if err != nil || len(x) != ed25519.PublicKeySize {
				return nil, fmt.Errorf("JWK %q: bad Ed25519 x", k.Kid)
			}
			ks.Add(ed25519.PublicKey(x))
		}
	} else if !strings.Contains(trimmed, "-----BEGIN") && strings.Contains(trimmed, "+") {
		for _, vk := range strings.Fields(trimmed) {
			v, err := note.NewVerifier(vk)
			if err != nil {
				return nil, fmt.Errorf("note verifier key: %w", err)
			}
			parts := strings.SplitN(vk, "+", 3) // a name holds no '+'; the base64 may
			raw, err := base64.StdEncoding.DecodeString(parts[2])
			if err != nil || len(raw) != 1+ed25519.PublicKeySize || raw[0] != 1 {
				return nil, fmt.Errorf("note verifier key %q: not an Ed25519 key", v.Name())
			}
			ks.Add(ed25519.PublicKey(raw[1:]))
		}
	} else {
		rest := data
		for {
			var blk *pem.Block
			blk, rest = pem.Decode(rest)
			if blk == nil {
				break
			}
			var pub any
			var err error
			switch blk.Type {
			case "PUBLIC KEY":
				pub, err = x509.ParsePKIXPublicKey(blk.Bytes)
			case "CERTIFICATE":
				var c *x509.Certificate
				if c, err = x509.ParseCertificate(blk.Bytes); err == nil {
					pub = c.PublicKey
				}
			default:
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("parse %s: %w", blk.Type, err)
			}
			if p, ok := pub.(ed25519.PublicKey); ok {
				ks.Add(p)
			}
		}
	}
	if len(ks) == 0 {
		return nil, errors.New("no Ed25519 public key found (want PEM PUBLIC KEY or JWKS)")
	}
	return ks, nil
}

// LoadKeySet returns the public keys of every signing key in keyDir.
func LoadKeySet(keyDir string) (KeySet, error) {
	keys, err := loadSigningKeys(keyDir)
	if err != nil {
		return nil, err
	}
	ks := KeySet{}
	for _, k := range keys {
		ks.Add(k.public())
	}
	return ks, nil
}

// loadSigningKeys reads every "<kid>.key" file in dir.
func loadSigningKeys(dir string) (map[string]*signingKey, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read key dir: %w", err)
	}
	out := map[string]*signingKey{}
	for _, e := range ents {
		if e.IsDir() || !strings.HasSuffix(e.Name(), keyFileSuffix) {
			continue
		}
		k, err := readSigningKey(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		out[k.kid] = k
	}
	return out, nil
}

// checkKeyPerms refuses signing keys readable by group or others: whoever
// can read one can forge records.
func checkKeyPerms(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read key dir: %w", err)
	}
	for _, e := range ents {
		if e.IsDir() || !strings.HasSuffix(e.Name(), keyFileSuffix) {
			continue
		}
		st, err := os.Stat(filepath.Join(dir, e.Name()))
		if err != nil {
			return fmt.Errorf("stat signing key: %w", err)
		}
		if st.Mode().Perm()&0o077 != 0 {
			return fmt.Errorf("signing key %s has mode %04o, want 0600 (chmod 600 %s)", filepath.Join(dir, e.Name()), st.Mode().Perm(), filepath.Join(dir, e.Name()))
		}
	}
	return nil
}

func readSigningKey(path string) (*signingKey, error) {
	data, err := durable.ReadFile(path, maxKeyFileBytes)
	if err != nil {
		return nil, fmt.Errorf("read signing key: %w", err)
	}
	blk, _ := pem.Decode(data)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("signing key %s: no PEM PRIVATE KEY block", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", path, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("signing key %s: not Ed25519", path)
	}
	return newSigningKey(priv), nil
}

// generateSigningKey makes a new key and writes it durably as <kid>.key, 0600.
func generateSigningKey(dir string) (*signingKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate signing key: %w", err)
	}
	k := newSigningKey(priv)
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("encode signing key: %w", err)
	}
	if err := durable.WriteFile(filepath.Join(dir, keyFilePrefix+k.kid+keyFileSuffix), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, fmt.Errorf("write signing key: %w", err)
	}
	return k, nil
}

// JWKSHandler serves the public keys as an RFC 7517 JWK Set.
func jwksHandler(keys func() KeySet) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		body, err := json.Marshal(keys().JWKS())
		if err != nil {
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.Header().Set("Cache-Control", "max-age=60")
		_, _ = w.Write(body)
	})
}
