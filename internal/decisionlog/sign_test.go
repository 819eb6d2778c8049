package decisionlog

import (
	"bytes"
	"crypto/ed25519"
	"math/rand/v2"
	"strings"
	"testing"

	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
)

// The log signs with curve25519-voi for speed; Ed25519 is deterministic, so
// every signature must be byte for byte what crypto/ed25519 produces.
func TestSignerMatchesStdlib(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	seed := make([]byte, ed25519.SeedSize)
	for i := range 500 {
		for j := range seed {
			seed[j] = byte(rng.Uint32())
		}
		priv := ed25519.NewKeyFromSeed(seed)
		msg := make([]byte, rng.IntN(4096))
		for j := range msg {
			msg[j] = byte(rng.Uint32())
		}
		want := ed25519.Sign(priv, msg)
		if got := voi.Sign(voi.PrivateKey(priv), msg); !bytes.Equal(got, want) {
			t.Fatalf("case %d: signatures differ", i)
		}
	}
}

// What finish writes is a compact JWS that crypto/ed25519 verifies.
func TestFinishVerifiesWithStdlib(t *testing.T) {
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	k := newSigningKey(priv)
	line, jws := k.finish(k.signingInput([]byte(`{"seq":1}`)))
	if string(line) != jws+"\n" {
		t.Fatalf("line %q is not the JWS %q and its LF", line, jws)
	}
	i := strings.LastIndexByte(jws, '.')
	sig, err := b64.DecodeString(jws[i+1:])
	if err != nil {
		t.Fatal(err)
	}
	if !ed25519.Verify(k.public(), []byte(jws[:i]), sig) {
		t.Fatal("the signature does not verify with crypto/ed25519")
	}
}
