package ca

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/agentauthz/agentauthz/internal/durable"
)

// DevTrustDomain is the trust domain of the development CA.
const DevTrustDomain = "dev.agentauthz.local"

// DevAgent is one sample agent of the development environment.
type DevAgent struct {
	ID       string
	SPIFFEID string
	Trust    int
	Scopes   []string
	Owner    string
	CertPath string // PEM certificate
	KeyPath  string // PEM PKCS#8 key, 0600
	Serial   string // of the certificate in CertPath, lowercase hex
}

// DevEnv is what EnsureDev prepared.
type DevEnv struct {
	TrustDomain string
	BundlePath  string // the CA certificate: the trust bundle of DevTrustDomain
	Agents      []DevAgent
}

// devAgents are the samples; their scopes match the example policy.
func devAgents() []DevAgent {
	return []DevAgent{
		{ID: "sanctions-screener", Trust: 1, Scopes: []string{"sanctions:screen"}, Owner: "compliance-team"},
		{ID: "payments-agent", Trust: 3, Scopes: []string{"payments:initiate", "payments:read"}, Owner: "payments-team"},
		{ID: "merchant-onboarder", Trust: 2, Scopes: []string{"merchants:onboard"}, Owner: "merchant-ops"},
		{ID: "loan-servicer", Trust: 3, Scopes: []string{"loans:repay"}, Owner: "lending-team"},
		{ID: "reader", Trust: 1, Scopes: []string{"payments:read"}, Owner: "payments-team"},
	}
}

const (
	devOperator = "dev-bootstrap"
	devTTL      = 720 * time.Hour
	devMargin   = 24 * time.Hour // renew a sample this close to expiry
)

// EnsureDev prepares the development environment in dataDir, idempotently: a
// CA for DevTrustDomain (org "Dev Org") and the sample agents with keys in
// <data>/dev/agents/<id>.pem and .key. A sample whose files are missing,
// unreadable, not from the current CA, revoked or within a day of expiry is
// issued again; everything else is left alone.
//
// Concurrent callers on one data directory, in this process or others (two
// `serve --dev` started together), are serialised by an exclusive lock on
// <data>/dev.lock held for the whole check-and-create: the first creates, the
// others find its result valid and return it unchanged. A caller that cannot
// take the lock within 30 s fails with an error naming the lock file.
//
// opts go to Open (WithStore: the inventory on PostgreSQL).
func EnsureDev(dataDir string, now time.Time, opts ...Option) (*DevEnv, error) {
	return ensureDev(dataDir, now, devLockTimeout, opts...)
}

// ensureDev is EnsureDev waiting at most lockTimeout for the lock.
func ensureDev(dataDir string, now time.Time, lockTimeout time.Duration, opts ...Option) (*DevEnv, error) {
	unlock, err := lockDev(dataDir, lockTimeout)
	if err != nil {
		return nil, err
	}
	defer unlock()
	a, err := Open(dataDir, append(opts, WithClock(func() time.Time { return now }))...)
	if err != nil {
		return nil, err
	}
	defer a.Close()
	if _, err := a.CAInfo(DevTrustDomain); errors.Is(err, ErrNotFound) {
		if _, err := a.Init(InitRequest{TrustDomain: DevTrustDomain, Org: "Dev Org", Operator: devOperator}); err != nil && !errors.Is(err, ErrExists) {
			return nil, fmt.Errorf("dev CA: %w", err)
		}
	} else if err != nil {
		return nil, err
	}
	s, err := a.loadCA(DevTrustDomain)
	if err != nil {
		return nil, fmt.Errorf("dev CA: %w", err)
	}
	dir := filepath.Join(dataDir, "dev", "agents")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("dev agents: %w", err)
	}
	env := &DevEnv{TrustDomain: DevTrustDomain, BundlePath: a.CertPath(DevTrustDomain)}
	for _, ag := range devAgents() {
		ag.SPIFFEID = SPIFFEID(DevTrustDomain, ag.ID)
		ag.CertPath = filepath.Join(dir, ag.ID+".pem")
		ag.KeyPath = filepath.Join(dir, ag.ID+".key")
		if ag.Serial = a.devAgentOK(s, ag, now); ag.Serial == "" {
			if ag.Serial, err = a.issueDev(ag); err != nil {
				return nil, fmt.Errorf("dev agent %s: %w", ag.ID, err)
			}
		}
		env.Agents = append(env.Agents, ag)
	}
	return env, nil
}

// devAgentOK returns the serial of a sample agent's certificate if its files
// can be used as they are, else "".
func (a *Authority) devAgentOK(s *signer, ag DevAgent, now time.Time) string {
	b, err := readBounded(ag.CertPath, maxInputFileSize)
	if err != nil {
		return ""
	}
	certs, err := parseCertsPEM(b)
	if err != nil {
		return ""
	}
	c := certs[0]
	if c.CheckSignatureFrom(s.cert) != nil || now.Add(devMargin).After(c.NotAfter) || now.Before(c.NotBefore) {
		return ""
	}
	kb, err := readBounded(ag.KeyPath, maxInputFileSize)
	if err != nil {
		return ""
	}
	k, err := parseKeyPEM(kb)
	if err != nil || !publicKeysEqual(k.Public(), c.PublicKey) {
		return ""
	}
	serial := serialString(c.SerialNumber)
	recs, err := a.List(ListFilter{TrustDomain: DevTrustDomain, AgentID: ag.ID, Serial: serial})
	if err != nil || len(recs) != 1 || recs[0].Status != "active" {
		return ""
	}
	return serial
}

// issueDev issues a sample agent's certificate and key again and returns the
// new serial.
func (a *Authority) issueDev(ag DevAgent) (string, error) {
	req := IssueRequest{TrustDomain: DevTrustDomain, AgentID: ag.ID, Trust: ag.Trust, Scopes: ag.Scopes, Owner: ag.Owner,
		TTL: devTTL, KeyType: KeyECDSAP256, Operator: devOperator}
	var iss *Issued
	_, err := a.agent(a.db, DevTrustDomain, ag.ID)
	switch {
	case errors.Is(err, ErrNotFound):
		iss, err = a.Issue(req)
		if errors.Is(err, ErrExists) { // issued meanwhile outside the dev lock (agent issue, an older binary)
			iss, err = a.Reissue(req)
		}
	case err == nil:
		iss, err = a.Reissue(req) // also resets attributes someone changed by hand
	}
	if err != nil {
		return "", err
	}
	if err := durable.WriteFile(ag.KeyPath, iss.KeyPEM, 0o600); err != nil {
		return "", err
	}
	if err := durable.WriteFile(ag.CertPath, iss.CertPEM, 0o644); err != nil {
		return "", err
	}
	return iss.Record.Serial, nil
}
