package revocation

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"
)

// FuzzParseCRL feeds arbitrary bytes to the parse/verify wrapper. The
// committed seeds (testdata/fuzz/FuzzParseCRL) are signed by the CA committed
// in testdata/fuzzca, so the valid ones verify and mutations near a good
// signature are explored (TestFuzzParseCRLSeeds keeps them so and
// regenerates them).
func FuzzParseCRL(f *testing.F) {
	ca, _ := fuzzCA(f)
	cas := []*x509.Certificate{ca}
	f.Fuzz(func(t *testing.T, data []byte) {
		crl, err := ParseCRL(data, cas, 1<<20)
		if err != nil {
			if crl != nil {
				t.Fatal("CRL returned with an error")
			}
			return
		}
		if crl.CA != 0 || crl.NextUpdate.Before(crl.ThisUpdate) || crl.Serials == nil {
			t.Fatalf("accepted CRL breaks invariants: %+v", crl)
		}
		// Whatever verified must verify again from its own DER.
		again, err := ParseCRL(crl.Raw, cas, 1<<20)
		if err != nil || again.Serials.Len() != crl.Serials.Len() {
			t.Fatalf("round trip: %v", err)
		}
		// Every entry x509 sees is revoked, in identity.Agent.Serial form.
		rl, err := x509.ParseRevocationList(crl.Raw)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]bool{}
		for _, e := range rl.RevokedCertificateEntries {
			want[e.SerialNumber.Text(16)] = true
		}
		checkSerialSet(t, crl.Serials, want)
	})
}

// checkSerialSet checks that set holds exactly the serials in want (in
// Text(16) form), and that any other spelling of them is not found.
func checkSerialSet(t *testing.T, set *SerialSet, want map[string]bool) {
	t.Helper()
	if set.Len() != len(want) {
		t.Fatalf("Len = %d, want %d", set.Len(), len(want))
	}
	got := map[string]bool{}
	for s := range set.All() {
		if got[s] || !want[s] {
			t.Fatalf("All yields %q (again: %v), want %v", s, got[s], want)
		}
		got[s] = true
	}
	for s := range want {
		if !set.Contains(s) {
			t.Fatalf("%q missing", s)
		}
		for _, other := range []string{"0" + s, strings.ToUpper(s), "0x" + s, s + "0", s[1:], "-" + s, strings.TrimPrefix(s, "-")} {
			if set.Contains(other) != want[other] {
				t.Fatalf("Contains(%q) = %v, want %v (set of %q)", other, !want[other], want[other], s)
			}
		}
	}
}

// FuzzSerialSet builds a SerialSet from arbitrary serials (zero, negative,
// oversized, duplicated) and checks it against a set of Text(16) strings,
// the representation it replaced. Each serial in data is one length byte
// (bit 7: negative, bits 0-4: up to 31 magnitude bytes) and its magnitude.
func FuzzSerialSet(f *testing.F) {
	f.Add([]byte{1, 0xab, 2, 0, 0xab, 0x81, 0xab, 0}, "ab")
	f.Add(append(append([]byte{20}, bytes.Repeat([]byte{0xff}, 20)...), append([]byte{21, 1}, make([]byte, 20)...)...), "1"+strings.Repeat("00", 20))
	f.Add([]byte{16, 0x5c, 0x1e, 0x0f, 0x3a, 0x9d, 0x2b, 0x7e, 0x44, 0x11, 0xa0, 0xc3, 0xd5, 0xe6, 0xf7, 0x08, 0x19}, "-5c1e")
	f.Fuzz(func(t *testing.T, data []byte, probe string) {
		var serials []*big.Int
		want := map[string]bool{}
		for len(data) > 0 {
			n := min(int(data[0]&0x1f), len(data)-1)
			v := new(big.Int).SetBytes(data[1 : 1+n])
			if data[0]&0x80 != 0 {
				v.Neg(v)
			}
			serials = append(serials, v)
			want[v.Text(16)] = true
			data = data[1+n:]
		}
		set := NewSerialSet(serials...)
		checkSerialSet(t, set, want)
		if set.Contains(probe) != want[probe] {
			t.Fatalf("Contains(%q) = %v", probe, !want[probe])
		}
	})
}

type sseEvent struct{ event, data string }

func parseAllSSE(b []byte, max int64) ([]sseEvent, error) {
	var out []sseEvent
	err := readSSE(bytes.NewReader(b), max, nil, 0, func(event string, data []byte) error {
		out = append(out, sseEvent{event, string(data)})
		return nil
	})
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return out, err
}

// FuzzReadSSE checks the watch-stream parser on arbitrary input: it never
// panics, respects its bound, and what it parses re-encodes to a stream that
// parses to the same events.
func FuzzReadSSE(f *testing.F) {
	f.Add([]byte("event: revocation\nid: 1\ndata: {\"generation\":1}\n\n: ping\n\n"))
	f.Add([]byte("data: a\r\ndata: b\r\n\r\n"))
	f.Add([]byte("data\n\nevent: x\n\n"))
	const max = 4096
	f.Fuzz(func(t *testing.T, b []byte) {
		events, err := parseAllSSE(b, max)
		if err != nil {
			return
		}
		var enc bytes.Buffer
		for _, ev := range events {
			if len(ev.data) > max {
				t.Fatalf("event data of %d bytes, bound %d", len(ev.data), max)
			}
			if strings.ContainsRune(ev.event+ev.data, '\r') {
				return // a lone CR is not a line end for us; no round trip
			}
			if ev.event != "" {
				enc.WriteString("event: " + ev.event + "\n")
			}
			for _, line := range strings.Split(ev.data, "\n") {
				enc.WriteString("data: " + line + "\n")
			}
			enc.WriteString("\n")
		}
		again, err := parseAllSSE(enc.Bytes(), 1<<30)
		if err != nil {
			t.Fatalf("re-encoded stream: %v", err)
		}
		if !slices.Equal(events, again) {
			t.Fatalf("round trip: %q != %q", events, again)
		}
	})
}

// idpReference is the issuingDistributionPoint decoded by encoding/asn1,
// independently of parseScope.
type idpReference struct {
	DP       asn1.RawValue  `asn1:"optional,explicit,tag:0"`
	OnlyUser bool           `asn1:"optional,tag:1"`
	OnlyCA   bool           `asn1:"optional,tag:2"`
	Reasons  asn1.BitString `asn1:"optional,tag:3"`
	Indirect bool           `asn1:"optional,tag:4"`
	OnlyAttr bool           `asn1:"optional,tag:5"`
}

// FuzzParseScope: parseScope never panics, and what it accepts
// encoding/asn1 decodes to the same flags, with nothing it refuses set
// (seeds in testdata/fuzz/FuzzParseScope).
func FuzzParseScope(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := parseScope(data)
		if err != nil {
			return
		}
		var ref idpReference
		rest, err := asn1.Unmarshal(data, &ref)
		if err != nil || len(rest) != 0 {
			t.Fatalf("parseScope accepted what encoding/asn1 refuses: %v", err)
		}
		if s.OnlyUserCerts != ref.OnlyUser || s.OnlyCACerts != ref.OnlyCA || ref.Indirect || ref.OnlyAttr ||
			ref.Reasons.BitLength != 0 || (s.OnlyUserCerts && s.OnlyCACerts) {
			t.Fatalf("scope %+v, reference %+v", s, ref)
		}
		if (len(ref.DP.Bytes) > 0) != (len(s.DistributionPoints) > 0) || s.raw != string(data) {
			t.Fatalf("distribution points %q, reference %x", s.DistributionPoints, ref.DP.Bytes)
		}
	})
}

// FuzzParseCRLs: a file of several CRLs is applied whole or refused whole.
// Whatever ParseCRLs accepts holds 1 to MaxCRLsPerFile CRLs, each of which
// verifies again on its own from its DER, none two of one CA and scope;
// anything it refuses returns no CRL. The seeds (added here, signed by the
// committed fuzz CA) are two CRLs of one CA partitioned by an
// issuingDistributionPoint (user / CA certificates), as PEM, with `openssl
// crl -text`-style text before each block, and near misses.
func FuzzParseCRLs(f *testing.F) {
	ca, key := fuzzCA(f)
	cas := []*x509.Certificate{ca}
	this := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	crl := func(number int64, idp []byte, serials ...int64) []byte {
		tmpl := &x509.RevocationList{Number: big.NewInt(number), ThisUpdate: this, NextUpdate: this.Add(100 * 365 * 24 * time.Hour)}
		if idp != nil {
			tmpl.ExtraExtensions = []pkix.Extension{{Id: oidIssuingDistributionPoint, Critical: true, Value: idp}}
		}
		for _, s := range serials {
			tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries,
				x509.RevocationListEntry{SerialNumber: big.NewInt(s), RevocationTime: this})
		}
		der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca, key)
		if err != nil {
			f.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
	}
	users := crl(1, []byte{0x30, 0x03, 0x81, 0x01, 0xff}, 5, 7)
	cas2 := crl(1, []byte{0x30, 0x03, 0x82, 0x01, 0xff}, 9)
	full := crl(2, nil, 5)
	f.Add(slices.Concat(users, cas2))
	f.Add(slices.Concat([]byte("Certificate Revocation List (CRL):\n        Version 2 (0x1)\n"), users, []byte("text\n"), cas2))
	f.Add(slices.Concat(users, full))
	f.Add(slices.Concat(full, full))
	f.Add(slices.Concat(users, cas2[:len(cas2)/2]))
	f.Add(slices.Concat(users, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw})))
	f.Fuzz(func(t *testing.T, data []byte) {
		crls, err := ParseCRLs(data, cas, 1<<20)
		if err != nil {
			if crls != nil {
				t.Fatal("CRLs returned with an error")
			}
			return
		}
		if len(crls) == 0 || len(crls) > MaxCRLsPerFile {
			t.Fatalf("%d CRLs accepted", len(crls))
		}
		seen := map[string]bool{}
		for _, c := range crls {
			if seen[c.Scope.raw] {
				t.Fatal("two CRLs of one CA and scope accepted")
			}
			seen[c.Scope.raw] = true
			again, err := ParseCRL(c.Raw, cas, 1<<20)
			if err != nil || again.Digest != c.Digest || again.Serials.Len() != c.Serials.Len() {
				t.Fatalf("a CRL of the file does not verify on its own: %v", err)
			}
		}
	})
}
