// Package boundcache is the one bounded, concurrent cache of the decision
// path (verified identities, decision results, input.agent terms), so that
// the library and its settings are chosen in one place: otter's W-TinyLFU
// cache, chosen over golang-lru's LRU and ristretto by the fleet curve
// (docs/performance.md, "Caches").
package boundcache

import "github.com/maypok86/otter/v2"

// Cache holds at most its size of entries (eviction may trail a write by a
// moment); past it, the entries least likely to be asked for again go.
// Reads take no lock. Safe for concurrent use.
type Cache[K comparable, V any] struct {
	c *otter.Cache[K, V]
}

// New returns a cache of at most size entries (size >= 1).
func New[K comparable, V any](size int) *Cache[K, V] {
	return &Cache[K, V]{c: otter.Must(&otter.Options[K, V]{MaximumSize: size})}
}

// Get returns the entry for k.
func (c *Cache[K, V]) Get(k K) (V, bool) { return c.c.GetIfPresent(k) }

// Set stores v for k.
func (c *Cache[K, V]) Set(k K, v V) { c.c.Set(k, v) }

// Len is the number of entries.
func (c *Cache[K, V]) Len() int { return c.c.EstimatedSize() }

// Clear removes every entry.
func (c *Cache[K, V]) Clear() { c.c.InvalidateAll() }
