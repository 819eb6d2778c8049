package decisionlog

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/transparency-dev/merkle/proof"
	"golang.org/x/mod/sumdb/note"
)

// The compact receipt (x-agent-receipt) is base64url, without padding, of:
//
//	0x02                          format version (decision log v2)
//	uvarint len(origin) ‖ origin  the log's name, the checkpoint's origin
//	uvarint index                 the record's leaf index
//	uvarint size                  the checkpoint's tree size
//	uvarint batch start           the checkpoint's batch start
//	[32] root                     the checkpoint's root hash
//	[32] record hash              SHA-256(0x00 ‖ record line)
//	uint8 n ‖ n × [32]            inclusion proof of the record in its batch
//	[4] key hash ‖ [64] signature the checkpoint's note signature
//
// The verifier computes the batch root from the record hash and the proof
// (RFC 9162 §2.1.3.2, leaf index-batch start in a tree of size-batch start
// leaves), rebuilds the checkpoint's note text from it, and checks the
// Ed25519 note signature. No byte may follow. With MaxBatch = 128 (n ≤ 7)
// and a 64-byte origin it is at most 591 characters up to 2^42 records.
const receiptVersion = 2

// MaxReceiptBytes bounds a receipt header value.
const MaxReceiptBytes = 1024

var errReceipt = errors.New("bad receipt")

// CompactReceipt is a decoded receipt.
type CompactReceipt struct {
	Checkpoint Checkpoint // its BatchRoot is computed by Verify
	Index      uint64
	RecordHash Hash
	Proof      []Hash
	KeyHash    uint32
	Signature  []byte
}

// Encode returns the header value.
func (r *CompactReceipt) Encode() string {
	c := r.Checkpoint
	var arr [1 + 1 + maxOriginBytes + 3*binary.MaxVarintLen64 + 2*HashSize + 1 + 8*HashSize + 4 + ed25519.SignatureSize]byte
	b := arr[:0] // on the stack: the string at the end is the one allocation
	b = append(b, receiptVersion)
	b = binary.AppendUvarint(b, uint64(len(c.Origin)))
	b = append(b, c.Origin...)
	b = binary.AppendUvarint(b, r.Index)
	b = binary.AppendUvarint(b, c.Size)
	b = binary.AppendUvarint(b, c.BatchStart)
	b = append(b, c.Root[:]...)
	b = append(b, r.RecordHash[:]...)
	b = append(b, byte(len(r.Proof)))
	for _, h := range r.Proof {
		b = append(b, h[:]...)
	}
	b = binary.BigEndian.AppendUint32(b, r.KeyHash)
	b = append(b, r.Signature...)
	var enc [(len(arr)*8 + 5) / 6]byte // base64url without padding, on the stack too
	n := base64.RawURLEncoding.EncodedLen(len(b))
	if n > len(enc) { // a proof or signature longer than a log writes
		return base64.RawURLEncoding.EncodeToString(b)
	}
	base64.RawURLEncoding.Encode(enc[:n], b)
	return string(enc[:n])
}

// ParseReceipt decodes a header value strictly. It does not verify it.
func ParseReceipt(s string) (*CompactReceipt, error) {
	if len(s) > MaxReceiptBytes {
		return nil, fmt.Errorf("%w: longer than %d bytes", errReceipt, MaxReceiptBytes)
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil || base64.RawURLEncoding.EncodeToString(b) != s {
		return nil, fmt.Errorf("%w: not canonical base64url", errReceipt)
	}
	if len(b) == 0 || b[0] != receiptVersion {
		return nil, fmt.Errorf("%w: unknown version (a v1 receipt is a JWS: use a v1 verifier)", errReceipt)
	}
	b = b[1:]
	uv := func() uint64 {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			err = fmt.Errorf("%w: truncated", errReceipt)
			return 0
		}
		b = b[n:]
		return v
	}
	take := func(n int) []byte {
		if err != nil || len(b) < n {
			err = fmt.Errorf("%w: truncated", errReceipt)
			return make([]byte, n)
		}
		out := b[:n]
		b = b[n:]
		return out
	}
	r := &CompactReceipt{}
	on := uv()
	if err == nil && on > maxOriginBytes {
		return nil, fmt.Errorf("%w: origin longer than %d bytes", errReceipt, maxOriginBytes)
	}
	r.Checkpoint.Origin = string(take(int(on)))
	r.Index = uv()
	r.Checkpoint.Size = uv()
	r.Checkpoint.BatchStart = uv()
	copy(r.Checkpoint.Root[:], take(HashSize))
	copy(r.RecordHash[:], take(HashSize))
	n := int(take(1)[0])
	if n > 8 {
		return nil, fmt.Errorf("%w: proof of %d hashes", errReceipt, n)
	}
	for range n {
		var h Hash
		copy(h[:], take(HashSize))
		r.Proof = append(r.Proof, h)
	}
	r.KeyHash = binary.BigEndian.Uint32(take(4))
	r.Signature = append([]byte(nil), take(ed25519.SignatureSize)...)
	if err != nil {
		return nil, err
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the signature", errReceipt, len(b))
	}
	c := r.Checkpoint
	if !validOrigin(c.Origin) || c.BatchStart > r.Index || r.Index >= c.Size || c.Size-c.BatchStart > MaxBatch {
		return nil, fmt.Errorf("%w: origin %q, index %d outside its batch %d..%d", errReceipt, c.Origin, r.Index, c.BatchStart, c.Size)
	}
	return r, nil
}

// signedNote is the checkpoint as the log signed it.
func (r *CompactReceipt) signedNote() []byte {
	sig := binary.BigEndian.AppendUint32(nil, r.KeyHash)
	sig = append(sig, r.Signature...)
	return []byte(r.Checkpoint.Text() + "\n\u2014 " + r.Checkpoint.Origin + " " + base64.StdEncoding.EncodeToString(sig) + "\n")
}

// Verify computes the batch root from the record hash and the proof, and
// checks the checkpoint's signature with verifiers (see NoteVerifiers). On
// success r.Checkpoint is complete and SignedCheckpoint returns the note.
func (r *CompactReceipt) Verify(verifiers note.Verifiers) error {
	c := &r.Checkpoint
	proofs := make([][]byte, len(r.Proof))
	for i := range r.Proof {
		proofs[i] = r.Proof[i][:]
	}
	br, err := proof.RootFromInclusionProof(hasher, r.Index-c.BatchStart, c.Size-c.BatchStart, r.RecordHash[:], proofs)
	if err != nil {
		return fmt.Errorf("%w: inclusion proof: %v", errReceipt, err)
	}
	copy(c.BatchRoot[:], br)
	got, _, err := OpenCheckpoint(r.signedNote(), verifiers)
	if err != nil {
		return fmt.Errorf("%w: %v", errReceipt, err)
	}
	if got != *c {
		return fmt.Errorf("%w: checkpoint does not round-trip", errReceipt)
	}
	return nil
}

// SignedCheckpoint is the signed note the receipt carries (complete after
// Verify).
func (r *CompactReceipt) SignedCheckpoint() []byte { return r.signedNote() }

// VerifyReceipt parses and verifies a header value with the log's keys.
func VerifyReceipt(header string, ks KeySet) (*CompactReceipt, error) {
	r, err := ParseReceipt(header)
	if err != nil {
		return nil, err
	}
	vs, err := NoteVerifiers(r.Checkpoint.Origin, ks)
	if err != nil {
		return nil, err
	}
	return r, r.Verify(vs)
}
