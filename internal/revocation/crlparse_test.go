package revocation

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/agentauthz/agentauthz/internal/testca"
)

var updateSeeds = flag.Bool("update", false, "rewrite testdata/fuzz/FuzzParseCRLEquivalent from crlShapes")

// parseCRLReference is ParseCRL as it was before parseRevocationList: the
// whole CRL, entries included, decoded by x509.ParseRevocationList.
// FuzzParseCRLEquivalent holds ParseCRL to it; never loosen it to quiet the
// fuzzer.
func parseCRLReference(data []byte, cas []*x509.Certificate, maxBytes int64) (*CRL, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxCRLBytes
	}
	if int64(len(data)) > maxBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrCRLTooLarge, len(data), maxBytes)
	}
	der := data
	if bytes.HasPrefix(bytes.TrimLeft(data, " \t\r\n"), []byte("-----BEGIN")) {
		block, _ := pem.Decode(data)
		if block == nil || block.Type != "X509 CRL" {
			return nil, fmt.Errorf("%w: pem input without an X509 CRL block", ErrCRLInvalid)
		}
		der = block.Bytes
	}
	rl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCRLInvalid, err)
	}
	verifiedBy := -1
	for i, ca := range cas {
		if ca == nil || !bytes.Equal(rl.RawIssuer, ca.RawSubject) {
			continue
		}
		if rl.CheckSignatureFrom(ca) == nil {
			verifiedBy = i
			break
		}
	}
	if verifiedBy < 0 {
		return nil, ErrCRLSignature
	}
	if rl.NextUpdate.IsZero() {
		return nil, fmt.Errorf("%w: no nextUpdate", ErrCRLInvalid)
	}
	if rl.NextUpdate.Before(rl.ThisUpdate) {
		return nil, fmt.Errorf("%w: nextUpdate before thisUpdate", ErrCRLInvalid)
	}
	for _, ext := range rl.Extensions {
		if ext.Critical {
			return nil, fmt.Errorf("%w: unsupported critical extension %s", ErrCRLInvalid, ext.Id)
		}
	}
	var serials []*big.Int
	for _, e := range rl.RevokedCertificateEntries {
		for _, ext := range e.Extensions {
			if ext.Critical {
				return nil, fmt.Errorf("%w: unsupported critical entry extension %s", ErrCRLInvalid, ext.Id)
			}
		}
		if e.SerialNumber == nil {
			return nil, fmt.Errorf("%w: entry without serial", ErrCRLInvalid)
		}
		serials = append(serials, e.SerialNumber)
	}
	return &CRL{
		Number:     rl.Number,
		ThisUpdate: rl.ThisUpdate,
		NextUpdate: rl.NextUpdate,
		CA:         verifiedBy,
		Serials:    NewSerialSet(serials...),
		Raw:        der,
		Digest:     sha256.Sum256(der),
	}, nil
}

// FuzzParseCRLEquivalent checks ParseCRL against parseCRLReference, and
// parseRevocationList against x509.ParseRevocationList, on arbitrary input:
// the same inputs refused (with the same sentinel), and, for those accepted,
// the same fields and the same serials. Each input is also tried with its
// TBS signed anew by the test CA, so that mutated entries, extensions and
// times get past the signature check (the committed seeds in
// testdata/fuzz/FuzzParseCRLEquivalent are signed by a CA that no longer
// exists, and are only useful that way).
func FuzzParseCRLEquivalent(f *testing.F) {
	ca := testca.New(f)
	for _, s := range crlShapes(f, ca) {
		f.Add(s.der)
	}
	cas := []*x509.Certificate{ca.Cert}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkListEquivalent(t, data)
		checkCRLEquivalent(t, data, cas)
		if signed := resign(t, data, ca.Key); signed != nil {
			checkCRLEquivalent(t, signed, cas)
		}
	})
}

// checkListEquivalent compares parseRevocationList with
// x509.ParseRevocationList on der.
func checkListEquivalent(t *testing.T, der []byte) {
	t.Helper()
	got, entries, err := parseRevocationList(der)
	want, wantErr := x509.ParseRevocationList(der)
	if (err == nil) != (wantErr == nil) {
		t.Fatalf("parseRevocationList: %v; x509: %v", err, wantErr)
	}
	if err != nil {
		return
	}
	var serials, wantSerials []string
	if err := entries.serials(func(v *big.Int) { serials = append(serials, v.Text(16)) }); err != nil {
		t.Fatal(err)
	}
	var wantCritical asn1.ObjectIdentifier
	for _, e := range want.RevokedCertificateEntries {
		wantSerials = append(wantSerials, e.SerialNumber.Text(16))
		for _, ext := range e.Extensions {
			if ext.Critical && wantCritical == nil {
				wantCritical = ext.Id
			}
		}
	}
	if !slices.Equal(serials, wantSerials) {
		t.Fatalf("serials %q, x509 %q", serials, wantSerials)
	}
	if !entries.critical.Equal(wantCritical) {
		t.Fatalf("first critical entry extension %v, x509 %v", entries.critical, wantCritical)
	}
	// Everything but the entries, and Raw (got's is the copy without
	// them), must be what x509 makes of the original.
	g, w := *got, *want
	g.Raw, w.Raw = nil, nil
	w.RevokedCertificateEntries, w.RevokedCertificates = nil, nil
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("parseRevocationList:\n%+v\nx509:\n%+v", g, w)
	}
}

// checkCRLEquivalent compares ParseCRL with parseCRLReference on data.
func checkCRLEquivalent(t *testing.T, data []byte, cas []*x509.Certificate) {
	t.Helper()
	got, err := ParseCRL(data, cas, 1<<20)
	want, wantErr := parseCRLReference(data, cas, 1<<20)
	if crlErrClass(err) != crlErrClass(wantErr) {
		t.Fatalf("ParseCRL: %v; reference: %v", err, wantErr)
	}
	if err != nil {
		return
	}
	if (got.Number == nil) != (want.Number == nil) || got.Number != nil && got.Number.Cmp(want.Number) != 0 {
		t.Fatalf("number %v, reference %v", got.Number, want.Number)
	}
	if !reflect.DeepEqual(got.ThisUpdate, want.ThisUpdate) || !reflect.DeepEqual(got.NextUpdate, want.NextUpdate) {
		t.Fatalf("thisUpdate %v nextUpdate %v, reference %v %v", got.ThisUpdate, got.NextUpdate, want.ThisUpdate, want.NextUpdate)
	}
	if got.CA != want.CA || !bytes.Equal(got.Raw, want.Raw) || got.Digest != want.Digest {
		t.Fatalf("CA %d digest %x, reference %d %x", got.CA, got.Digest, want.CA, want.Digest)
	}
	wantSerials := map[string]bool{}
	for s := range want.Serials.All() {
		wantSerials[s] = true
	}
	checkSerialSet(t, got.Serials, wantSerials)
}

// crlErrClass names the sentinel err wraps: what callers branch on.
func crlErrClass(err error) string {
	for _, s := range []error{ErrCRLTooLarge, ErrCRLSignature, ErrCRLInvalid, ErrCRLOlder} {
		if errors.Is(err, s) {
			return s.Error()
		}
	}
	if err != nil {
		return "unclassified: " + err.Error()
	}
	return "accepted"
}

// resign returns der with its TBSCertList signed anew by key (ECDSA with
// SHA-256, under whatever signatureAlgorithm der names), or nil when der has
// no TBSCertList and signatureAlgorithm to sign.
func resign(t testing.TB, der []byte, key crypto.Signer) []byte {
	s := cryptobyte.String(der)
	var crl, tbs, alg cryptobyte.String
	if !s.ReadASN1(&crl, cbasn1.SEQUENCE) || !crl.ReadASN1Element(&tbs, cbasn1.SEQUENCE) ||
		!crl.ReadASN1Element(&alg, cbasn1.SEQUENCE) {
		return nil
	}
	digest := sha256.Sum256(tbs)
	sig, err := key.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	b := cryptobyte.NewBuilder(nil)
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(tbs)
		b.AddBytes(alg)
		b.AddASN1BitString(sig)
	})
	return b.BytesOrPanic()
}

// crlShape is a CRL of some shape, and what ParseCRL makes of it (nil:
// accepted).
type crlShape struct {
	name string
	der  []byte
	want error
}

// crlShapes returns CRLs signed by ca of every shape the entry parser
// distinguishes, some built by x509 and some edited by hand (and signed
// again), with what ParseCRL must make of them.
func crlShapes(tb testing.TB, ca *testca.CA) []crlShape {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	next := now.Add(time.Hour)
	create := func(tmpl *x509.RevocationList) []byte {
		tmpl.ThisUpdate, tmpl.NextUpdate = now, next
		if tmpl.Number == nil {
			tmpl.Number = big.NewInt(1)
		}
		der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.Key)
		if err != nil {
			tb.Fatal(err)
		}
		return der
	}
	entry := func(serial int64, exts ...pkix.Extension) x509.RevocationListEntry {
		return x509.RevocationListEntry{SerialNumber: big.NewInt(serial), RevocationTime: now, ExtraExtensions: exts}
	}
	// edit rewrites the TBSCertList fields of der (version, signature,
	// issuer, thisUpdate, nextUpdate, revokedCertificates, [0]
	// extensions) and signs it again.
	edit := func(der []byte, f func(fields [][]byte) [][]byte) []byte {
		rl, err := x509.ParseRevocationList(der)
		if err != nil {
			tb.Fatal(err)
		}
		tbs := sequence(f(elements(tb, rl.RawTBSRevocationList))...)
		return resign(tb, sequence(tbs, elements(tb, der)[1], []byte{0x03, 0x01, 0x00}), ca.Key)
	}
	// editEntry rewrites the elements of the first entry of der.
	editEntry := func(der []byte, f func(entry [][]byte) [][]byte) []byte {
		return edit(der, func(fields [][]byte) [][]byte {
			entries := elements(tb, fields[5])
			entries[0] = sequence(f(elements(tb, entries[0]))...)
			fields[5] = sequence(entries...)
			return fields
		})
	}
	withReason := func(code int) x509.RevocationListEntry {
		e := entry(int64(100 + code))
		e.ReasonCode = code
		return e
	}

	empty := create(&x509.RevocationList{})
	one := ca.CRL(2, now, next, big.NewInt(5))
	badSig := slices.Clone(one)
	badSig[len(badSig)-3] ^= 0x01
	critical := pkix.Extension{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 9}, Critical: true, Value: []byte{0x05, 0x00}}
	certIssuer, _ := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 2, Bytes: []byte("other.test")}})
	invalidity, _ := asn1.Marshal(now.Add(-time.Hour))
	late := entry(7)
	late.RevocationTime = time.Date(2051, 1, 1, 0, 0, 0, 0, time.UTC) // GeneralizedTime
	return []crlShape{
		{"empty", empty, nil},
		{"empty_list", edit(empty, func(f [][]byte) [][]byte { return slices.Insert(f, 5, sequence()) }), nil},
		{"one", one, nil},
		{"reasons", create(&x509.RevocationList{RevokedCertificateEntries: []x509.RevocationListEntry{
			withReason(0), withReason(1), withReason(4), withReason(6), withReason(10)}}), nil},
		{"edge_serials", ca.CRL(3, now, next, edgeSerials(tb)...), nil},
		{"duplicate_serials", ca.CRL(3, now, next, big.NewInt(9), big.NewInt(9), big.NewInt(-9), big.NewInt(-9)), nil},
		{"generalized_time", create(&x509.RevocationList{RevokedCertificateEntries: []x509.RevocationListEntry{late}}), nil},
		{"invalidity_date", create(&x509.RevocationList{RevokedCertificateEntries: []x509.RevocationListEntry{
			entry(8, pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 24}, Value: invalidity})}}), nil},
		{"critical_crl_extension", create(&x509.RevocationList{ExtraExtensions: []pkix.Extension{critical},
			RevokedCertificateEntries: []x509.RevocationListEntry{entry(1)}}), ErrCRLInvalid},
		{"critical_entry_extension", create(&x509.RevocationList{RevokedCertificateEntries: []x509.RevocationListEntry{
			entry(1), entry(2, critical)}}), ErrCRLInvalid},
		{"certificate_issuer", create(&x509.RevocationList{RevokedCertificateEntries: []x509.RevocationListEntry{
			entry(1, pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 29}, Critical: true, Value: certIssuer})}}), ErrCRLInvalid},
		{"critical_reason", editEntry(one, func(e [][]byte) [][]byte {
			e[2] = sequence(sequence([]byte{0x06, 0x03, 0x55, 0x1d, 0x15}, []byte{0x01, 0x01, 0xff}, []byte{0x04, 0x03, 0x0a, 0x01, 0x01}))
			return e
		}), ErrCRLInvalid},
		{"bad_reason", editEntry(one, func(e [][]byte) [][]byte {
			e[2] = sequence(sequence([]byte{0x06, 0x03, 0x55, 0x1d, 0x15}, []byte{0x04, 0x04, 0x0a, 0x02, 0x00, 0x01}))
			return e
		}), ErrCRLInvalid},
		{"bad_critical_field", editEntry(one, func(e [][]byte) [][]byte {
			e[2] = sequence(sequence([]byte{0x06, 0x03, 0x55, 0x1d, 0x15}, []byte{0x01, 0x01, 0x01}, []byte{0x04, 0x03, 0x0a, 0x01, 0x01}))
			return e
		}), ErrCRLInvalid},
		{"non_minimal_serial", editEntry(one, func(e [][]byte) [][]byte {
			e[0] = []byte{0x02, 0x02, 0x00, 0x05}
			return e
		}), ErrCRLInvalid},
		{"bad_revocation_time", editEntry(one, func(e [][]byte) [][]byte {
			e[1] = append([]byte{0x17, 0x0d}, "261399000000Z"...)
			return e
		}), ErrCRLInvalid},
		{"entry_without_time", editEntry(one, func(e [][]byte) [][]byte { return e[:1] }), ErrCRLInvalid},
		// x509 ignores what follows an entry's extensions, and what
		// follows the CRL.
		{"entry_trailing_data", editEntry(one, func(e [][]byte) [][]byte { return append(e, []byte{0x05, 0x00}) }), nil},
		{"crl_trailing_data", append(slices.Clone(one), 0x05, 0x00), nil},
		// A second SEQUENCE after revokedCertificates hides the
		// extensions from x509: the CRL number with them.
		{"extra_sequence", edit(one, func(f [][]byte) [][]byte { return slices.Insert(f, 6, sequence()) }), nil},
		{"list_overrun", edit(one, func(f [][]byte) [][]byte {
			return append(f[:5], []byte{0x30, 0x05, 0x02, 0x01, 0x01}) // claims 5 bytes, holds 3
		}), ErrCRLInvalid},
		{"no_next_update", edit(one, func(f [][]byte) [][]byte { return slices.Delete(f, 4, 5) }), ErrCRLInvalid},
		{"truncated", one[:len(one)/2], ErrCRLInvalid},
		{"bad_signature", badSig, ErrCRLSignature},
	}
}

// elements splits the DER SEQUENCE seq into the elements it holds.
func elements(tb testing.TB, seq []byte) [][]byte {
	s := cryptobyte.String(seq)
	if !s.ReadASN1(&s, cbasn1.SEQUENCE) {
		tb.Fatalf("not a sequence: %x", seq)
	}
	var out [][]byte
	for !s.Empty() {
		var e cryptobyte.String
		if !s.ReadAnyASN1Element(&e, nil) {
			tb.Fatalf("malformed element in %x", seq)
		}
		out = append(out, e)
	}
	return out
}

// sequence returns the DER SEQUENCE of elems.
func sequence(elems ...[]byte) []byte {
	b := cryptobyte.NewBuilder(nil)
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		for _, e := range elems {
			b.AddBytes(e)
		}
	})
	return b.BytesOrPanic()
}

// TestParseCRLShapes checks what ParseCRL makes of each shape, and that
// the reference agrees. With -update it rewrites the committed seeds of
// FuzzParseCRLEquivalent from them.
func TestParseCRLShapes(t *testing.T) {
	ca := testca.New(t)
	cas := []*x509.Certificate{ca.Cert}
	shapes := crlShapes(t, ca)
	for _, s := range shapes {
		t.Run(s.name, func(t *testing.T) {
			crl, err := ParseCRL(s.der, cas, 0)
			if crlErrClass(err) != crlErrClass(s.want) {
				t.Fatalf("err = %v, want %v", err, s.want)
			}
			if err == nil && crl.Serials.Len() == 0 && s.name != "empty" && s.name != "empty_list" {
				t.Fatal("no serials")
			}
			checkListEquivalent(t, s.der)
			checkCRLEquivalent(t, s.der, cas)
		})
	}
	if !*updateSeeds {
		return
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzParseCRLEquivalent")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, s := range shapes {
		seed := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s.der)
		if err := os.WriteFile(filepath.Join(dir, s.name), []byte(seed), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestParseCRLMemoryBound checks that parsing a CRL costs memory for its
// DER and its SerialSet, not for every entry as x509 decodes it: parsing
// these 100 000 entries with x509.ParseRevocationList allocated 107 MiB in
// total, ParseCRL about 3.5 MiB. Not a timing: allocation is deterministic
// up to the odd runtime allocation, and the least of three runs is taken.
func TestParseCRLMemoryBound(t *testing.T) {
	const n = 100_000
	const limit = 16 << 20
	ca := testca.New(t)
	now := time.Now()
	der := ca.CRL(1, now, now.Add(time.Hour), randomSerials(n)...)
	cas := []*x509.Certificate{ca.Cert}
	least := uint64(1 << 63)
	for range 3 {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		crl, err := ParseCRL(der, cas, 0)
		runtime.ReadMemStats(&after)
		if err != nil {
			t.Fatal(err)
		}
		if crl.Serials.Len() != n {
			t.Fatalf("%d serials, want %d", crl.Serials.Len(), n)
		}
		least = min(least, after.TotalAlloc-before.TotalAlloc)
	}
	t.Logf("parsing %d entries (%d bytes of DER) allocated %d bytes", n, len(der), least)
	if least > limit {
		t.Errorf("parsing %d entries allocated %d MiB, limit %d MiB", n, least>>20, limit>>20)
	}
}
