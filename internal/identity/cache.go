package identity

import (
	"crypto/sha256"
	"sync"
	"time"
	"unsafe"
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
	src   Source
	cert  [sha256.Size]byte // SHA-256 of the forwarded certificate string
	chain [sha256.Size]byte // SHA-256 of the forwarded Chain=; zero when there is none
}

// newCacheKey hashes the forwarded strings. It is on the hit path, so it
// must not copy them: a forwarded certificate is ~1.5 KB.
func newCacheKey(src Source, cert, chain string) cacheKey {
	k := cacheKey{src: src, cert: sha256.Sum256(stringBytes(cert))}
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

// idCache is a bounded map of verified identities. Hits take only a read
// lock and touch no shared state, which keeps them at tens of nanoseconds;
// eviction is therefore random rather than LRU (see evict).
type idCache struct {
	mu  sync.RWMutex
	m   map[cacheKey]cacheEntry
	max int
}

func newIDCache(max int) *idCache {
	return &idCache{m: make(map[cacheKey]cacheEntry), max: max}
}

func (c *idCache) get(k cacheKey, now time.Time) (cacheEntry, bool) {
	c.mu.RLock()
	e, ok := c.m[k]
	c.mu.RUnlock()
	if !ok || now.Before(e.notBefore) || now.After(e.notAfter) {
		return cacheEntry{}, false
	}
	return e, true
}

func (c *idCache) put(k cacheKey, e cacheEntry, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[k]; !ok && len(c.m) >= c.max {
		c.evict(now)
	}
	c.m[k] = e
}

// evict removes one entry. Go's map iteration starts at a random position,
// so the first entry seen is a random victim at O(1) cost; an expired entry
// among the first few seen goes first.
func (c *idCache) evict(now time.Time) {
	var victim cacheKey
	found := false
	n := 0
	for k, e := range c.m {
		if now.Before(e.notBefore) || now.After(e.notAfter) {
			delete(c.m, k)
			return
		}
		if !found {
			victim, found = k, true
		}
		if n++; n == 8 {
			break
		}
	}
	if found {
		delete(c.m, victim)
	}
}

func (c *idCache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}
