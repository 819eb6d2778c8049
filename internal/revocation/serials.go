package revocation

import (
	"encoding/binary"
	"hash/maphash"
	"iter"
	"math/big"
	"math/bits"
	"slices"
)

// maxCompactSerial is the longest serial magnitude, in bytes, held in a
// SerialSet's compact table: RFC 5280 caps serials at 20 octets (a positive
// 20-octet serial has a 20-byte magnitude even when its DER needs a leading
// zero octet).
const maxCompactSerial = 20

// serialsPerBucket is the average number of keys per hash bucket. Each bucket
// costs a uint32 offset, so this trades 4/serialsPerBucket bytes per serial
// against the keys scanned per lookup.
const serialsPerBucket = 2

// SerialSet is an immutable set of certificate serial numbers, compared by
// value (as x509 parses them: DER's minimal two's-complement encoding
// normalised to a big.Int) and looked up in the form of identity.Agent.Serial
// (big.Int.Text(16): lowercase hex without leading zeros, "-" before a
// negative serial). A lookup finds exactly the strings that a set of the
// serials' Text(16) forms would.
//
// Serials from 0 to 2^160-1 (every RFC 5280 serial) are held as their
// big-endian magnitude left-padded to the set's width (the longest magnitude
// it holds) in one flat byte slice, grouped into buckets of about
// serialsPerBucket keys by a seeded hash of their Text(16) form: with 16-byte
// serials that is 18 bytes per serial, and nothing for the garbage collector
// to scan. A lookup hashes the query string as it is and compares it with
// the hex form of the keys in one bucket, so it costs the same whatever the
// size of the set and does not allocate. Serials that do not fit (negative,
// which x509 accepts in CRLs, or longer than 20 bytes, which some CAs emit)
// are kept in a map by their Text(16) form, so none is ever dropped or
// truncated into another.
type SerialSet struct {
	width int    // bytes per compact key; 0 when there are none
	keys  []byte // compact keys, width bytes each, grouped by bucket
	// start[b] is the index of bucket b's first key; len(start) is the
	// number of buckets plus one (0 when there are no compact keys).
	start []uint32
	seed  maphash.Seed
	other map[string]struct{} // Text(16) of serials outside the compact range
}

// NewSerialSet returns the set of serials; nil entries are skipped.
func NewSerialSet(serials ...*big.Int) *SerialSet {
	s, _ := newSerialSet(func(yield func(*big.Int)) error {
		for _, v := range serials {
			if v != nil {
				yield(v)
			}
		}
		return nil
	})
	return s
}

// newSerialSet builds the set of the serials each yields. It calls each
// three times (to size the set, count each bucket, then fill it), and each
// must yield the same serials every time; it may yield one big.Int
// overwritten each time, as nothing yielded is kept. So a CRL's serials go
// from its DER to the set without a big.Int per entry. An error from each is
// returned as is. Apart from the set itself it allocates only the
// per-bucket write cursors (2 bytes per serial): keys are written straight
// into their final place with big.Int.FillBytes, and hashed from a stack
// buffer.
func newSerialSet(each func(yield func(*big.Int)) error) (*SerialSet, error) {
	s := &SerialSet{seed: maphash.MakeSeed()}
	compact := 0
	err := each(func(v *big.Int) {
		if !fitsCompact(v) {
			if s.other == nil {
				s.other = map[string]struct{}{}
			}
			s.other[v.Text(16)] = struct{}{}
			return
		}
		compact++
		s.width = max(s.width, (v.BitLen()+7)/8, 1)
	})
	if err != nil {
		return nil, err
	}
	if compact == 0 {
		return s, nil
	}
	w := s.width
	buckets := compact/serialsPerBucket + 1
	s.start = make([]uint32, buckets+1)
	s.keys = make([]byte, compact*w)
	var buf [maxCompactSerial]byte
	var text [2 * maxCompactSerial]byte
	key := buf[:w]
	bucket := func(v *big.Int) int {
		v.FillBytes(key)
		hi, _ := bits.Mul64(maphash.Bytes(s.seed, appendKeyText(text[:0], key)), uint64(buckets))
		return int(hi)
	}
	// Counting sort by bucket: count, prefix-sum, then place.
	err = each(func(v *big.Int) {
		if fitsCompact(v) {
			s.start[bucket(v)+1]++
		}
	})
	if err != nil {
		return nil, err
	}
	for b := 1; b <= buckets; b++ {
		s.start[b] += s.start[b-1]
	}
	next := slices.Clone(s.start[:buckets])
	err = each(func(v *big.Int) {
		if fitsCompact(v) {
			b := bucket(v)
			copy(s.keys[int(next[b])*w:], key)
			next[b]++
		}
	})
	if err != nil {
		return nil, err
	}
	// A CRL may list a serial twice; keep each once so Len counts serials.
	kept := 0
	for b := range buckets {
		lo, hi := int(s.start[b]), int(s.start[b+1])
		s.start[b] = uint32(kept)
		first := kept
	entries:
		for i := lo; i < hi; i++ {
			k := s.keys[i*w : (i+1)*w]
			for j := first; j < kept; j++ {
				if string(s.keys[j*w:(j+1)*w]) == string(k) {
					continue entries
				}
			}
			copy(s.keys[kept*w:], k)
			kept++
		}
	}
	s.start[buckets] = uint32(kept)
	if kept < compact {
		s.keys = slices.Clone(s.keys[:kept*w])
	}
	return s, nil
}

// fitsCompact reports whether v belongs in the compact table.
func fitsCompact(v *big.Int) bool {
	return v.Sign() >= 0 && v.BitLen() <= 8*maxCompactSerial
}

// Len returns the number of distinct serials in the set.
func (s *SerialSet) Len() int {
	if s == nil {
		return 0
	}
	n := len(s.other)
	if s.width > 0 {
		n += len(s.keys) / s.width
	}
	return n
}

// Contains reports whether the set holds the serial given in the form of
// identity.Agent.Serial (big.Int.Text(16)). Any other spelling of a serial
// (upper case, leading zeros, a 0x prefix) is not found, as with a set of
// strings. It does not allocate.
func (s *SerialSet) Contains(serial string) bool {
	if s == nil {
		return false
	}
	w := s.width
	if len(serial) > 2*w || serial == "" || serial[0] == '-' {
		// Not the hex form of a compact key.
		if s.other == nil {
			return false
		}
		_, ok := s.other[serial]
		return ok
	}
	hi, _ := bits.Mul64(maphash.String(s.seed, serial), uint64(len(s.start)-1))
	for i := int(s.start[hi]); i < int(s.start[hi+1]); i++ {
		if keyTextIs(s.keys[i*w:(i+1)*w], serial) {
			return true
		}
	}
	return false
}

// All yields every serial in the set in Text(16) form, in no particular
// order.
func (s *SerialSet) All() iter.Seq[string] {
	return func(yield func(string) bool) {
		if s == nil {
			return
		}
		var text [2 * maxCompactSerial]byte
		for i := 0; s.width > 0 && i < len(s.keys); i += s.width {
			if !yield(string(appendKeyText(text[:0], s.keys[i:i+s.width]))) {
				return
			}
		}
		for h := range s.other {
			if !yield(h) {
				return
			}
		}
	}
}

const hexDigits = "0123456789abcdef"

// appendKeyText appends the Text(16) form of the big-endian magnitude key:
// lowercase hex without leading zeros, "0" for zero.
func appendKeyText(dst, key []byte) []byte {
	for len(key) > 1 && key[0] == 0 {
		key = key[1:]
	}
	if key[0] < 0x10 {
		dst = append(dst, hexDigits[key[0]])
		key = key[1:]
	}
	for _, b := range key {
		dst = append(dst, hexDigits[b>>4], hexDigits[b&0xf])
	}
	return dst
}

// keyTextIs reports whether s is appendKeyText of key, without building it.
func keyTextIs(key []byte, s string) bool {
	for len(key) > 1 && key[0] == 0 {
		key = key[1:]
	}
	if key[0] < 0x10 {
		if len(s) != 2*len(key)-1 || s[0] != hexDigits[key[0]] {
			return false
		}
		key, s = key[1:], s[1:]
	} else if len(s) != 2*len(key) {
		return false
	}
	// Eight digits at a time while they last.
	for len(key) >= 4 {
		if hex4(key) != le64(s) {
			return false
		}
		key, s = key[4:], s[8:]
	}
	for i, b := range key {
		if s[2*i] != hexDigits[b>>4] || s[2*i+1] != hexDigits[b&0xf] {
			return false
		}
	}
	return true
}

// hex4 returns the eight lowercase hex digits of key[:4] as the little-endian
// uint64 of their ASCII bytes.
func hex4(key []byte) uint64 {
	v := uint64(binary.BigEndian.Uint32(key))
	// Spread the 8 nibbles into the 8 bytes, most significant nibble
	// first in memory (lowest byte).
	x := (v&0xff000000)>>24 | (v&0x00ff0000)<<0 | (v&0x0000ff00)<<24 | (v&0x000000ff)<<48
	n := (x>>4)&0x000f000f000f000f | (x&0x000f000f000f000f)<<8
	// '0'+n for n < 10, 'a'-10+n above.
	letters := ((n + 0x0606060606060606) >> 4) & 0x0101010101010101
	return n + 0x3030303030303030 + letters*('a'-'0'-10)
}

// le64 is binary.LittleEndian.Uint64 of s[:8], without converting s to a
// slice (the compiler makes it one load).
func le64(s string) uint64 {
	_ = s[7]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}
