package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/asn1"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"time"
)

// KeyType is the agent key algorithm.
type KeyType string

// Key types of agent keys the CA generates.
const (
	KeyECDSAP256 KeyType = "ecdsa-p256"
	KeyEd25519   KeyType = "ed25519"
	keyFromCSR   KeyType = "csr" // inventory marker: the agent kept its key
)

// ParseKeyType parses "ecdsa-p256" (default when empty) or "ed25519".
func ParseKeyType(s string) (KeyType, error) {
	switch KeyType(s) {
	case "", KeyECDSAP256:
		return KeyECDSAP256, nil
	case KeyEd25519:
		return KeyEd25519, nil
	}
	return "", fieldf("key_type", "key type %.40q must be ecdsa-p256 or ed25519", s)
}

// IssueRequest asks for a native-profile agent certificate.
type IssueRequest struct {
	TrustDomain string
	AgentID     string
	Trust       int      // 0..4
	Scopes      []string // "<resource>:<action>", at least one
	Owner       string   // optional
	TTL         time.Duration
	KeyType     KeyType // used when CSR is nil; empty means ecdsa-p256
	CSR         []byte  // PEM or DER PKCS#10; its signature is verified and only its public key is used
	Operator    string  // who asked, for the inventory
}

// RenewRequest asks for a new certificate with the agent's recorded
// attributes. Zero fields take the recorded values.
type RenewRequest struct {
	TrustDomain string
	AgentID     string
	TTL         time.Duration
	KeyType     KeyType
	CSR         []byte
	Operator    string
}

// Issued is a certificate whose inventory record is committed.
type Issued struct {
	Record  Certificate
	Cert    *x509.Certificate
	CertPEM []byte // the leaf, then the CA chain when the CA is an intermediate
	KeyPEM  []byte // PKCS#8; nil when a CSR was signed
}

// Certificate is one inventory row.
type Certificate struct {
	TrustDomain      string     `json:"trust_domain"`
	AgentID          string     `json:"agent_id"`
	SPIFFEID         string     `json:"spiffe_id"`
	Serial           string     `json:"serial"`
	Trust            string     `json:"trust"`
	Scopes           []string   `json:"scopes"`
	Owner            string     `json:"owner,omitempty"`
	KeyType          string     `json:"key_type"`
	NotBefore        time.Time  `json:"not_before"`
	NotAfter         time.Time  `json:"not_after"`
	Status           string     `json:"status"` // active, revoked or expired
	RevokedAt        *time.Time `json:"revoked_at,omitempty"`
	RevocationReason string     `json:"revocation_reason,omitempty"`
	Operator         string     `json:"operator"`
	IssuedAt         time.Time  `json:"issued_at"`
	PEM              string     `json:"-"`
}

// Issue issues the first certificate of a new agent. An agent that is
// already in the inventory gets an ErrExists error: use Renew or Reissue.
func (a *Authority) Issue(req IssueRequest) (*Issued, error) {
	return a.issue(req, modeNew)
}

// Reissue issues a certificate with new attributes to an existing agent and,
// in the same transaction, revokes its active certificates with reason
// superseded. It also lifts an agent-level revocation.
func (a *Authority) Reissue(req IssueRequest) (*Issued, error) {
	return a.issue(req, modeReissue)
}

// Renew issues a new certificate with the agent's recorded attributes. It
// lifts an agent-level revocation; active certificates stay valid until they
// expire (rotation overlap).
func (a *Authority) Renew(req RenewRequest) (*Issued, error) {
	if err := ValidateAgentID(req.AgentID); err != nil {
		return nil, err
	}
	ag, err := a.agent(a.db, req.TrustDomain, req.AgentID)
	if err != nil {
		return nil, err
	}
	ir := IssueRequest{
		TrustDomain: req.TrustDomain, AgentID: req.AgentID, Trust: ag.Trust, Scopes: ag.Scopes, Owner: ag.Owner,
		TTL: req.TTL, KeyType: req.KeyType, CSR: req.CSR, Operator: req.Operator,
	}
	if ir.TTL == 0 {
		ir.TTL = ag.TTL
	}
	if ir.KeyType == "" && ag.KeyType != string(keyFromCSR) {
		ir.KeyType = KeyType(ag.KeyType)
	}
	return a.issue(ir, modeRenew)
}

type issueMode int

const (
	modeNew issueMode = iota
	modeRenew
	modeReissue
)

func (a *Authority) issue(req IssueRequest, mode issueMode) (*Issued, error) {
	if err := ValidateTrustDomain(req.TrustDomain); err != nil {
		return nil, err
	}
	if err := ValidateAgentID(req.AgentID); err != nil {
		return nil, err
	}
	if req.Trust < 0 || req.Trust > 4 {
		return nil, fieldf("trust", "trust level L%d must be one of L0, L1, L2, L3, L4", req.Trust)
	}
	scopes, err := NormalizeScopes(req.Scopes)
	if err != nil {
		return nil, err
	}
	if err := ValidateOwner(req.Owner); err != nil {
		return nil, err
	}
	if err := validateOperator(req.Operator); err != nil {
		return nil, err
	}
	cfg, err := a.tdConfig(a.db, req.TrustDomain)
	if err != nil {
		return nil, err
	}
	if req.TTL <= 0 {
		return nil, fieldf("ttl", "ttl must be positive")
	}
	if req.TTL > cfg.maxTTL {
		return nil, fieldf("ttl", "ttl %s exceeds the maximum %s of trust domain %q", req.TTL, cfg.maxTTL, req.TrustDomain)
	}
	s, err := a.loadCA(req.TrustDomain)
	if err != nil {
		return nil, err
	}
	now := a.now()
	notAfter := now.Add(req.TTL)
	if notAfter.After(s.cert.NotAfter) {
		return nil, fieldf("ttl", "ttl %s would outlive the CA certificate (valid until %s)", req.TTL, fmtTime(s.cert.NotAfter))
	}

	// The key: from the CSR (the agent keeps its private key) or generated here.
	var pub crypto.PublicKey
	var keyPEM []byte
	keyType := req.KeyType
	if req.CSR != nil {
		csr, err := ParseCSR(req.CSR)
		if err != nil {
			return nil, err
		}
		pub, keyType = csr.PublicKey, keyFromCSR
	} else {
		if keyType, err = ParseKeyType(string(keyType)); err != nil {
			return nil, err
		}
		var priv crypto.Signer
		if keyType == KeyEd25519 {
			_, priv, err = ed25519.GenerateKey(a.rand)
		} else {
			priv, err = ecdsa.GenerateKey(elliptic.P256(), a.rand)
		}
		if err != nil {
			return nil, fmt.Errorf("generate agent key: %w", err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(priv)
		if err != nil {
			return nil, fmt.Errorf("marshal agent key: %w", err)
		}
		pub, keyPEM = priv.Public(), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}

	serial, err := a.newSerial()
	if err != nil {
		return nil, err
	}
	rawSubject, err := nativeSubject(req.AgentID, cfg.org, req.Trust, scopes, req.Owner)
	if err != nil {
		return nil, err
	}
	spiffeID := SPIFFEID(req.TrustDomain, req.AgentID)
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		RawSubject:            rawSubject,
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: req.TrustDomain, Path: "/agent/" + req.AgentID}},
	}
	if cfg.crlURL != "" {
		tmpl.CRLDistributionPoints = []string{cfg.crlURL}
	}
	der, err := x509.CreateCertificate(a.rand, tmpl, s.cert, pub, s.key)
	if err != nil {
		return nil, fmt.Errorf("sign agent certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse issued certificate: %w", err)
	}
	var certPEM bytes.Buffer
	_ = pem.Encode(&certPEM, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	if !isSelfSigned(s.cert) {
		for _, c := range s.chain {
			_ = pem.Encode(&certPEM, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		}
	}

	rec := Certificate{
		TrustDomain: req.TrustDomain, AgentID: req.AgentID, SPIFFEID: spiffeID, Serial: serialString(serial),
		Trust: TrustLabel(req.Trust), Scopes: scopes, Owner: req.Owner, KeyType: string(keyType),
		NotBefore: cert.NotBefore, NotAfter: cert.NotAfter, Status: "active", Operator: req.Operator,
		IssuedAt: now.UTC(), PEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
	}
	scopesJSON, _ := json.Marshal(scopes)
	recKeyType := string(keyType)
	if req.CSR != nil && mode != modeNew {
		// Keep the recorded key type of the agent: a renewal by CSR says nothing about the next one.
		recKeyType = ""
	}

	// Commit the record before anything is handed out.
	err = a.tx(context.Background(), func(tx *sql.Tx) error {
		ag, err := a.agent(tx, req.TrustDomain, req.AgentID)
		switch {
		case mode == modeNew && err == nil:
			return fmt.Errorf("%w: agent %q is already in trust domain %q", ErrExists, req.AgentID, req.TrustDomain)
		case mode == modeNew && errors.Is(err, ErrNotFound):
			if _, err := tx.Exec(`INSERT INTO agents (tenant, agent_id, trust, scopes, owner, ttl_seconds, key_type, status, created_at, updated_at)
				VALUES (?, ?, ?, ?, ?, ?, ?, 'active', ?, ?)`,
				req.TrustDomain, req.AgentID, req.Trust, string(scopesJSON), req.Owner, int64(req.TTL/time.Second),
				string(keyType), fmtTime(now), fmtTime(now)); err != nil {
				return fmt.Errorf("record agent: %w", err)
			}
		case err != nil:
			return err
		default:
			if recKeyType == "" {
				recKeyType = ag.KeyType
			}
			if _, err := tx.Exec(`UPDATE agents SET trust = ?, scopes = ?, owner = ?, ttl_seconds = ?, key_type = ?,
				status = 'active', revoked_at = NULL, revocation_reason = NULL, updated_at = ? WHERE tenant = ? AND agent_id = ?`,
				req.Trust, string(scopesJSON), req.Owner, int64(req.TTL/time.Second), recKeyType, fmtTime(now),
				req.TrustDomain, req.AgentID); err != nil {
				return fmt.Errorf("update agent: %w", err)
			}
			changed := false
			if ag.Status == "revoked" {
				changed = true
				if err := a.addEvent(tx, now, req.TrustDomain, req.AgentID, "", "agent_revocation_lifted", req.Operator,
					"was revoked: "+ag.RevocationReason); err != nil {
					return err
				}
			}
			if mode == modeReissue {
				n, err := a.revokeActive(tx, now, req.TrustDomain, req.AgentID, ReasonSuperseded, req.Operator)
				if err != nil {
					return err
				}
				changed = changed || n > 0
			}
			if changed {
				if err := bumpRevocation(tx, req.TrustDomain); err != nil {
					return err
				}
			}
		}
		if _, err := tx.Exec(`INSERT INTO certificates (tenant, serial, agent_id, trust, scopes, owner, key_type, not_before, not_after,
			status, operator, issued_at, pem) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'active', ?, ?, ?)`,
			rec.TrustDomain, rec.Serial, rec.AgentID, req.Trust, string(scopesJSON), rec.Owner, rec.KeyType,
			fmtTime(rec.NotBefore), fmtTime(rec.NotAfter), rec.Operator, fmtEvent(now), rec.PEM); err != nil {
			return fmt.Errorf("record certificate: %w", err)
		}
		event := map[issueMode]string{modeNew: "issue", modeRenew: "renew", modeReissue: "reissue"}[mode]
		detail := fmt.Sprintf("trust=%s scopes=%s owner=%s not_after=%s key=%s", rec.Trust, string(scopesJSON), rec.Owner,
			fmtTime(rec.NotAfter), rec.KeyType)
		return a.addEvent(tx, now, rec.TrustDomain, rec.AgentID, rec.Serial, event, rec.Operator, detail)
	})
	if err != nil {
		return nil, err
	}
	return &Issued{Record: rec, Cert: cert, CertPEM: certPEM.Bytes(), KeyPEM: keyPEM}, nil
}

// SPIFFEID is the canonical identity of an agent.
func SPIFFEID(td, agentID string) string { return "spiffe://" + td + "/agent/" + agentID }

var (
	oidCN = asn1.ObjectIdentifier{2, 5, 4, 3}
	oidO  = asn1.ObjectIdentifier{2, 5, 4, 10}
	oidOU = asn1.ObjectIdentifier{2, 5, 4, 11}
)

// nativeSubject builds the native-profile subject with one RDN per attribute,
// so openssl prints "O = …, OU = trust:L3, OU = scope:…, CN = …" rather than
// one multi-valued RDN.
func nativeSubject(agentID, org string, trust int, scopes []string, owner string) ([]byte, error) {
	var seq pkix.RDNSequence
	add := func(oid asn1.ObjectIdentifier, v string) {
		seq = append(seq, pkix.RelativeDistinguishedNameSET{{Type: oid, Value: v}})
	}
	if org != "" {
		add(oidO, org)
	}
	add(oidOU, "trust:"+TrustLabel(trust))
	for _, s := range scopes {
		add(oidOU, "scope:"+s)
	}
	if owner != "" {
		add(oidOU, "owner:"+owner)
	}
	add(oidCN, agentID)
	b, err := asn1.Marshal(seq)
	if err != nil {
		return nil, fmt.Errorf("encode subject: %w", err)
	}
	return b, nil
}

func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

// ParseCSR parses a PKCS#10 request (PEM or DER, at most 64 KiB), verifies its
// signature and checks that its key is ECDSA P-256 or Ed25519.
func ParseCSR(b []byte) (*x509.CertificateRequest, error) {
	if len(b) > maxInputFileSize {
		return nil, fieldf("csr", "csr is larger than %d bytes", maxInputFileSize)
	}
	der := b
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != "CERTIFICATE REQUEST" && blk.Type != "NEW CERTIFICATE REQUEST" {
			return nil, fieldf("csr", "csr: PEM block is %q, want CERTIFICATE REQUEST", blk.Type)
		}
		der = blk.Bytes
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fieldf("csr", "csr: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fieldf("csr", "csr signature does not verify: %v", err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, fieldf("csr", "csr key must be ECDSA P-256 or Ed25519, got ECDSA %s", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	default:
		return nil, fieldf("csr", "csr key must be ECDSA P-256 or Ed25519, got %T", k)
	}
	return csr, nil
}
