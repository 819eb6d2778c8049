package revocation

import (
	"math/big"
	"math/rand/v2"
	"testing"
)

// BenchmarkSerialLookup looks up 4096 random members and 4096 non-members
// of a million ca-shaped serials in turn, so unlike BenchmarkCheck most
// lookups miss the CPU caches, in a SerialSet and, for comparison, in the
// map of Text(16) strings it replaced.
func BenchmarkSerialLookup(b *testing.B) {
	serials := randomSerials(1_000_000)
	set := NewSerialSet(serials...)
	strs := make(map[string]struct{}, len(serials))
	for _, s := range serials {
		strs[s.Text(16)] = struct{}{}
	}
	var hits, misses []string
	r := rand.New(rand.NewPCG(3, 4))
	for range 4096 {
		s := serials[r.IntN(len(serials))]
		hits = append(hits, s.Text(16))
		misses = append(misses, new(big.Int).Add(s, big.NewInt(1)).Text(16))
	}
	for _, q := range []struct {
		name  string
		query []string
		want  bool
	}{{"hit", hits, true}, {"miss", misses, false}} {
		b.Run("SerialSet/"+q.name, func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if set.Contains(q.query[i%len(q.query)]) != q.want {
					b.Fatal("wrong answer")
				}
				i++
			}
		})
		b.Run("map[string]/"+q.name, func(b *testing.B) {
			i := 0
			for b.Loop() {
				if _, ok := strs[q.query[i%len(q.query)]]; ok != q.want {
					b.Fatal("wrong answer")
				}
				i++
			}
		})
	}
}
