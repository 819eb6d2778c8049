package decisionlog

import (
	"crypto/sha256"
	"fmt"
	"math/bits"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
)

// HashSize is the size of every hash in the tree (SHA-256).
const HashSize = sha256.Size

// Hash is a node of the RFC 6962 / RFC 9162 Merkle tree.
type Hash = [HashSize]byte

var hasher = rfc6962.DefaultHasher

// LeafHash is a record's leaf hash: SHA-256(0x00 ‖ record bytes), the
// record bytes being its line without the LF. It is also the "record hash"
// a receipt carries.
func LeafHash(record []byte) Hash {
	return leafHash(nil, record)
}

// leafHash is LeafHash with a scratch buffer for 0x00 ‖ record (the
// writer reuses one: no allocation per record).
func leafHash(scratch *[]byte, record []byte) Hash {
	var buf []byte
	if scratch != nil {
		buf = (*scratch)[:0]
	}
	buf = append(append(buf, 0), record...)
	if scratch != nil {
		*scratch = buf
	}
	return sha256.Sum256(buf)
}

// nodeHash is SHA-256(0x01 ‖ l ‖ r), as rfc6962.HashChildren, without
// allocating.
func nodeHash(l, r []byte) Hash {
	var buf [1 + 2*HashSize]byte
	buf[0] = 1
	copy(buf[1:], l)
	copy(buf[1+HashSize:], r)
	return sha256.Sum256(buf[:])
}

// Tree is the state of a log's Merkle tree: its size and the roots of the
// perfect subtrees that make up [0, size), largest first (an RFC 6962
// compact range), so that appending a leaf costs about one hash and the
// root a few, without allocating. A consumer that receives batches (the
// control plane) keeps one per log and checks each batch's checkpoint
// against it. (TestTreeMatchesCompactRange holds it to
// github.com/transparency-dev/merkle's compact range.)
type Tree struct {
	size   uint64
	hashes []Hash // one per set bit of size, the highest first
}

// NewTree returns the empty tree.
func NewTree() *Tree { return &Tree{} }

// NewTreeFromRange rebuilds a tree of the given size from its compact range
// (what Hashes returns, as a checkpoint line stores it). The caller checks
// the resulting Root against a signed checkpoint before trusting it.
func NewTreeFromRange(size uint64, hashes [][]byte) (*Tree, error) {
	if len(hashes) != bits.OnesCount64(size) {
		return nil, fmt.Errorf("compact range: %d hashes for a tree of %d leaves, want %d", len(hashes), size, bits.OnesCount64(size))
	}
	t := &Tree{size: size, hashes: make([]Hash, len(hashes))}
	for i, h := range hashes {
		if len(h) != HashSize {
			return nil, fmt.Errorf("compact range: a hash of %d bytes", len(h))
		}
		copy(t.hashes[i][:], h)
	}
	return t, nil
}

// Size is the number of leaves.
func (t *Tree) Size() uint64 { return t.size }

// Append adds a leaf hash: each perfect subtree of the size it completes
// is merged with it.
func (t *Tree) Append(leaf Hash) {
	h := leaf
	for s := t.size; s&1 == 1; s >>= 1 {
		last := &t.hashes[len(t.hashes)-1]
		h = nodeHash(last[:], h[:])
		t.hashes = t.hashes[:len(t.hashes)-1]
	}
	t.hashes = append(t.hashes, h)
	t.size++
}

// Root is the RFC 6962 Merkle tree hash of the leaves so far: the subtree
// roots folded from the right (the left child is always the largest
// perfect subtree).
func (t *Tree) Root() Hash {
	if t.size == 0 {
		var out Hash
		copy(out[:], hasher.EmptyRoot())
		return out
	}
	h := t.hashes[len(t.hashes)-1]
	for i := len(t.hashes) - 2; i >= 0; i-- {
		h = nodeHash(t.hashes[i][:], h[:])
	}
	return h
}

// Hashes returns the compact range (copies).
func (t *Tree) Hashes() [][]byte {
	out := make([][]byte, len(t.hashes))
	for i := range t.hashes {
		out[i] = append([]byte(nil), t.hashes[i][:]...)
	}
	return out
}

// Clone returns an independent copy.
func (t *Tree) Clone() *Tree {
	return &Tree{size: t.size, hashes: append([]Hash(nil), t.hashes...)}
}

// set makes t a copy of u, reusing t's storage.
func (t *Tree) set(u *Tree) {
	t.size, t.hashes = u.size, append(t.hashes[:0], u.hashes...)
}

// levels holds every level of the RFC 6962 tree over a few leaves (a
// batch): level 0 is the leaves; a last node without a sibling is carried
// up unchanged, which is how RFC 6962 splits an unbalanced tree. The top
// level holds the root. Building it costs one hash per inner node, and
// every inclusion proof is then read from it without hashing.
type levels [][]Hash

func buildLevels(leaves []Hash) levels {
	inner, depth := 0, 1 // the levels above the leaves hold fewer than len(leaves) nodes: one block
	for n := len(leaves); n > 1; n = (n + 1) / 2 {
		inner += (n + 1) / 2
		depth++
	}
	block := make([]Hash, inner)
	lv := make(levels, 1, depth)
	lv[0] = leaves
	for cur := leaves; len(cur) > 1; {
		next := block[: (len(cur)+1)/2 : (len(cur)+1)/2]
		block = block[len(next):]
		for i := 0; i+1 < len(cur); i += 2 {
			next[i/2] = nodeHash(cur[i][:], cur[i+1][:])
		}
		if len(cur)%2 == 1 {
			next[len(next)-1] = cur[len(cur)-1]
		}
		lv = append(lv, next)
		cur = next
	}
	return lv
}

func (lv levels) root() Hash {
	if len(lv[0]) == 0 {
		var out Hash
		copy(out[:], hasher.EmptyRoot())
		return out
	}
	return lv[len(lv)-1][0]
}

// proof returns the inclusion proof of leaf i (RFC 9162 §2.1.3.1).
func (lv levels) proof(i int) []Hash { return lv.appendProof(make([]Hash, 0, len(lv)-1), i) }

func (lv levels) appendProof(out []Hash, i int) []Hash {
	for _, level := range lv[:len(lv)-1] {
		if s := i ^ 1; s < len(level) {
			out = append(out, level[s])
		}
		i >>= 1
	}
	return out
}

// subtreeRoot is the RFC 6962 hash of leaves (MTH), for proofs over a
// whole log.
func subtreeRoot(leaves []Hash) Hash { return buildLevels(leaves).root() }

// InclusionProof returns the RFC 9162 inclusion proof of leaf index in the
// tree of the first size leaves.
func InclusionProof(leaves []Hash, index, size uint64) ([]Hash, error) {
	if size > uint64(len(leaves)) {
		return nil, fmt.Errorf("tree size %d beyond the %d leaves", size, len(leaves))
	}
	nodes, err := proof.Inclusion(index, size)
	if err != nil {
		return nil, err
	}
	return rehash(leaves, nodes)
}

// ConsistencyProof returns the RFC 9162 consistency proof between the trees
// of the first size1 and size2 leaves.
func ConsistencyProof(leaves []Hash, size1, size2 uint64) ([]Hash, error) {
	if size2 > uint64(len(leaves)) {
		return nil, fmt.Errorf("tree size %d beyond the %d leaves", size2, len(leaves))
	}
	nodes, err := proof.Consistency(size1, size2)
	if err != nil {
		return nil, err
	}
	return rehash(leaves, nodes)
}

func rehash(leaves []Hash, nodes proof.Nodes) ([]Hash, error) {
	hs := make([][]byte, len(nodes.IDs))
	for i, id := range nodes.IDs {
		begin, end := id.Coverage()
		h := subtreeRoot(leaves[begin:end])
		hs[i] = h[:]
	}
	hs, err := nodes.Rehash(hs, func(l, r []byte) []byte { h := nodeHash(l, r); return h[:] })
	if err != nil {
		return nil, err
	}
	out := make([]Hash, len(hs))
	for i, h := range hs {
		copy(out[i][:], h)
	}
	return out, nil
}
