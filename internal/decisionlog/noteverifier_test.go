package decisionlog

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"math/big"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"
)

// TestNoteVerifierAgreesWithStdlib: the curve25519-voi verifier that
// NoteVerifiers builds gives crypto/ed25519's verdict (note.NewVerifier's)
// on valid signatures, on every single-bit change of them and of the
// message, and on the edge cases where Ed25519 verifiers are known to
// disagree: a non-canonical S, small-order and non-canonical R and A.
func TestNoteVerifierAgreesWithStdlib(t *testing.T) {
	msg := []byte("agentauthz\n42\nhXDrgPJvEf0I3evNHSLYA+YJc1hVlF2dIDcYo3J1CUU=\nbatch 40 1Xg19MkTpiccnxk2h/8rZrjIom9A77QWPgw8gJRla3I=\n")
	check := func(t *testing.T, name string, pub ed25519.PublicKey, msg, sig []byte) bool {
		t.Helper()
		vk, err := note.NewEd25519VerifierKey("agentauthz", pub)
		if err != nil {
			t.Fatal(err)
		}
		std, err := note.NewVerifier(vk)
		if err != nil {
			t.Fatal(err)
		}
		vs, err := NoteVerifiers("agentauthz", KeySet{KeyID(pub): pub})
		if err != nil {
			t.Fatal(err)
		}
		ours, err := vs.Verifier(std.Name(), std.KeyHash())
		if err != nil {
			t.Fatal(err)
		}
		want, got := std.Verify(msg, sig), ours.Verify(msg, sig)
		if got != want {
			t.Errorf("%s: voi says %v, crypto/ed25519 says %v", name, got, want)
		}
		return want
	}
	for range 4 {
		pub, priv, _ := ed25519.GenerateKey(rand.Reader)
		sig := ed25519.Sign(priv, msg)
		if !check(t, "valid", pub, msg, sig) {
			t.Fatal("a valid signature does not verify")
		}
		vs, err := NoteVerifiers("agentauthz", KeySet{KeyID(pub): pub})
		if err != nil {
			t.Fatal(err)
		}
		if v, _ := vs.Verifier("agentauthz", noteKeyHash("agentauthz", pub)); v == nil {
			t.Fatal("no verifier")
		} else if _, ok := v.(*voiVerifier); !ok {
			t.Fatalf("NoteVerifiers built %T, not the voi verifier", v)
		}
		for i := range len(sig) * 8 {
			bad := append([]byte(nil), sig...)
			bad[i/8] ^= 1 << (i % 8)
			check(t, "signature bit flipped", pub, msg, bad)
		}
		for i := range len(msg) * 8 {
			bad := append([]byte(nil), msg...)
			bad[i/8] ^= 1 << (i % 8)
			check(t, "message bit flipped", pub, bad, sig)
		}
		check(t, "short signature", pub, msg, sig[:63])
		check(t, "non-canonical S (S + l)", pub, msg, append(append([]byte(nil), sig[:32]...), addL(sig[32:])...))
		check(t, "non-canonical R (identity as p+1)", pub, msg, append(nonCanonicalIdentity(), sig[32:]...))
		check(t, "small-order R (identity), S = 0", pub, msg, append(identity(), make([]byte, 32)...))
	}
	// Small-order and non-canonical public keys, with the signatures that
	// cofactored and cofactorless verification judge differently.
	zeroS := make([]byte, 32)
	minusOne := littleEndian(new(big.Int).Sub(p25519(), big.NewInt(1))) // (0, -1): order 2
	for _, pk := range []struct {
		name string
		pub  []byte
	}{
		{"A = identity", identity()},
		{"A = identity, non-canonical", nonCanonicalIdentity()},
		{"A of order 2", minusOne},
		{"A not on the curve", littleEndian(big.NewInt(2))},
	} {
		for _, r := range []struct {
			name string
			r    []byte
		}{
			{"R = identity", identity()},
			{"R = identity, non-canonical", nonCanonicalIdentity()},
			{"R of order 2", minusOne},
		} {
			check(t, pk.name+", "+r.name+", S = 0", ed25519.PublicKey(pk.pub), msg, append(append([]byte(nil), r.r...), zeroS...))
		}
	}
}

func p25519() *big.Int {
	p := new(big.Int).Lsh(big.NewInt(1), 255)
	return p.Sub(p, big.NewInt(19))
}

// littleEndian is the 32-byte little-endian encoding of n.
func littleEndian(n *big.Int) []byte {
	b := n.FillBytes(make([]byte, 32))
	for i, j := 0, 31; i < j; i, j = i+1, j-1 {
		b[i], b[j] = b[j], b[i]
	}
	return b
}

func identity() []byte { return littleEndian(big.NewInt(1)) }

// nonCanonicalIdentity encodes y = 1 as p + 1.
func nonCanonicalIdentity() []byte { return littleEndian(new(big.Int).Add(p25519(), big.NewInt(1))) }

// addL returns the little-endian scalar s + l (the group order): the same
// scalar, non-canonically encoded (it still fits in 32 bytes).
func addL(s []byte) []byte {
	be := make([]byte, 32)
	for i := range s {
		be[31-i] = s[i]
	}
	l, _ := new(big.Int).SetString("7237005577332262213973186563042994240857116359379907606001950938285454250989", 10)
	return littleEndian(new(big.Int).Add(new(big.Int).SetBytes(be), l))
}

// TestSignCheckpointIsNoteSign: the hand-written signed note is what
// golang.org/x/mod/sumdb/note signs (Ed25519 is deterministic), and its
// signature bytes are the note's.
func TestSignCheckpointIsNoteSign(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	k := newSigningKey(priv)
	for _, origin := range []string{"agentauthz", "eu-west/replica-1", strings.Repeat("x", maxOriginBytes)} {
		for _, size := range []uint64{1, 128, 1<<63 + 5} {
			cp := Checkpoint{Origin: origin, Size: size, Root: LeafHash([]byte("r")), BatchStart: size - 1, BatchRoot: LeafHash([]byte("b"))}
			s := newNoteSigner(origin, k)
			got, sig, err := signCheckpoint(cp, s)
			if err != nil {
				t.Fatal(err)
			}
			want, err := note.Sign(&note.Note{Text: cp.Text()}, s)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("signed note\n%s\nnote.Sign\n%s", got, want)
			}
			if !bytes.HasSuffix(got, []byte(base64.StdEncoding.EncodeToString(sig)+"\n")) || len(sig) != 68 {
				t.Fatalf("signature bytes %x do not end the note", sig)
			}
		}
	}
}
