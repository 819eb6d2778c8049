package identity

import (
	"sync"
	"time"
)

// cacheKey is the source plus the certificate string exactly as forwarded
// (URL-encoded PEM). Keying by the forwarded string rather than by the SHA-256
// of the DER, as DESIGN.md suggests, lets a hit skip URL decoding, PEM
// decoding and hashing altogether: Envoy forwards a byte-identical string for
// the same certificate, so the hit rate is the same. Only certificates that
// verified are stored, so an attacker cannot fill the cache with garbage,
// and the map compares whole strings, so a hit is an exact match. The source
// is part of the key because Agent.Source differs.
type cacheKey struct {
	src  Source
	cert string
}

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
