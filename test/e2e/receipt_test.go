package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	merkleproof "github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"

	"github.com/agentauthz/agentauthz/internal/checkreq"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/test/process"
)

// TestReceiptsAgainstPublishedKeyAndCheckpoint is what an upstream and a
// witness do with a running replica, with nothing but its HTTP port: the
// receipts of allowed answers verify offline with the key from the JWKS
// endpoint; GET /checkpoint serves a signed note that golang.org/x/mod's
// sumdb/note verifies with the same key as a note verifier key; and after a
// clean stop, audit consistency proves that the checkpoint of the first
// receipt is a prefix of the latest one.
func TestReceiptsAgainstPublishedKeyAndCheckpoint(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs processes")
	}
	bin := buildBinary(t)
	data := t.TempDir()
	p := process.Start(t, process.Options{Binary: bin, DataDir: data, Policies: filepath.Join(repoRoot(t), "policies")})
	client := p.Client(t)
	req, err := checkreq.Build(checkreq.Request{Method: "POST", Path: "/v1/payments", CertPEM: p.AgentCert(t, "payments-agent"), Via: checkreq.ViaPeer})
	if err != nil {
		t.Fatal(err)
	}
	var receipts []string
	for i := 0; i < 5; i++ {
		resp, err := client.Check(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range resp.GetOkResponse().GetHeaders() {
			if h.GetHeader().GetKey() == "x-agent-receipt" {
				receipts = append(receipts, h.GetHeader().GetValue())
			}
		}
	}
	if len(receipts) != 5 {
		t.Fatalf("%d receipts for 5 allowed Checks", len(receipts))
	}
	get := func(path string) []byte {
		resp, err := http.Get("http://" + p.HTTPAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
		}
		return b
	}
	ks, err := decisionlog.ParseKeySet(get("/.well-known/jwks.json"))
	if err != nil {
		t.Fatal(err)
	}
	var first *decisionlog.CompactReceipt
	for i, rc := range receipts {
		if len(rc) > 600 {
			t.Errorf("receipt %d: %d bytes", i, len(rc))
		}
		r, err := decisionlog.VerifyReceipt(rc, ks)
		if err != nil {
			t.Fatalf("receipt %d: %v", i, err)
		}
		if first == nil {
			first = r
		}
	}
	signed := get("/checkpoint")
	origin, _, _ := strings.Cut(string(signed), "\n")
	var vs []note.Verifier
	for _, kid := range ks.KIDs() {
		vk, err := decisionlog.NoteVerifierKey(origin, ks[kid])
		if err != nil {
			t.Fatal(err)
		}
		v, err := note.NewVerifier(vk)
		if err != nil {
			t.Fatal(err)
		}
		vs = append(vs, v)
	}
	n, err := note.Open(signed, note.VerifierList(vs...))
	if err != nil {
		t.Fatalf("GET /checkpoint does not verify with sumdb/note: %v\n%s", err, signed)
	}
	var size uint64
	fmt.Sscan(strings.Split(n.Text, "\n")[1], &size)
	if size < first.Checkpoint.Size {
		t.Fatalf("latest checkpoint size %d below a receipt's %d", size, first.Checkpoint.Size)
	}

	p.Signal(syscall.SIGTERM)
	if err := p.Wait(context.Background()); err != nil {
		t.Fatalf("stop: %v", err)
	}
	out, err := exec.Command(bin, "audit", "consistency", fmt.Sprint(first.Checkpoint.Size), fmt.Sprint(size),
		"--log", filepath.Join(data, "log")).Output()
	if err != nil {
		t.Fatalf("audit consistency: %v\n%s", err, out)
	}
	var proof decisionlog.ConsistencyProofResult
	if err := json.Unmarshal(out, &proof); err != nil {
		t.Fatal(err)
	}
	if proof.OldCheckpoint != string(first.SignedCheckpoint()) || proof.NewCheckpoint != string(signed) {
		t.Errorf("audit consistency names other checkpoints:\n%s", out)
	}
	// The proof, checked by transparency-dev/merkle against the signed roots.
	hashes := make([][]byte, len(proof.Proof))
	for i, h := range proof.Proof {
		hashes[i], _ = base64.StdEncoding.DecodeString(h)
	}
	newRoot, _ := base64.StdEncoding.DecodeString(strings.Split(n.Text, "\n")[2])
	if err := merkleproof.VerifyConsistency(rfc6962.DefaultHasher, first.Checkpoint.Size, size, hashes, first.Checkpoint.Root[:], newRoot); err != nil {
		t.Errorf("consistency proof %d → %d: %v", first.Checkpoint.Size, size, err)
	}
}
