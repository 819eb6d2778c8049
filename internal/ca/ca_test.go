package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/identity"
)

const td = "acme.example"

// clock is a settable test clock.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func issueReq(id string) IssueRequest {
	return IssueRequest{TrustDomain: td, AgentID: id, Trust: 3, Scopes: []string{"payments:read", "payments:initiate"},
		Owner: "alice@acme.example", TTL: 24 * time.Hour, Operator: "alice"}
}

func caPool(t *testing.T, a *Authority) *x509.CertPool {
	t.Helper()
	b, err := os.ReadFile(a.CertPath(td))
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(b)
	return p
}

func TestIssueNativeProfile(t *testing.T) { eachBackend(t, testIssueNativeProfile) }

func testIssueNativeProfile(t *testing.T, be backend) {
	a, c := newTestAuthorityOn(t, be)
	for _, kt := range []KeyType{KeyECDSAP256, KeyEd25519} {
		req := issueReq("bot-" + string(kt))
		req.KeyType = kt
		iss, err := a.Issue(req)
		if err != nil {
			t.Fatal(err)
		}
		cert := iss.Cert
		if _, err := cert.Verify(x509.VerifyOptions{Roots: caPool(t, a), CurrentTime: c.t,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Fatalf("%s: verify: %v", kt, err)
		}
		ag, err := identity.ParseNative(cert, td)
		if err != nil {
			t.Fatalf("%s: ParseNative: %v", kt, err)
		}
		if ag.ID != req.AgentID || ag.TrustLevel != 3 || ag.Owner != "alice@acme.example" ||
			!slices.Equal(ag.Scopes, []string{"payments:initiate", "payments:read"}) {
			t.Errorf("%s: parsed %+v", kt, ag)
		}
		if got := cert.Subject.Organization; len(got) != 1 || got[0] != "Acme Corp" {
			t.Errorf("O = %v", got)
		}
		if cert.KeyUsage != x509.KeyUsageDigitalSignature || !slices.Equal(cert.CRLDistributionPoints, []string{"http://crl.acme.example/acme.crl"}) {
			t.Errorf("KU %v CRL DP %v", cert.KeyUsage, cert.CRLDistributionPoints)
		}
		if cert.SerialNumber.BitLen() < 100 || cert.SerialNumber.BitLen() > 127 {
			t.Errorf("serial has %d bits", cert.SerialNumber.BitLen())
		}
		if !cert.NotAfter.Equal(c.t.Add(24 * time.Hour)) {
			t.Errorf("NotAfter %v", cert.NotAfter)
		}
		blk, _ := pem.Decode(iss.KeyPEM)
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil || !publicKeysEqual(k.(crypto.Signer).Public(), cert.PublicKey) {
			t.Fatalf("key does not match cert: %v", err)
		}
		recs, err := a.List(ListFilter{TrustDomain: td, AgentID: req.AgentID})
		if err != nil || len(recs) != 1 || recs[0].Serial != cert.SerialNumber.Text(16) || recs[0].Status != "active" ||
			recs[0].Operator != "alice" || recs[0].KeyType != string(kt) {
			t.Fatalf("inventory %+v %v", recs, err)
		}
	}
}

func TestIssueRejectsBadInput(t *testing.T) { eachBackend(t, testIssueRejectsBadInput) }

func testIssueRejectsBadInput(t *testing.T, be backend) {
	a, _ := newTestAuthorityOn(t, be)
	tests := []struct {
		name string
		mod  func(*IssueRequest)
		want error
	}{
		{"bad id", func(r *IssueRequest) { r.AgentID = "Bad_ID" }, ErrInvalid},
		{"id too long", func(r *IssueRequest) { r.AgentID = strings.Repeat("a", 64) }, ErrInvalid},
		{"trust 7", func(r *IssueRequest) { r.Trust = 7 }, ErrInvalid},
		{"no scope", func(r *IssueRequest) { r.Scopes = nil }, ErrInvalid},
		{"empty scope", func(r *IssueRequest) { r.Scopes = []string{""} }, ErrInvalid},
		{"malformed scope", func(r *IssueRequest) { r.Scopes = []string{"payments"} }, ErrInvalid},
		{"scope two colons", func(r *IssueRequest) { r.Scopes = []string{"a:b:c"} }, ErrInvalid},
		{"scope upper", func(r *IssueRequest) { r.Scopes = []string{"Payments:read"} }, ErrInvalid},
		{"bad owner", func(r *IssueRequest) { r.Owner = "alice smith" }, ErrInvalid},
		{"ttl over max", func(r *IssueRequest) { r.TTL = 721 * time.Hour }, ErrInvalid},
		{"ttl zero", func(r *IssueRequest) { r.TTL = 0 }, ErrInvalid},
		{"unknown td", func(r *IssueRequest) { r.TrustDomain = "other.example" }, ErrNotFound},
		{"bad key type", func(r *IssueRequest) { r.KeyType = "rsa" }, ErrInvalid},
		{"no operator", func(r *IssueRequest) { r.Operator = "" }, ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := issueReq("bot")
			tt.mod(&req)
			if _, err := a.Issue(req); !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
	if recs, _ := a.List(ListFilter{}); len(recs) != 0 {
		t.Fatalf("rejected requests left %d records", len(recs))
	}
	if _, err := a.Issue(issueReq("bot")); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Issue(issueReq("bot")); !errors.Is(err, ErrExists) {
		t.Fatalf("second issue: %v", err)
	}
}

func makeCSR(t *testing.T, corrupt bool) []byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "ignored", OrganizationalUnit: []string{"trust:L4"}}}, key)
	if err != nil {
		t.Fatal(err)
	}
	if corrupt {
		der[len(der)-5] ^= 0xff // inside the signature
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func TestIssueFromCSR(t *testing.T) { eachBackend(t, testIssueFromCSR) }

func testIssueFromCSR(t *testing.T, be backend) {
	a, _ := newTestAuthorityOn(t, be)
	req := issueReq("csr-bot")
	req.CSR = makeCSR(t, false)
	iss, err := a.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	if iss.KeyPEM != nil {
		t.Error("key returned for a CSR")
	}
	ag, err := identity.ParseNative(iss.Cert, td)
	if err != nil || ag.TrustLevel != 3 || ag.ID != "csr-bot" {
		t.Fatalf("CSR attributes leaked or profile broken: %+v %v", ag, err)
	}
	req = issueReq("csr-bad")
	req.CSR = makeCSR(t, true)
	if _, err := a.Issue(req); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "signature") {
		t.Fatalf("bad CSR: %v", err)
	}
}

func TestLifecycle(t *testing.T) { eachBackend(t, testLifecycle) }

func testLifecycle(t *testing.T, be backend) {
	a, c := newTestAuthorityOn(t, be)
	pay, err := a.Issue(issueReq("payments-bot"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := a.Issue(issueReq("other-bot"))
	if err != nil {
		t.Fatal(err)
	}
	g0, _ := a.RevocationGeneration()

	// Renew keeps attributes and leaves the old certificate active.
	c.t = c.t.Add(time.Hour)
	ren, err := a.Renew(RenewRequest{TrustDomain: td, AgentID: "payments-bot", Operator: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	if ren.Record.Trust != "L3" || !slices.Equal(ren.Record.Scopes, pay.Record.Scopes) || ren.Record.Serial == pay.Record.Serial {
		t.Fatalf("renewed %+v", ren.Record)
	}
	// Reissue with fewer rights revokes both earlier certificates as superseded.
	re := issueReq("payments-bot")
	re.Trust, re.Scopes, re.Operator = 1, []string{"payments:read"}, "carol"
	ri, err := a.Reissue(re)
	if err != nil {
		t.Fatal(err)
	}
	recs, _ := a.List(ListFilter{TrustDomain: td, AgentID: "payments-bot"})
	for _, r := range recs {
		want := "revoked"
		if r.Serial == ri.Record.Serial {
			want = "active"
		} else if r.RevocationReason != "superseded" {
			t.Errorf("%s reason %q", r.Serial, r.RevocationReason)
		}
		if r.Status != want {
			t.Errorf("%s status %s want %s", r.Serial, r.Status, want)
		}
	}
	checkFleet(t, a)
	g1, _ := a.RevocationGeneration()
	if g1 == g0 {
		t.Error("reissue did not change the revocation generation")
	}

	// Agent-level revoke: only this agent.
	serials, err := a.Revoke(td, "payments-bot", ReasonKeyCompromise, "dave")
	if err != nil || !slices.Equal(serials, []string{ri.Record.Serial}) {
		t.Fatalf("revoke: %v %v", serials, err)
	}
	if ra, _ := a.RevokedAgents(td); !slices.Equal(ra, []string{"payments-bot"}) {
		t.Fatalf("revoked agents %v", ra)
	}
	if o, _ := a.List(ListFilter{Serial: other.Record.Serial}); o[0].Status != "active" {
		t.Fatal("other agent touched")
	}
	if _, err := a.Revoke(td, "payments-bot", ReasonKeyCompromise, "dave"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("double revoke: %v", err)
	}
	if _, err := a.Revoke(td, "ghost", ReasonKeyCompromise, "dave"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown agent: %v", err)
	}
	if err := a.RevokeSerial(td, "abcdef", ReasonKeyCompromise, "dave"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown serial: %v", err)
	}
	if err := a.RevokeSerial(td, other.Record.Serial, ReasonCessationOfOperation, "dave"); err != nil {
		t.Fatal(err)
	}
	checkFleet(t, a)
	// The newest revocations, filtered by the database, are those of the
	// whole event list.
	all, err := a.Events("", "")
	if err != nil {
		t.Fatal(err)
	}
	var wantRev []Event
	for i := len(all) - 1; i >= 0; i-- {
		if all[i].Event == "revoke" || all[i].Event == "agent_revoke" {
			wantRev = append(wantRev, all[i])
		}
	}
	if last, err := a.LastEvents(10, "revoke", "agent_revoke"); err != nil || len(wantRev) < 2 || !reflect.DeepEqual(last, wantRev) {
		t.Fatalf("last revocations %+v, wantRev %+v (%v)", last, wantRev, err)
	}
	if last, err := a.LastEvents(1, "revoke", "agent_revoke"); err != nil || len(last) != 1 || last[0] != wantRev[0] {
		t.Fatalf("the last revocation %+v %v", last, err)
	}
	if _, err := a.LastEvents(0, "revoke"); err == nil {
		t.Fatal("no events asked for: no error")
	}

	// CRL: signed, numbered, with reasons.
	der, err := a.CRL(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	crl, err := a.ParseCRL(td, der)
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[string]int{}
	for _, e := range crl.RevokedCertificateEntries {
		reasons[e.SerialNumber.Text(16)] = e.ReasonCode
	}
	if len(reasons) != 4 || reasons[ri.Record.Serial] != int(ReasonKeyCompromise) || reasons[pay.Record.Serial] != int(ReasonSuperseded) ||
		reasons[other.Record.Serial] != int(ReasonCessationOfOperation) {
		t.Fatalf("CRL entries %v", reasons)
	}
	if crl.Number.Int64() != 1 || !crl.NextUpdate.Equal(crl.ThisUpdate.Add(time.Hour)) {
		t.Fatalf("CRL number %v next %v", crl.Number, crl.NextUpdate)
	}
	// CurrentCRL reuses the last CRL while nothing changed and it is fresh.
	cur1, err := a.CurrentCRL(td)
	if err != nil {
		t.Fatal(err)
	}
	cur2, _ := a.CurrentCRL(td)
	if string(cur1) != string(der) || string(cur2) != string(der) {
		t.Fatal("CurrentCRL re-signed without a change")
	}
	p1, _ := x509.ParseRevocationList(cur1)
	// Past half its validity it is re-signed with the next number.
	c.t = c.t.Add(31 * time.Minute)
	curLate, _ := a.CurrentCRL(td)
	if pl, _ := x509.ParseRevocationList(curLate); pl.Number.Cmp(big.NewInt(2)) != 0 {
		t.Fatalf("stale CRL not re-signed: number %v", pl.Number)
	}
	// Renew lifts the agent revocation and bumps the generation.
	g2, _ := a.RevocationGeneration()
	if _, err := a.Renew(RenewRequest{TrustDomain: td, AgentID: "payments-bot", Operator: "erin"}); err != nil {
		t.Fatal(err)
	}
	if ra, _ := a.RevokedAgents(td); len(ra) != 0 {
		t.Fatalf("renew did not lift revocation: %v", ra)
	}
	if g3, _ := a.RevocationGeneration(); g3 == g2 {
		t.Fatal("generation unchanged after lift")
	}
	cur3, _ := a.CurrentCRL(td)
	p3, _ := x509.ParseRevocationList(cur3)
	if p3.Number.Cmp(p1.Number) <= 0 {
		t.Fatal("CurrentCRL not re-signed after a change")
	}
	// Events are append-only and complete.
	d, err := a.Show(td, "payments-bot")
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, e := range d.Events {
		kinds = append(kinds, e.Event)
	}
	want := []string{"issue", "renew", "revoke", "revoke", "reissue", "revoke", "agent_revoke", "agent_revocation_lifted", "renew"}
	if !slices.Equal(kinds, want) {
		t.Fatalf("events %v\nwant %v", kinds, want)
	}
	if _, err := a.db.Exec(`DELETE FROM events`); err == nil {
		t.Fatal("events could be deleted")
	}
	if _, err := a.db.Exec(`UPDATE events SET operator = 'mallory'`); err == nil {
		t.Fatal("events could be updated")
	}
}

func TestKeyPermissions(t *testing.T) { eachBackend(t, testKeyPermissions) }

func testKeyPermissions(t *testing.T, be backend) {
	a, _ := newTestAuthorityOn(t, be)
	if err := os.Chmod(a.KeyPath(td), 0o640); err != nil {
		t.Fatal(err)
	}
	_, err := a.Issue(issueReq("bot"))
	var kpe *KeyPermissionError
	if !errors.As(err, &kpe) || !errors.Is(err, ErrKeyPermissions) || kpe.Path != a.KeyPath(td) {
		t.Fatalf("err = %v", err)
	}
	if recs, _ := a.List(ListFilter{}); len(recs) != 0 {
		t.Fatal("record written despite the key error")
	}
}

func TestInitAndImport(t *testing.T) { eachBackend(t, testInitAndImport) }

func testInitAndImport(t *testing.T, be backend) {
	a, _ := newTestAuthorityOn(t, be)
	st, err := os.Stat(a.KeyPath(td))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v %v", st.Mode(), err)
	}
	if _, err := a.Init(InitRequest{TrustDomain: td, Operator: "x"}); !errors.Is(err, ErrExists) {
		t.Fatalf("re-init: %v", err)
	}
	for _, bad := range []string{"", "Acme", "a..b", ".a", "a/b"} {
		if _, err := a.Init(InitRequest{TrustDomain: bad, Operator: "x"}); !errors.Is(err, ErrInvalid) {
			t.Errorf("init %q: %v", bad, err)
		}
	}
	// Import td's CA as a second trust domain; a leaf or a wrong key is refused.
	certPEM, _ := os.ReadFile(a.CertPath(td))
	keyPEM, _ := os.ReadFile(a.KeyPath(td))
	iss, err := a.Issue(issueReq("bot"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Import(ImportRequest{TrustDomain: "b.example", CertPEM: iss.CertPEM, KeyPEM: iss.KeyPEM, Operator: "x"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("leaf import: %v", err)
	}
	if _, err := a.Import(ImportRequest{TrustDomain: "b.example", CertPEM: certPEM, KeyPEM: iss.KeyPEM, Operator: "x"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("mismatched key import: %v", err)
	}
	info, err := a.Import(ImportRequest{TrustDomain: "b.example", CertPEM: certPEM, KeyPEM: keyPEM, Operator: "x"})
	if err != nil || !info.Imported || info.Org != "Acme Corp" {
		t.Fatalf("import: %+v %v", info, err)
	}
	tds, _ := a.TrustDomains()
	if !slices.Equal(tds, []string{"acme.example", "b.example"}) {
		t.Fatalf("trust domains %v", tds)
	}
	if _, err := os.Stat(filepath.Join(a.DataDir(), "ca", "Acme")); err == nil {
		t.Fatal("invalid init left files")
	}
}

func TestCorruptStore(t *testing.T) {
	dir := t.TempDir()
	if _, err := Open(dir, MustExist()); !errors.Is(err, ErrNoStore) {
		t.Fatalf("missing store: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "inventory.db"), []byte(strings.Repeat("garbage!", 1000)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(dir)
	var se *StoreError
	if !errors.Is(err, ErrCorruptStore) || !errors.As(err, &se) {
		t.Fatalf("corrupt store: %v", err)
	}
}

func TestStoreSharedBetweenOpens(t *testing.T) { eachBackend(t, testStoreSharedBetweenOpens) }

func testStoreSharedBetweenOpens(t *testing.T, be backend) {
	a, _ := newTestAuthorityOn(t, be)
	b, err := be.open(a.DataDir())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	g0, _ := b.RevocationGeneration()
	iss, _ := a.Issue(issueReq("bot"))
	if err := a.RevokeSerial(td, iss.Record.Serial, ReasonKeyCompromise, "x"); err != nil {
		t.Fatal(err)
	}
	if g1, _ := b.RevocationGeneration(); g1 == g0 {
		t.Fatal("second handle did not see the revocation")
	}
}

func TestEnsureDev(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	env, err := EnsureDev(dir, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(env.Agents) != 5 || env.TrustDomain != DevTrustDomain {
		t.Fatalf("env %+v", env)
	}
	serial := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(b)
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := identity.ParseNative(c, DevTrustDomain); err != nil {
			t.Fatal(err)
		}
		return c.SerialNumber.Text(16)
	}
	first := serial(env.Agents[1].CertPath)
	if st, _ := os.Stat(env.Agents[1].KeyPath); st.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v", st.Mode())
	}
	// Idempotent while valid.
	env2, err := EnsureDev(dir, now.Add(time.Hour))
	if err != nil || serial(env2.Agents[1].CertPath) != first {
		t.Fatalf("re-run re-issued: %v", err)
	}
	// Missing files and near-expiry certificates are re-issued.
	os.Remove(env.Agents[0].KeyPath)
	before0 := serial(env.Agents[0].CertPath)
	if _, err := EnsureDev(dir, now.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if serial(env.Agents[0].CertPath) == before0 {
		t.Fatal("missing key not re-issued")
	}
	if _, err := EnsureDev(dir, now.Add(devTTL)); err != nil {
		t.Fatal(err)
	}
	if serial(env.Agents[1].CertPath) == first {
		t.Fatal("expiring certificate not re-issued")
	}
}

func TestValidators(t *testing.T) {
	for _, s := range []string{"L0", "L4", "3", "l2"} {
		if _, err := ParseTrust(s); err != nil {
			t.Errorf("ParseTrust(%q): %v", s, err)
		}
	}
	for _, s := range []string{"L7", "L", "", "L-1", "L10", "high"} {
		if _, err := ParseTrust(s); err == nil {
			t.Errorf("ParseTrust(%q) accepted", s)
		}
	}
	for s, want := range map[string]string{"0A:bC": "abc", "0x00ff": "ff", "DEADbeef": "deadbeef"} {
		if got, err := ParseSerial(s); err != nil || got != want {
			t.Errorf("ParseSerial(%q) = %q, %v", s, got, err)
		}
	}
	for _, s := range []string{"", "0", "xyz", strings.Repeat("f", 65)} {
		if _, err := ParseSerial(s); err == nil {
			t.Errorf("ParseSerial(%q) accepted", s)
		}
	}
	for s, want := range map[string]Reason{"keyCompromise": 1, "key-compromise": 1, "SUPERSEDED": 4, "": 0, "cessation_of_operation": 5} {
		if got, err := ParseReason(s); err != nil || got != want {
			t.Errorf("ParseReason(%q) = %v, %v", s, got, err)
		}
	}
	if _, err := ParseReason("certificateHold"); err == nil {
		t.Error("certificateHold accepted")
	}
}

func TestConcurrentWritersShareTheStore(t *testing.T) {
	eachBackend(t, testConcurrentWritersShareTheStore)
}

func testConcurrentWritersShareTheStore(t *testing.T, be backend) {
	a, c := newTestAuthorityOn(t, be)
	b, err := be.open(a.DataDir(), WithClock(c.now))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	errs := make(chan error, 2)
	for i, auth := range []*Authority{a, b} {
		go func() {
			for j := 0; j < 10; j++ {
				iss, err := auth.Issue(issueReq(fmt.Sprintf("bot-%d-%d", i, j)))
				if err == nil && j%2 == 0 {
					err = auth.RevokeSerial(td, iss.Record.Serial, ReasonSuperseded, "x")
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	recs, _ := a.List(ListFilter{TrustDomain: td})
	if len(recs) != 20 {
		t.Fatalf("%d records, want 20", len(recs))
	}
	der, err := b.CRL(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if crl, err := a.ParseCRL(td, der); err != nil || len(crl.RevokedCertificateEntries) != 10 {
		t.Fatalf("CRL: %v (want 10 entries)", err)
	}
}

func TestSchemaVersion(t *testing.T) {
	a, _ := newTestAuthority(t)
	var v int
	if err := a.db.QueryRow("PRAGMA user_version").Scan(&v); err != nil || v != schemaVersion {
		t.Fatalf("user_version %d %v", v, err)
	}
	if _, err := a.db.Exec("PRAGMA user_version = 99"); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(a.DataDir()); err == nil || !strings.Contains(err.Error(), "newer than this binary") {
		t.Fatalf("newer schema: %v", err)
	}
}

func TestTenantsAreIsolated(t *testing.T) { eachBackend(t, testTenantsAreIsolated) }

func testTenantsAreIsolated(t *testing.T, be backend) {
	a, _ := newTestAuthorityOn(t, be)
	if _, err := a.Init(InitRequest{TrustDomain: "globex.example", Operator: "x"}); err != nil {
		t.Fatal(err)
	}
	req := issueReq("bot")
	req.TrustDomain = "globex.example"
	g, err := a.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Issue(issueReq("bot")); err != nil { // same id, other tenant
		t.Fatal(err)
	}
	if _, err := a.Revoke(td, "bot", ReasonKeyCompromise, "x"); err != nil {
		t.Fatal(err)
	}
	if r, _ := a.List(ListFilter{Serial: g.Record.Serial}); r[0].Status != "active" {
		t.Fatal("revoking acme's bot touched globex's bot")
	}
	if ra, _ := a.RevokedAgents("globex.example"); len(ra) != 0 {
		t.Fatalf("globex revoked agents %v", ra)
	}
	if err := a.RevokeSerial(td, g.Record.Serial, ReasonKeyCompromise, "x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("serial of another tenant: %v", err)
	}
}

// checkFleet fails unless Fleet is each agent's newest certificate as List
// has it.
func checkFleet(t *testing.T, a *Authority) {
	t.Helper()
	all, err := a.List(ListFilter{}) // oldest first
	if err != nil {
		t.Fatal(err)
	}
	newest := map[string]Certificate{}
	for _, c := range all {
		newest[c.TrustDomain+"/"+c.AgentID] = c
	}
	fleet, err := a.Fleet()
	if err != nil || len(fleet) != len(newest) || len(fleet) < 2 {
		t.Fatalf("fleet of %d agents, want %d (%v)", len(fleet), len(newest), err)
	}
	for i, f := range fleet {
		c := newest[f.TrustDomain+"/"+f.AgentID]
		want := AgentSummary{TrustDomain: c.TrustDomain, AgentID: c.AgentID, SPIFFEID: c.SPIFFEID, Trust: c.Trust, Owner: c.Owner, Status: c.Status, NotAfter: c.NotAfter}
		if f != want {
			t.Errorf("fleet %+v, want %+v", f, want)
		}
		if i > 0 && (fleet[i-1].TrustDomain > f.TrustDomain || fleet[i-1].TrustDomain == f.TrustDomain && fleet[i-1].AgentID >= f.AgentID) {
			t.Errorf("fleet out of order at %d", i)
		}
	}
}
