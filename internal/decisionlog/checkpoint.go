package decisionlog

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
	"golang.org/x/mod/sumdb/note"
)

// MaxBatch is the most records one checkpoint covers. A group-commit batch
// with more records gets one checkpoint per MaxBatch of them, all in the
// same write and flush; it bounds a receipt's proof to 7 hashes.
const MaxBatch = 128

// maxOriginBytes bounds a log name (the checkpoint origin): with MaxBatch it
// keeps a receipt under 600 bytes for a log of 2^40 records.
const maxOriginBytes = 64

// ErrCheckpoint is wrapped by every checkpoint parsing or verification error.
var ErrCheckpoint = errors.New("bad checkpoint")

// Checkpoint is the note text of a signed checkpoint: a C2SP tlog-checkpoint
// (origin, tree size, root hash) with one extension line that names the
// group-commit batch it ends and that batch's own RFC 6962 root:
//
//	<origin>
//	<size>
//	<base64 root>
//	batch <first index of the batch> <base64 root of the batch's leaves>
//
// The batch line lets a receipt prove its record with a proof inside the
// batch (at most 7 hashes) instead of one through the whole log (up to 64).
type Checkpoint struct {
	Origin     string
	Size       uint64
	Root       Hash
	BatchStart uint64
	BatchRoot  Hash
}

// Text is the note text (ending in LF).
func (c Checkpoint) Text() string { return string(c.appendText(make([]byte, 0, len(c.Origin)+140))) }

func (c Checkpoint) appendText(b []byte) []byte {
	b = append(b, c.Origin...)
	b = append(b, '\n')
	b = strconv.AppendUint(b, c.Size, 10)
	b = append(b, '\n')
	b = base64.StdEncoding.AppendEncode(b, c.Root[:])
	b = append(b, "\nbatch "...)
	b = strconv.AppendUint(b, c.BatchStart, 10)
	b = append(b, ' ')
	b = base64.StdEncoding.AppendEncode(b, c.BatchRoot[:])
	return append(b, '\n')
}

// ParseCheckpoint parses note text strictly (what Text writes).
func ParseCheckpoint(text string) (Checkpoint, error) {
	var c Checkpoint
	if strings.Count(text, "\n") != 4 || !strings.HasSuffix(text, "\n") {
		return c, fmt.Errorf("%w: want 4 lines ending in LF", ErrCheckpoint)
	}
	var lines [4]string // without allocating: audit verify parses one per checkpoint
	for i := range lines {
		lines[i], text, _ = strings.Cut(text, "\n")
	}
	if !validOrigin(lines[0]) {
		return c, fmt.Errorf("%w: origin %q", ErrCheckpoint, lines[0])
	}
	c.Origin = lines[0]
	var err error
	if c.Size, err = parseDecimal(lines[1]); err != nil {
		return c, fmt.Errorf("%w: size: %v", ErrCheckpoint, err)
	}
	if c.Root, err = parseB64Hash(lines[2]); err != nil {
		return c, fmt.Errorf("%w: root: %v", ErrCheckpoint, err)
	}
	var f [3]string
	rest := lines[3]
	for i := range f {
		f[i], rest, _ = strings.Cut(rest, " ")
	}
	if strings.Count(lines[3], " ") != 2 || f[0] != "batch" {
		return c, fmt.Errorf("%w: want \"batch <start> <root>\" as the 4th line", ErrCheckpoint)
	}
	if c.BatchStart, err = parseDecimal(f[1]); err != nil {
		return c, fmt.Errorf("%w: batch start: %v", ErrCheckpoint, err)
	}
	if c.BatchRoot, err = parseB64Hash(f[2]); err != nil {
		return c, fmt.Errorf("%w: batch root: %v", ErrCheckpoint, err)
	}
	if c.BatchStart >= c.Size || c.Size-c.BatchStart > MaxBatch {
		return c, fmt.Errorf("%w: batch %d..%d is empty or longer than %d", ErrCheckpoint, c.BatchStart, c.Size, MaxBatch)
	}
	return c, nil
}

func parseDecimal(s string) (uint64, error) {
	if s == "" || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("%q is not a canonical decimal", s)
	}
	return strconv.ParseUint(s, 10, 64)
}

func parseB64Hash(s string) (Hash, error) {
	var h Hash
	var b [HashSize + 3]byte
	var back [44]byte // base64.StdEncoding.EncodedLen(HashSize)
	if len(s) != len(back) {
		return h, fmt.Errorf("not the base64 of %d bytes", HashSize)
	}
	n, err := strictB64.Decode(b[:], []byte(s))
	if err == nil && n == HashSize {
		base64.StdEncoding.Encode(back[:], b[:HashSize])
	}
	if err != nil || n != HashSize || string(back[:]) != s {
		return h, fmt.Errorf("not the base64 of %d bytes", HashSize)
	}
	copy(h[:], b[:HashSize])
	return h, nil
}

var strictB64 = base64.StdEncoding.Strict()

// validOrigin: a note key name (no whitespace, no '+'), printable ASCII
// without '"' and '\\' (so that it needs no JSON escape), bounded.
func validOrigin(s string) bool {
	if s == "" || len(s) > maxOriginBytes {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f || c == '+' || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// noteKeyHash is the signed-note key id of an Ed25519 key under a name:
// the first 4 bytes of SHA-256(name ‖ LF ‖ 0x01 ‖ public key).
func noteKeyHash(name string, pub ed25519.PublicKey) uint32 {
	h := sha256.New()
	h.Write([]byte(name))
	h.Write([]byte{'\n', 1})
	h.Write(pub)
	return binary.BigEndian.Uint32(h.Sum(nil))
}

// NoteVerifierKey returns the C2SP signed-note verifier key of the log's
// public key: "<origin>+<key hash>+<base64(0x01 ‖ key)>", what witnesses and
// golang.org/x/mod/sumdb/note are configured with.
func NoteVerifierKey(origin string, pub ed25519.PublicKey) (string, error) {
	return note.NewEd25519VerifierKey(origin, pub)
}

// NoteVerifiers returns a verifier for each key of ks under origin.
func NoteVerifiers(origin string, ks KeySet) (note.Verifiers, error) {
	var vs []note.Verifier
	for _, kid := range ks.KIDs() {
		vk, err := NoteVerifierKey(origin, ks[kid])
		if err != nil {
			return nil, err
		}
		v, err := note.NewVerifier(vk)
		if err != nil {
			return nil, err
		}
		if x, err := voi.NewExpandedPublicKey(voi.PublicKey(ks[kid])); err == nil {
			v = &voiVerifier{name: v.Name(), hash: v.KeyHash(), key: x}
		}
		vs = append(vs, v)
	}
	return note.VerifierList(vs...), nil
}

// voiVerifier is note.NewVerifier's Ed25519 verifier with the signature
// checked by curve25519-voi over the key's precomputed tables: the verdicts
// of crypto/ed25519 (cofactorless, VerifyOptionsStdLib;
// TestNoteVerifierAgreesWithStdlib) in about half the time, which is most
// of what audit verify spends per checkpoint.
type voiVerifier struct {
	name string
	hash uint32
	key  *voi.ExpandedPublicKey
}

var stdlibVerify = &voi.Options{Verify: voi.VerifyOptionsStdLib}

func (v *voiVerifier) Name() string    { return v.name }
func (v *voiVerifier) KeyHash() uint32 { return v.hash }
func (v *voiVerifier) Verify(msg, sig []byte) bool {
	return len(sig) == ed25519.SignatureSize && voi.VerifyExpandedWithOptions(v.key, msg, sig, stdlibVerify)
}

// noteSigner signs checkpoints with a log key (note.Signer).
type noteSigner struct {
	name string
	hash uint32
	priv ed25519.PrivateKey
	key  *signingKey
}

func newNoteSigner(name string, k *signingKey) *noteSigner {
	return &noteSigner{name: name, hash: noteKeyHash(name, k.public()), priv: k.priv, key: k}
}

func (s *noteSigner) Name() string    { return s.name }
func (s *noteSigner) KeyHash() uint32 { return s.hash }

// Sign is Ed25519; curve25519-voi signs about twice as fast as
// crypto/ed25519, with the same (deterministic) bytes.
func (s *noteSigner) Sign(msg []byte) ([]byte, error) {
	return voi.Sign(voi.PrivateKey(s.priv), msg), nil
}

// signCheckpoint returns the signed note and the 68 bytes of its signature
// (key hash ‖ Ed25519 signature), in one allocation. It writes what
// note.Sign writes (TestSignCheckpointIsNoteSign): the text, an empty
// line, and "— <name> <base64(key hash ‖ signature)>"; the text is ours
// (appendText: printable ASCII and LFs) and the name a validOrigin.
func signCheckpoint(c Checkpoint, s *noteSigner) (signed []byte, sig []byte, err error) {
	const sigLen = 4 + ed25519.SignatureSize
	buf := make([]byte, sigLen, sigLen+2*len(c.Origin)+260)
	text := c.appendText(buf[sigLen:])
	binary.BigEndian.PutUint32(buf, s.hash)
	copy(buf[4:sigLen], voi.Sign(voi.PrivateKey(s.priv), text))
	signed = append(text, "\n\u2014 "...)
	signed = append(signed, s.name...)
	signed = append(signed, ' ')
	signed = base64.StdEncoding.AppendEncode(signed, buf[:sigLen])
	signed = append(signed, '\n')
	return signed, buf[:sigLen:sigLen], nil
}

// OpenCheckpoint verifies a signed checkpoint with verifiers and parses it.
// It returns the checkpoint and the verifier that signed it.
func OpenCheckpoint(signed []byte, verifiers note.Verifiers) (Checkpoint, note.Verifier, error) {
	n, err := note.Open(signed, verifiers)
	if err != nil {
		return Checkpoint{}, nil, fmt.Errorf("%w: %v", ErrCheckpoint, err)
	}
	c, err := ParseCheckpoint(n.Text)
	if err != nil {
		return c, nil, err
	}
	if len(n.Sigs) != 1 || n.Sigs[0].Name != c.Origin {
		return c, nil, fmt.Errorf("%w: want one signature, by %q", ErrCheckpoint, c.Origin)
	}
	v, _ := verifiers.Verifier(n.Sigs[0].Name, n.Sigs[0].Hash)
	return c, v, nil
}

// checkpointLine is how a checkpoint is stored in a segment, one JSON line
// after the records of its batch: the signed note, and the compact range of
// the tree at its size (unsigned; Open rebuilds the tree from it and checks
// the result against the signed root).
type checkpointLine struct {
	Checkpoint string   `json:"checkpoint"`
	Range      []string `json:"range"`
}

// checkpointPrefix starts every checkpoint line; record lines start with
// recordPrefix.
const (
	checkpointPrefix = `{"checkpoint":`
	recordPrefix     = `{"index":`
)

// encodeCheckpointLine writes the checkpoint line by hand: what
// marshalJSON writes for checkpointLine (TestCheckpointLineIsJSON), since
// the note holds nothing JSON escapes but its LFs (validOrigin, decimal,
// base64, "batch", spaces, U+2014).
func encodeCheckpointLine(signed []byte, hashes []Hash) []byte {
	buf := make([]byte, 0, len(signed)+16+len(hashes)*47+16)
	buf = append(buf, checkpointPrefix+`"`...)
	for _, c := range signed {
		if c == '\n' {
			buf = append(buf, '\\', 'n')
		} else {
			buf = append(buf, c)
		}
	}
	buf = append(buf, `","range":[`...)
	for i, h := range hashes {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, '"')
		buf = base64.StdEncoding.AppendEncode(buf, h[:])
		buf = append(buf, '"')
	}
	return append(buf, "]}"...)
}

// checkpointNote returns the signed note of a checkpoint line without
// decoding its range (what verification needs).
func checkpointNote(line []byte) ([]byte, error) {
	rest, ok := bytes.CutPrefix(line, []byte(checkpointPrefix))
	i := bytes.Index(rest, []byte(`,"range":[`))
	if !ok || i < 0 || !bytes.HasSuffix(rest, []byte("]}")) {
		return nil, fmt.Errorf("%w: line: not {\"checkpoint\":…,\"range\":[…]}", ErrCheckpoint)
	}
	if n, ok := unescapeNote(rest[:i]); ok {
		return n, nil
	}
	var note string
	if err := json.Unmarshal(rest[:i], &note); err != nil {
		return nil, fmt.Errorf("%w: line: %v", ErrCheckpoint, err)
	}
	return []byte(note), nil
}

// unescapeNote decodes the JSON string s as json.Unmarshal would when its
// only escapes are \n, the form encodeCheckpointLine writes (anything
// else goes to json.Unmarshal): audit verify reads one per checkpoint.
func unescapeNote(s []byte) ([]byte, bool) {
	if len(s) < 2 || s[0] != '"' || s[len(s)-1] != '"' {
		return nil, false
	}
	s = s[1 : len(s)-1]
	if !utf8.Valid(s) { // json.Unmarshal would replace bad bytes
		return nil, false
	}
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			if i+1 == len(s) || s[i+1] != 'n' {
				return nil, false
			}
			out = append(out, '\n')
			i++
		case c == '"' || c < 0x20:
			return nil, false
		default:
			out = append(out, c)
		}
	}
	return out, true
}

func decodeCheckpointLine(line []byte) (signed []byte, hashes [][]byte, err error) {
	if _, err := checkpointNote(line); err != nil {
		return nil, nil, err // not in the one form the log writes
	}
	var l checkpointLine
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&l); err != nil {
		return nil, nil, fmt.Errorf("%w: line: %v", ErrCheckpoint, err)
	}
	if len(l.Range) > 64 {
		return nil, nil, fmt.Errorf("%w: range of %d hashes", ErrCheckpoint, len(l.Range))
	}
	for _, s := range l.Range {
		h, err := parseB64Hash(s)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: range: %v", ErrCheckpoint, err)
		}
		hashes = append(hashes, append([]byte(nil), h[:]...))
	}
	return []byte(l.Checkpoint), hashes, nil
}

// VerifyBatch checks one group-commit batch as a consumer receives it (the
// control plane, a log shipper): records are the record lines of the batch
// without their LF, in order, and signed the checkpoint line's signed note
// that follows them. It verifies the checkpoint's signature with
// verifiers, that the records hold indices BatchStart..Size-1 and belong to
// the checkpoint's log, and that their RFC 6962 root is the checkpoint's
// batch root. A consumer that holds every batch also keeps a Tree, appends
// each batch's leaf hashes and compares its Root with the checkpoint's
// Root: that proves the log only grew.
func VerifyBatch(records [][]byte, signed []byte, verifiers note.Verifiers) (Checkpoint, error) {
	c, _, err := OpenCheckpoint(signed, verifiers)
	if err != nil {
		return c, err
	}
	if uint64(len(records)) != c.Size-c.BatchStart {
		return c, fmt.Errorf("%w: %d records for batch %d..%d", ErrCheckpoint, len(records), c.BatchStart, c.Size-1)
	}
	leaves := make([]Hash, len(records))
	for i, r := range records {
		h, err := parseRecordHead(r)
		if err != nil {
			return c, fmt.Errorf("record %d of the batch: %w", i, err)
		}
		if h.index != c.BatchStart+uint64(i) {
			return c, fmt.Errorf("%w: record %d of the batch has index %d, want %d", ErrMalformed, i, h.index, c.BatchStart+uint64(i))
		}
		if h.log != c.Origin {
			return c, fmt.Errorf("%w: record %d belongs to log %q, not %q", ErrMalformed, h.index, h.log, c.Origin)
		}
		leaves[i] = LeafHash(r)
	}
	if subtreeRoot(leaves) != c.BatchRoot {
		return c, fmt.Errorf("%w: records %d..%d do not match the checkpoint's batch root", ErrBadSignature, c.BatchStart, c.Size-1)
	}
	return c, nil
}
