// Package boundcache is the one bounded, concurrent cache of the decision
// path (verified identities, decision results, input.agent terms): a
// maintained library behind the two calls the callers make, so that the
// choice (docs/performance.md, "Caches") is made in one place.
package boundcache

import (
	"os"
	"unsafe"

	"github.com/dgraph-io/ristretto/v2"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/maypok86/otter/v2"
)

// Cache holds at most its size of entries; past it, the library's eviction
// policy picks what goes. Safe for concurrent use.
type Cache[K comparable, V any] struct {
	get   func(K) (V, bool)
	set   func(K, V)
	len   func() int
	clear func()
}

// New returns a cache of at most size entries (size >= 1). K must hold no
// pointers or strings (the comparison adapter views its bytes).
func New[K comparable, V any](size int) *Cache[K, V] {
	switch os.Getenv("AGENTAUTHZ_CACHE_IMPL") { // comparison switch, temporary
	case "lru":
		c, err := lru.New[K, V](size)
		if err != nil {
			panic(err)
		}
		return &Cache[K, V]{get: c.Get, set: func(k K, v V) { c.Add(k, v) }, len: c.Len, clear: c.Purge}
	case "ristretto":
		c, err := ristretto.NewCache(&ristretto.Config[string, V]{NumCounters: int64(10 * size), MaxCost: int64(size), BufferItems: 64, IgnoreInternalCost: true})
		if err != nil {
			panic(err)
		}
		str := func(k *K) string { return string(unsafe.Slice((*byte)(unsafe.Pointer(k)), unsafe.Sizeof(*k))) }
		return &Cache[K, V]{get: func(k K) (V, bool) { return c.Get(str(&k)) }, set: func(k K, v V) { c.Set(str(&k), v, 1); c.Wait() },
			len: func() int { return int(c.Metrics.KeysAdded() - c.Metrics.KeysEvicted()) }, clear: c.Clear}
	}
	c := otter.Must(&otter.Options[K, V]{MaximumSize: size})
	return &Cache[K, V]{get: c.GetIfPresent, set: func(k K, v V) { c.Set(k, v) }, len: c.EstimatedSize, clear: c.InvalidateAll}
}

// Get returns the entry for k.
func (c *Cache[K, V]) Get(k K) (V, bool) { return c.get(k) }

// Set stores v for k.
func (c *Cache[K, V]) Set(k K, v V) { c.set(k, v) }

// Len is the number of entries.
func (c *Cache[K, V]) Len() int { return c.len() }

// Clear removes every entry.
func (c *Cache[K, V]) Clear() { c.clear() }
