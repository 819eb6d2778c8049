package identity

import (
	"crypto/sha256"
	"time"
	"unsafe"

	"github.com/agentauthz/agentauthz/internal/boundcache"
)

// cacheKey identifies a forwarded identity: the source plus the SHA-256 of
// the certificate string and of the Chain= string exactly as forwarded
// (URL-encoded PEM), as docs/design.md asks. Hashing the forwarded bytes rather
// than the DER lets a hit skip URL decoding, PEM decoding and parsing; it
// costs one SHA-256 pass over the ~1.5 KB string, and the cache holds 64
// bytes of digest per entry instead of the string. The key keeps the
// exact-match semantics of the strings themselves: two strings with one
// digest cannot be found, so a string that differs in any byte, or comes with
// another Chain=, is another key, and a hit answers what verifying the same
// strings would. The two strings are hashed separately so that moving bytes
// from one to the other cannot give the same key. Only verified identities
// are stored, so an attacker cannot fill the cache with garbage. The source
// is part of the key because Agent.Source differs.
type cacheKey struct {
	src   uint8             // sourceCode
	cert  [sha256.Size]byte // SHA-256 of the forwarded certificate string
	chain [sha256.Size]byte // SHA-256 of the forwarded Chain=; zero when there is none
}

// sourceCode numbers the sources for cacheKey, which holds only bytes.
func sourceCode(src Source) uint8 {
	switch src {
	case SourcePeerCertificate:
		return 1
	case SourceXFCC:
		return 2
	}
	return 3
}

// newCacheKey hashes the forwarded strings. It is on the hit path, so it
// must not copy them: a forwarded certificate is ~1.5 KB.
func newCacheKey(src Source, cert, chain string) cacheKey {
	k := cacheKey{src: sourceCode(src), cert: sha256.Sum256(stringBytes(cert))}
	if chain != "" {
		k.chain = sha256.Sum256(stringBytes(chain))
	}
	return k
}

// stringBytes views s as a byte slice without copying ([]byte(s) allocates a
// copy of anything over 32 bytes). The slice must only be read: sha256.Sum256
// reads it and does not keep it.
func stringBytes(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

type cacheEntry struct {
	agent     *Agent
	notBefore time.Time // latest NotBefore in the verified chain
	notAfter  time.Time // earliest NotAfter in the verified chain
}

// idCache is a bounded cache of verified identities; past its size, the
// library's eviction policy chooses (docs/performance.md, "Caches").
type idCache struct {
	m *boundcache.Cache[cacheKey, cacheEntry]
}

func newIDCache(max int) *idCache {
	return &idCache{m: boundcache.New[cacheKey, cacheEntry](max)}
}

// get returns the entry for k while now is within its chain's validity; an
// expired entry stays until evicted, but is never answered.
func (c *idCache) get(k cacheKey, now time.Time) (cacheEntry, bool) {
	e, ok := c.m.Get(k)
	if !ok || now.Before(e.notBefore) || now.After(e.notAfter) {
		return cacheEntry{}, false
	}
	return e, true
}

func (c *idCache) put(k cacheKey, e cacheEntry) { c.m.Set(k, e) }

func (c *idCache) len() int { return c.m.Len() }
