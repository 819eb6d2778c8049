package decisionlog

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	jose "github.com/go-jose/go-jose/v4"
	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
)

// jwsType is the "typ" header of every record (RFC 8725 §3.11 explicit typing).
const jwsType = "agentauthz-record+jws"

// MaxRecordBytes bounds one compact JWS (one log line without its newline).
const MaxRecordBytes = 256 << 10

// Sentinel errors of record decoding and verification.
var (
	ErrMalformed    = errors.New("malformed record")
	ErrUnknownKey   = errors.New("record signed by an unknown key")
	ErrBadSignature = errors.New("record signature invalid")
)

// ChainHash is the value the next record carries in "prev": lowercase hex
// SHA-256 of this record's JWS signing input (everything before the second
// '.'). It excludes the signature so records can be signed in parallel
// while the chain stays strictly ordered.
func ChainHash(jws string) string {
	i := strings.LastIndexByte(jws, '.')
	if i < 0 {
		i = len(jws)
	}
	h := sha256.Sum256([]byte(jws[:i]))
	return hex.EncodeToString(h[:])
}

type jwsHeader struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
	Typ string `json:"typ,omitempty"`
}

// DecodeRecord parses a compact JWS strictly (canonical base64url, header
// alg EdDSA, header kid equal to the record's kid) WITHOUT checking the
// signature. Use VerifyRecord for anything you trust.
func DecodeRecord(jws string) (*Record, error) {
	r, _, err := decode(jws)
	return r, err
}

func decode(jws string) (*Record, jwsHeader, error) {
	var h jwsHeader
	if len(jws) > MaxRecordBytes {
		return nil, h, fmt.Errorf("%w: longer than %d bytes", ErrMalformed, MaxRecordBytes)
	}
	// base64.Strict() still skips CR and LF; a record holds neither (and
	// the chain hashes the bytes as found), so any byte outside the JWS
	// alphabet is refused before decoding.
	for i := 0; i < len(jws); i++ {
		if !isJWSByte(jws[i]) {
			return nil, h, fmt.Errorf("%w: byte 0x%02x at offset %d is not base64url or '.'", ErrMalformed, jws[i], i)
		}
	}
	parts := strings.Split(jws, ".")
	if len(parts) != 3 {
		return nil, h, fmt.Errorf("%w: want 3 dot-separated parts, got %d", ErrMalformed, len(parts))
	}
	hb, err := b64.DecodeString(parts[0])
	if err != nil {
		return nil, h, fmt.Errorf("%w: header: %v", ErrMalformed, err)
	}
	if err := json.Unmarshal(hb, &h); err != nil {
		return nil, h, fmt.Errorf("%w: header: %v", ErrMalformed, err)
	}
	if h.Alg != "EdDSA" {
		return nil, h, fmt.Errorf("%w: alg %q, want EdDSA", ErrMalformed, h.Alg)
	}
	pb, err := b64.DecodeString(parts[1])
	if err != nil {
		return nil, h, fmt.Errorf("%w: payload: %v", ErrMalformed, err)
	}
	sig, err := b64.DecodeString(parts[2])
	if err != nil || len(sig) != ed25519.SignatureSize {
		return nil, h, fmt.Errorf("%w: signature encoding", ErrMalformed)
	}
	var r Record
	if err := json.Unmarshal(pb, &r); err != nil {
		return nil, h, fmt.Errorf("%w: payload: %v", ErrMalformed, err)
	}
	if r.KeyID != h.Kid {
		return nil, h, fmt.Errorf("%w: header kid %q differs from record kid %q", ErrMalformed, h.Kid, r.KeyID)
	}
	if r.Seq == 0 {
		return nil, h, fmt.Errorf("%w: seq 0", ErrMalformed)
	}
	if (r.Kind == KindResponse) != (r.Response != nil) {
		return nil, h, fmt.Errorf("%w: a response record without its response, or a response on another kind", ErrMalformed)
	}
	if r.Kind == KindKeyRotation {
		if err := checkRotation(&r); err != nil {
			return nil, h, err
		}
	}
	r.Index = r.Seq - 1
	return &r, h, nil
}

// checkRotation checks that a key_rotation record announces a well-formed
// key whose kid (and note key, when given) match it.
func checkRotation(r *Record) error {
	if r.KeyRotation == nil {
		return fmt.Errorf("%w: key_rotation record without key_rotation", ErrMalformed)
	}
	x, err := b64.DecodeString(r.KeyRotation.NewKey)
	if err != nil || len(x) != ed25519.PublicKeySize || KeyID(x) != r.KeyRotation.NewKeyID {
		return fmt.Errorf("%w: key_rotation new_key does not match new_kid", ErrMalformed)
	}
	if r.KeyRotation.NoteKey != "" {
		if nk, err := NoteVerifierKey(r.Log, x); err != nil || nk != r.KeyRotation.NoteKey {
			return fmt.Errorf("%w: key_rotation new_note_key does not match new_key", ErrMalformed)
		}
	}
	return nil
}

// VerifyRecord checks a compact JWS against the keys in ks with go-jose and
// returns the decoded record. The signature is checked with the key named by
// the JWS "kid" header.
func VerifyRecord(jws string, ks KeySet) (*Record, error) {
	r, h, err := decode(jws)
	if err != nil {
		return nil, err
	}
	pub, ok := ks[h.Kid]
	if !ok {
		return r, fmt.Errorf("%w: kid %q", ErrUnknownKey, h.Kid)
	}
	obj, err := jose.ParseSignedCompact(jws, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		return r, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if _, err := obj.Verify(pub); err != nil {
		return r, fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	return r, nil
}

// rotationKey returns the public key a rotation record announces.
func rotationKey(r *Record) (ed25519.PublicKey, bool) {
	if r.Kind != KindKeyRotation || r.KeyRotation == nil {
		return nil, false
	}
	x, err := b64.DecodeString(r.KeyRotation.NewKey)
	if err != nil || len(x) != ed25519.PublicKeySize {
		return nil, false
	}
	return ed25519.PublicKey(x), true
}

// signingInput returns BASE64URL(header) '.' BASE64URL(payload), with room
// for finish to add the signature and the line's LF.
func (k *signingKey) signingInput(payload []byte) []byte {
	n := len(k.header) + 1 + b64.EncodedLen(len(payload))
	buf := make([]byte, n, n+1+b64.EncodedLen(ed25519.SignatureSize)+1)
	copy(buf, k.header)
	buf[len(k.header)] = '.'
	b64.Encode(buf[len(k.header)+1:], payload)
	return buf
}

// finish signs the signing input and returns the log line (the compact JWS
// and its LF, in input's array) and the JWS as a string.
func (k *signingKey) finish(input []byte) (line []byte, jws string) {
	// curve25519-voi signs in about half crypto/ed25519's time
	// (docs/performance.md); Ed25519 signatures are deterministic, so the
	// bytes are the same (TestSignerMatchesStdlib). Verification stays on
	// crypto/ed25519.
	sig := voi.Sign(voi.PrivateKey(k.priv), input)
	n := len(input)
	out := append(input, '.')
	out = out[:n+1+b64.EncodedLen(len(sig))]
	b64.Encode(out[n+1:], sig)
	jws = string(out)
	return append(out, '\n'), jws
}

func isJWSByte(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'
}
