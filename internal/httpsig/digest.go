package httpsig

import (
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
)

// ErrDigest is returned when Content-Digest is missing, malformed or does
// not match the body.
var ErrDigest = errors.New("content-digest")

// ContentDigestSHA256 formats an RFC 9530 Content-Digest value from a
// SHA-256 sum.
func ContentDigestSHA256(sum []byte) string {
	b := make([]byte, 0, 9+44+1)
	b = append(b, "sha-256=:"...)
	b = base64.StdEncoding.AppendEncode(b, sum)
	return string(append(b, ':'))
}

// DigestBody returns the sha-256 Content-Digest value of body.
func DigestBody(body []byte) string {
	s := sha256.Sum256(body)
	return ContentDigestSHA256(s[:])
}

// CheckContentDigest verifies value against body: every sha-256 and sha-512
// member must match, and at least one of them must be present. Other
// algorithms are ignored (RFC 9530 §2: a recipient may ignore algorithms
// it does not support), but are not enough on their own.
func CheckContentDigest(value string, body []byte) error {
	d, err := ParseDictionary(value)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrDigest, err)
	}
	checked := 0
	for _, m := range d {
		var h hash.Hash
		switch m.Key {
		case "sha-256":
			h = sha256.New()
		case "sha-512":
			h = sha512.New()
		default:
			continue
		}
		if m.Item == nil {
			return fmt.Errorf("%w: %s is not a byte sequence", ErrDigest, m.Key)
		}
		want, ok := m.Item.Value.([]byte)
		if !ok {
			return fmt.Errorf("%w: %s is not a byte sequence", ErrDigest, m.Key)
		}
		h.Write(body)
		if subtle.ConstantTimeCompare(h.Sum(nil), want) != 1 {
			return fmt.Errorf("%w: %s does not match the body", ErrDigest, m.Key)
		}
		checked++
	}
	if checked == 0 {
		return fmt.Errorf("%w: no sha-256 or sha-512 digest", ErrDigest)
	}
	return nil
}
