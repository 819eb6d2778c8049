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
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/agentauthz/agentauthz/internal/reason"
	"github.com/agentauthz/agentauthz/internal/testca"
)

var updateSeeds = flag.Bool("update", false, "rewrite testdata/fuzz/FuzzParseCRLEquivalent from crlShapes")

// parseCRLReference is ParseCRL as it was before parseRevocationList: the
// whole CRL, entries included, decoded by x509.ParseRevocationList, plus
// the structural checks x509 does not make (parseRevocationListReference).
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
	rl, err := parseRevocationListReference(der)
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

// parseRevocationListReference is x509.ParseRevocationList followed by the
// structural checks parseRevocationList adds to it (RFC 5280 allows
// nothing after the CertificateList, after signatureValue, after
// crlExtensions or after an entry's extensions; crlExtensions is one [0]
// holding one SEQUENCE), written independently of it: with encoding/asn1,
// over the raw fields x509 returns, where parseRevocationList uses
// cryptobyte over the DER before x509 sees it. It returns the same errors,
// so that tests can tell which check refused a CRL.
func parseRevocationListReference(der []byte) (*x509.RevocationList, error) {
	rl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, err
	}
	if len(rl.Raw) != len(der) {
		return nil, errCRLTrailingData
	}
	// CertificateList: tbsCertList, signatureAlgorithm, signatureValue.
	if outer, err := derContents(rl.Raw); err != nil || len(outer) != 3 {
		return nil, errCRLExtraField
	}
	// TBSCertList: version, signature, issuer, thisUpdate (x509 read them
	// all), then nextUpdate, revokedCertificates and crlExtensions, each
	// optional, in that order, and nothing else.
	tbs, err := derContents(rl.RawTBSRevocationList)
	if err != nil || len(tbs) < 4 {
		return nil, errCRLTBSField
	}
	i := 4
	if i < len(tbs) && tbs[i].Class == asn1.ClassUniversal && !tbs[i].IsCompound &&
		(tbs[i].Tag == asn1.TagUTCTime || tbs[i].Tag == asn1.TagGeneralizedTime) {
		i++
	}
	if i < len(tbs) && isSequence(tbs[i]) {
		i++
	}
	if i < len(tbs) && tbs[i].Class == asn1.ClassContextSpecific && tbs[i].Tag == 0 && tbs[i].IsCompound {
		// [0] EXPLICIT Extensions: one SEQUENCE.
		inner, err := derSplit(tbs[i].Bytes)
		if err != nil || len(inner) != 1 || !isSequence(inner[0]) {
			return nil, errCRLExtensions
		}
		i++
	}
	if i != len(tbs) {
		return nil, errCRLTBSField
	}
	// Each entry: userCertificate, revocationDate, crlEntryExtensions
	// (optional).
	for _, e := range rl.RevokedCertificateEntries {
		fields, err := derContents(e.Raw)
		if err != nil || len(fields) > 3 || len(fields) == 3 && !isSequence(fields[2]) {
			return nil, errCRLEntryField
		}
	}
	return rl, nil
}

// derContents splits the contents of the DER element der into elements.
func derContents(der []byte) ([]asn1.RawValue, error) {
	var v asn1.RawValue
	rest, err := asn1.Unmarshal(der, &v)
	if err != nil {
		return nil, err
	}
	if len(rest) != 0 {
		return nil, errors.New("data after the element")
	}
	return derSplit(v.Bytes)
}

// derSplit splits b into the DER elements it holds, end to end.
func derSplit(b []byte) ([]asn1.RawValue, error) {
	var out []asn1.RawValue
	for len(b) > 0 {
		var v asn1.RawValue
		rest, err := asn1.Unmarshal(b, &v)
		if err != nil {
			return nil, err
		}
		out, b = append(out, v), rest
	}
	return out, nil
}

func isSequence(v asn1.RawValue) bool {
	return v.Class == asn1.ClassUniversal && v.Tag == asn1.TagSequence && v.IsCompound
}

// FuzzParseCRLEquivalent checks ParseCRL against parseCRLReference, and
// parseRevocationList against parseRevocationListReference, on arbitrary input:
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
// parseRevocationListReference on der.
func checkListEquivalent(t *testing.T, der []byte) {
	t.Helper()
	got, entries, err := parseRevocationList(der)
	want, wantErr := parseRevocationListReference(der)
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
	null := []byte{0x05, 0x00}
	// A delta CRL indicator (RFC 5280 5.2.4, critical) naming base CRL 1.
	deltaExt := extension(tb, asn1.ObjectIdentifier{2, 5, 29, 27}, true, []byte{0x02, 0x01, 0x01})
	delta := create(&x509.RevocationList{Number: big.NewInt(2), RevokedCertificateEntries: []x509.RevocationListEntry{entry(5)},
		ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 27}, Critical: true, Value: []byte{0x02, 0x01, 0x01}}}})
	extensive := wellFormedCRL(tb, ca, now, next)
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
		// follows the CRL; RFC 5280 does not allow either, so ParseCRL
		// refuses them.
		{"entry_trailing_data", editEntry(one, func(e [][]byte) [][]byte { return append(e, null) }), errCRLEntryField},
		{"entry_trailing_data_no_extensions", editEntry(one, func(e [][]byte) [][]byte { return append(e[:2], null) }), errCRLEntryField},
		// A second extensions SEQUENCE would hide a critical
		// certificateIssuer (an indirect CRL's entry) from x509.
		{"entry_second_extensions", editEntry(one, func(e [][]byte) [][]byte {
			return append(e, sequence(extension(tb, asn1.ObjectIdentifier{2, 5, 29, 29}, true, certIssuer)))
		}), errCRLEntryField},
		{"crl_trailing_data", append(slices.Clone(one), null...), errCRLTrailingData},
		{"crl_followed_by_crl", append(slices.Clone(one), empty...), errCRLTrailingData},
		{"signature_trailing_data", sequence(append(elements(tb, one), null)...), errCRLExtraField},
		// A second SEQUENCE after revokedCertificates hides the
		// extensions from x509: the CRL number with them, and a
		// critical delta CRL indicator just as well.
		{"extra_sequence", edit(one, func(f [][]byte) [][]byte { return slices.Insert(f, 6, sequence()) }), errCRLTBSField},
		{"delta_crl", delta, ErrCRLInvalid},
		{"delta_crl_behind_extra_sequence", edit(delta, func(f [][]byte) [][]byte { return slices.Insert(f, 6, sequence()) }), errCRLTBSField},
		// So do a second SEQUENCE inside [0], and a second [0].
		{"delta_crl_second_extensions_sequence", edit(one, func(f [][]byte) [][]byte {
			inner := cryptobyte.String(f[6])
			if !inner.ReadASN1(&inner, cbasn1.Tag(0).Constructed().ContextSpecific()) {
				tb.Fatalf("not [0]: %x", f[6])
			}
			f[6] = explicit0(inner, sequence(deltaExt))
			return f
		}), errCRLExtensions},
		{"delta_crl_second_extensions", edit(one, func(f [][]byte) [][]byte { return append(f, explicit0(sequence(deltaExt))) }), errCRLTBSField},
		{"empty_extensions_tag", edit(one, func(f [][]byte) [][]byte { // x509 refuses this one too
			f[6] = explicit0()
			return f
		}), ErrCRLInvalid},
		{"primitive_extensions_tag", edit(one, func(f [][]byte) [][]byte {
			f[6] = slices.Clone(f[6])
			f[6][0] = 0x80 // [0] primitive: x509 does not read it
			return f
		}), errCRLTBSField},
		{"field_after_extensions", edit(one, func(f [][]byte) [][]byte { return append(f, null) }), errCRLTBSField},
		// Without revokedCertificates, the same after nextUpdate, and
		// after thisUpdate.
		{"no_list_field_before_extensions", edit(empty, func(f [][]byte) [][]byte { return slices.Insert(f, 5, null) }), errCRLTBSField},
		{"no_list_field_after_extensions", edit(empty, func(f [][]byte) [][]byte { return append(f, null) }), errCRLTBSField},
		{"no_next_update_field", edit(empty, func(f [][]byte) [][]byte {
			f[4] = null
			return f
		}), errCRLTBSField},
		// Well formed, with extensions everywhere RFC 5280 puts them.
		{"extensions", extensive, nil},
		{"list_overrun", edit(one, func(f [][]byte) [][]byte {
			return append(f[:5], []byte{0x30, 0x05, 0x02, 0x01, 0x01}) // claims 5 bytes, holds 3
		}), ErrCRLInvalid},
		{"no_next_update", edit(one, func(f [][]byte) [][]byte { return slices.Delete(f, 4, 5) }), ErrCRLInvalid},
		{"truncated", one[:len(one)/2], ErrCRLInvalid},
		{"bad_signature", badSig, ErrCRLSignature},
	}
}

// wellFormedCRL returns a CRL signed by ca with CRL extensions (number,
// authority key id, a non-critical issuing distribution point, a private
// one) and entries with extensions (reason code, invalidity date, a private
// one), and with none, in both time forms.
func wellFormedCRL(tb testing.TB, ca *testca.CA, now, next time.Time) []byte {
	invalidity, _ := asn1.Marshal(now.Add(-time.Hour))
	private := pkix.Extension{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 7}, Value: []byte{0x0c, 0x02, 'o', 'k'}}
	// IssuingDistributionPoint { onlyContainsUserCerts TRUE }, non-critical
	// here (RFC 5280 wants it critical, which ParseCRL would refuse).
	idp := pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 28}, Value: []byte{0x30, 0x03, 0x81, 0x01, 0xff}}
	var entries []x509.RevocationListEntry
	for i := range 40 {
		e := x509.RevocationListEntry{SerialNumber: new(big.Int).Lsh(big.NewInt(int64(i)+1), uint(i*3)), RevocationTime: now.Add(-time.Duration(i) * time.Minute)}
		switch i % 4 {
		case 1:
			e.ReasonCode = 1 + i%9
		case 2:
			e.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 24}, Value: invalidity}, private}
			e.ReasonCode = 4
		case 3:
			e.RevocationTime = time.Date(2050+i, 1, 1, 0, 0, 0, 0, time.UTC) // GeneralizedTime
		}
		entries = append(entries, e)
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(42), ThisUpdate: now, NextUpdate: next,
		ExtraExtensions: []pkix.Extension{idp, private}, RevokedCertificateEntries: entries,
	}, ca.Cert, ca.Key)
	if err != nil {
		tb.Fatal(err)
	}
	return der
}

// extension returns the DER of an Extension.
func extension(tb testing.TB, id asn1.ObjectIdentifier, critical bool, value []byte) []byte {
	der, err := asn1.Marshal(pkix.Extension{Id: id, Critical: critical, Value: value})
	if err != nil {
		tb.Fatal(err)
	}
	return der
}

// explicit0 returns the DER of [0] EXPLICIT holding elems.
func explicit0(elems ...[]byte) []byte {
	b := cryptobyte.NewBuilder(nil)
	b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
		for _, e := range elems {
			b.AddBytes(e)
		}
	})
	return b.BytesOrPanic()
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
			if !shapeErr(err, s.want) {
				t.Fatalf("err = %v, want %v", err, s.want)
			}
			if _, err := parseCRLReference(s.der, cas, 0); !shapeErr(err, s.want) {
				t.Fatalf("reference: err = %v, want %v", err, s.want)
			}
			if structural(s.want) {
				// The shape is one x509 lets through: the refusal is ours.
				rl, err := x509.ParseRevocationList(s.der)
				if err != nil {
					t.Fatalf("x509 refuses it too: %v", err)
				}
				critical := func(e pkix.Extension) bool { return e.Critical }
				seen := slices.ContainsFunc(rl.Extensions, critical)
				for _, e := range rl.RevokedCertificateEntries {
					seen = seen || slices.ContainsFunc(e.Extensions, critical)
				}
				if seen && (strings.HasPrefix(s.name, "delta_crl_") || s.name == "entry_second_extensions") {
					t.Fatal("x509 sees the critical extension: the shape hides nothing")
				}
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

// structural reports whether err is one of the refusals parseRevocationList
// adds to x509's.
func structural(err error) bool {
	for _, e := range []error{errCRLTrailingData, errCRLExtraField, errCRLTBSField, errCRLExtensions, errCRLEntryField} {
		if err == e {
			return true
		}
	}
	return false
}

// TestMalformedCRLKeepsLastGood takes a CRL hiding a delta CRL indicator
// behind a second SEQUENCE (signed by the tenant's CA, newer CRL number)
// through a URL source: it is refused, logged and counted like any
// malformed CRL, and the CRL held before stays in force.
func TestMalformedCRLKeepsLastGood(t *testing.T) {
	ca := testca.New(t)
	var hidden []byte
	for _, s := range crlShapes(t, ca) {
		if s.name == "delta_crl_behind_extra_sequence" {
			hidden = s.der // CRL number 2, revokes serial 5
		}
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC) // crlShapes' thisUpdate
	srv := newCRLServer(t, ca.CRL(1, now, now.Add(time.Hour), big.NewInt(7)))
	var logs lockedBuffer
	c, reg := start(t, Config{Now: newClock(now.Add(time.Minute)).Now, Logger: hclog.New(&hclog.LoggerOptions{Output: &logs}),
		Tenants: map[string]TenantConfig{td: {CAs: []*x509.Certificate{ca.Cert}, CRLURLs: []string{srv.URL}, PollInterval: 10 * time.Millisecond}}})
	waitFor(t, "ready", c.Ready)
	waitCheck(t, c, td, issuedBy(ca, "7"), "bot", reason.CertificateRevoked)

	srv.set(hidden, false)
	errs := map[string]string{"tenant": td, "source": "url"}
	waitFor(t, "refusals counted", func() bool { return metric(t, reg, "agentauthz_revocation_refresh_errors_total", errs) >= 2 })
	if got := c.Check(td, issuedBy(ca, "7"), "bot"); got != reason.CertificateRevoked {
		t.Errorf("serial of the CRL held: %q", string(got))
	}
	if got := c.Check(td, issuedBy(ca, "5"), "bot"); got != "" {
		t.Errorf("serial of the refused CRL: %q", string(got))
	}
	if !c.Ready() {
		t.Error("not ready after a refused CRL")
	}
	if out := logs.String(); !strings.Contains(out, "revocation: refused crl") || !strings.Contains(out, errCRLTBSField.Error()) {
		t.Errorf("log does not report the refusal:\n%s", out)
	}
}

// lockedBuffer is a bytes.Buffer safe for concurrent writes and reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// shapeErr reports whether err is what a crlShape wants: nil, a sentinel,
// or a structural error (errCRL*), which must come wrapped in ErrCRLInvalid
// like any other malformed CRL.
func shapeErr(err, want error) bool {
	if want == nil || err == nil {
		return err == want
	}
	class := want
	if structural(want) {
		class = ErrCRLInvalid
	}
	return errors.Is(err, want) && crlErrClass(err) == crlErrClass(class)
}

// TestParseCRLWellFormedUnchanged checks that the structural checks refuse
// nothing x509 reads in full: a CRL with CRL extensions and entries with
// and without extensions parses to what x509.ParseRevocationList alone
// makes of it (every field but the entries, and the same serials and
// entry criticality), and ParseCRL takes the same number, times and
// serials from it.
func TestParseCRLWellFormedUnchanged(t *testing.T) {
	ca := testca.New(t)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for name, der := range map[string][]byte{
		"extensions":  wellFormedCRL(t, ca, now, now.Add(time.Hour)),
		"testca":      ca.CRL(9, now, now.Add(time.Hour), big.NewInt(1), big.NewInt(0x7fff)),
		"no_entries":  ca.CRL(9, now, now.Add(time.Hour)),
		"pem_entries": pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: wellFormedCRL(t, ca, now, now.Add(time.Hour))}),
	} {
		t.Run(name, func(t *testing.T) {
			crl, err := ParseCRL(der, []*x509.Certificate{ca.Cert}, 0)
			if err != nil {
				t.Fatal(err)
			}
			rl, err := x509.ParseRevocationList(crl.Raw)
			if err != nil {
				t.Fatal(err)
			}
			got, entries, err := parseRevocationList(crl.Raw)
			if err != nil {
				t.Fatal(err)
			}
			if entries.critical != nil {
				t.Fatalf("critical entry extension %v", entries.critical)
			}
			var serials []string
			if err := entries.serials(func(v *big.Int) { serials = append(serials, v.Text(16)) }); err != nil {
				t.Fatal(err)
			}
			want := map[string]bool{}
			var wantSerials []string
			for _, e := range rl.RevokedCertificateEntries {
				want[e.SerialNumber.Text(16)] = true
				wantSerials = append(wantSerials, e.SerialNumber.Text(16))
			}
			if !slices.Equal(serials, wantSerials) {
				t.Fatalf("serials %q, x509 %q", serials, wantSerials)
			}
			checkSerialSet(t, crl.Serials, want)
			if crl.Number.Cmp(rl.Number) != 0 || !crl.ThisUpdate.Equal(rl.ThisUpdate) || !crl.NextUpdate.Equal(rl.NextUpdate) {
				t.Fatalf("number %v times %v %v, x509 %v %v %v", crl.Number, crl.ThisUpdate, crl.NextUpdate, rl.Number, rl.ThisUpdate, rl.NextUpdate)
			}
			g, w := *got, *rl
			g.Raw, w.Raw = nil, nil
			w.RevokedCertificateEntries, w.RevokedCertificates = nil, nil
			if !reflect.DeepEqual(g, w) {
				t.Fatalf("parseRevocationList:\n%+v\nx509:\n%+v", g, w)
			}
			if name == "extensions" && (len(rl.Extensions) != 4 || len(rl.RevokedCertificateEntries) != 40) {
				t.Fatalf("%d crl extensions, %d entries: not the CRL meant", len(rl.Extensions), len(rl.RevokedCertificateEntries))
			}
		})
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
