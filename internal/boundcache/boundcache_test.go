package boundcache

import (
	"testing"
	"time"
)

// The cache never holds more than its size for long, and keeps what it is
// given until then.
func TestBounded(t *testing.T) {
	for _, size := range []int{1, 3, 100} {
		c := New[[8]byte, int](size)
		for i := range 10 * size {
			k := [8]byte{byte(i), byte(i >> 8)}
			c.Set(k, i)
			if v, ok := c.Get(k); !ok || v != i {
				t.Fatalf("size %d: entry %d not kept: %v, %v", size, i, v, ok)
			}
		}
		deadline := time.Now().Add(5 * time.Second)
		for c.Len() > size {
			if time.Now().After(deadline) {
				t.Fatalf("size %d: holds %d entries", size, c.Len())
			}
			time.Sleep(time.Millisecond)
		}
		t.Logf("size %d: %d", size, c.Len())
	}
}
