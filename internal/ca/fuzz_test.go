package ca

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/x509/pkix"
	"encoding/asn1"
	"slices"
	"testing"

	"github.com/agentauthz/agentauthz/internal/identity"
)

// FuzzIssueInput checks that whatever the issuance validators accept, the
// native-profile parser on the decision path accepts too, and that the
// subject built from it round-trips.
func FuzzIssueInput(f *testing.F) {
	f.Add("payments-bot", "payments:initiate", "alice@acme.example", "L3")
	f.Add("a", "a:b", "", "0")
	f.Add("Bad_ID", "payments", "alice smith", "L7")
	f.Add("x.y_z-1", "res.v1:act_2", "team+ops", "l4")
	f.Fuzz(func(t *testing.T, id, scope, owner, trust string) {
		lvl, terr := ParseTrust(trust)
		if ValidateAgentID(id) != nil || ValidateScope(scope) != nil || ValidateOwner(owner) != nil || terr != nil {
			return
		}
		if !identity.ValidAgentID(id) || !identity.ValidScope(scope) || (owner != "" && !identity.ValidOwner(owner)) {
			t.Fatalf("issuance accepts what the verifier rejects: id=%q scope=%q owner=%q", id, scope, owner)
		}
		raw, err := nativeSubject(id, "Org", lvl, []string{scope}, owner)
		if err != nil {
			t.Fatal(err)
		}
		var seq pkix.RDNSequence
		if rest, err := asn1.Unmarshal(raw, &seq); err != nil || len(rest) != 0 {
			t.Fatalf("subject does not parse: %v", err)
		}
		var name pkix.Name
		name.FillFromRDNSequence(&seq)
		want := []string{"trust:" + TrustLabel(lvl), "scope:" + scope}
		if owner != "" {
			want = append(want, "owner:"+owner)
		}
		if name.CommonName != id || !slices.Equal(name.OrganizationalUnit, want) {
			t.Fatalf("subject round trip: CN %q OU %q", name.CommonName, name.OrganizationalUnit)
		}
	})
}

// FuzzParseSerial checks that ParseSerial is idempotent on its output.
func FuzzParseSerial(f *testing.F) {
	f.Add("0A:bC")
	f.Add("0x00ff")
	f.Add("2d9b1a3ac18630b80d2364bbe6e5d55d")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSerial(s)
		if err != nil {
			return
		}
		again, err := ParseSerial(n)
		if err != nil || again != n {
			t.Fatalf("ParseSerial(%q) = %q, then %q, %v", s, n, again, err)
		}
	})
}

// FuzzParseCSR feeds arbitrary bytes to the CSR parser: it must not panic,
// and anything it accepts has a verified signature and an allowed key.
func FuzzParseCSR(f *testing.F) {
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nMIHJMHECAQAwDzENMAsGA1UEAwwEZXZpbDBZMBMGByqGSM49AgEGCCqGSM49AwEH\n-----END CERTIFICATE REQUEST-----\n"))
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00})
	f.Add([]byte("hello"))
	f.Fuzz(func(t *testing.T, b []byte) {
		csr, err := ParseCSR(b)
		if err != nil {
			return
		}
		if csr.CheckSignature() != nil {
			t.Fatal("accepted a CSR whose signature does not verify")
		}
		switch csr.PublicKey.(type) {
		case *ecdsa.PublicKey, ed25519.PublicKey:
		default:
			t.Fatalf("accepted key type %T", csr.PublicKey)
		}
	})
}
