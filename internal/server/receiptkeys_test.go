package server

import (
	"crypto/ed25519"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
)

func TestReceiptKeys(t *testing.T) {
	own, _, _ := ed25519.GenerateKey(nil)
	peer, _, _ := ed25519.GenerateKey(nil)
	ownSet := func() decisionlog.KeySet { ks := decisionlog.KeySet{}; ks.Add(own); return ks }
	peerSet := decisionlog.KeySet{}
	peerKID := peerSet.Add(peer)
	js, _ := json.Marshal(peerSet.JWKS())
	f := filepath.Join(t.TempDir(), "peers.jwks")
	if err := os.WriteFile(f, js, 0o600); err != nil {
		t.Fatal(err)
	}
	keys, err := receiptKeys([]string{f}, ownSet)
	if err != nil {
		t.Fatal(err)
	}
	ks := keys()
	if len(ks) != 2 || ks[peerKID] == nil || ks[decisionlog.KeyID(own)] == nil {
		t.Fatalf("keys %v", ks.KIDs())
	}
	if _, err := receiptKeys([]string{filepath.Join(t.TempDir(), "missing")}, ownSet); err == nil {
		t.Fatal("a missing key file was accepted")
	}
	if keys, _ := receiptKeys(nil, ownSet); len(keys()) != 1 {
		t.Fatal("no extra keys: only the log's own")
	}
}
