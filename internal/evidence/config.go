package evidence

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"strings"

	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/durable"
)

// ConfigFile is one replica's serve configuration as evidence: the file's
// hash and the settings the controls depend on, each under its control.
type ConfigFile struct {
	File   string `json:"file"`
	SHA256 string `json:"sha256"`
	// Log is the decision log this configuration writes (decision_log.name).
	Log      string    `json:"log"`
	Settings []Setting `json:"settings"`
	// RevocationOff lists the tenants whose revocation checking is
	// disabled: their revoked certificates are accepted (a CC6.8 gap).
	RevocationOff []string `json:"revocation_disabled,omitempty"`
	// OpenAssertion lists the identity sources (xfcc, spiffe_id) taken
	// from any caller of a non-loopback gRPC address without mutual TLS:
	// a forged XFCC header is then a CC6.6 gap.
	OpenAssertion []string `json:"open_identity_assertion,omitempty"`
}

// loopback reports whether a listen address accepts connections from this
// host only.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Setting is one setting that matters to a control.
type Setting struct {
	Control string `json:"control"`
	Key     string `json:"key"`
	Value   string `json:"value"`
}

// ReadConfig reads a serve configuration file (strictly, as serve does) and
// states what it sets for the controls, defaults included.
func ReadConfig(path string) (*ConfigFile, error) {
	data, err := durable.ReadFile(path, 1<<20)
	if err != nil {
		return nil, err
	}
	c, err := config.Decode(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	sum := sha256.Sum256(data)
	cf := &ConfigFile{File: path, SHA256: hex.EncodeToString(sum[:]), Log: c.DecisionLog.Name}
	if cf.Log == "" {
		cf.Log = "(the replica's host name)"
	}
	c.ApplyDefaults()
	add := func(control, key, value string) {
		cf.Settings = append(cf.Settings, Setting{control, key, value})
	}
	if c.Dev {
		add("CC6.2", "dev", "true: a development CA and defaults (not for production)")
	}
	// Where identity comes from, and who may assert it.
	add("CC6.6", "identity.sources", strings.Join(c.Identity.Sources, ", ")+" (in order; a present but bad source is a denial, never a fall-through)")
	grpcTLS := "plaintext: any caller that reaches the gRPC port may call Check"
	switch {
	case c.GRPC.TLS.ClientCAFile != "":
		grpcTLS = "mutual TLS: only callers with a certificate from " + c.GRPC.TLS.ClientCAFile + " (the proxies)"
	case c.GRPC.TLS.Enabled():
		grpcTLS = "TLS without client certificates: any caller that reaches the gRPC port may call Check"
	}
	add("CC6.6", "grpc.tls", grpcTLS)
	for _, s := range c.Identity.Sources {
		if s == "xfcc" || s == "spiffe_id" {
			trust := "trusted as sent by the caller of Check"
			switch {
			case c.GRPC.TLS.ClientCAFile != "":
			case loopback(c.GRPC.Addr):
				trust += ": gRPC listens on " + c.GRPC.Addr + ", reachable from this host only"
			default:
				trust += ": without gRPC mutual TLS, anyone who reaches " + c.GRPC.Addr + " can assert another agent's certificate"
				cf.OpenAssertion = append(cf.OpenAssertion, s)
			}
			add("CC6.6", "trust in "+s, trust)
		}
	}
	// Revocation, per tenant.
	for _, tb := range c.TrustBundles {
		r := tb.Revocation
		var src []string
		if r.WatchURL != "" {
			src = append(src, "push "+r.WatchURL)
		}
		if len(r.CRLURLs) > 0 {
			src = append(src, fmt.Sprintf("CRL URLs %s every %v", strings.Join(r.CRLURLs, " "), r.PollInterval.D()))
		}
		if len(r.CRLFiles) > 0 {
			src = append(src, "CRL files "+strings.Join(r.CRLFiles, " "))
		}
		v := strings.Join(src, "; ")
		if len(r.CRLURLs)+len(r.CRLFiles) > 0 {
			v += fmt.Sprintf("; a CRL is used up to %v past its nextUpdate, then the tenant is refused", r.Grace.D())
		}
		if r.Disabled {
			v = "DISABLED: revoked certificates of this tenant are accepted"
			cf.RevocationOff = append(cf.RevocationOff, tb.TrustDomain)
		}
		add("CC6.8", "revocation of "+tb.TrustDomain, v)
	}
	// The decision log.
	mode := "sync: a decision is answered only once its record is on disk (unlogged means denied)"
	if c.DecisionLog.Mode == "async" {
		mode = fmt.Sprintf("async: answered before the record is on disk; a crash can lose up to %d records (denied when the buffer is full)", c.DecisionLog.AsyncBuffer)
	}
	add("CC7.2", "decision_log.mode", mode)
	ship := "not shipped to a control plane"
	if c.ControlPlane.URL != "" {
		ship = "shipped to " + c.ControlPlane.URL
	}
	add("CC7.2", "decision_log shipping", ship)
	// The policy and how it changes.
	src := "directory " + c.Policy.Dir
	switch {
	case c.Policy.Builtin:
		src = "the policy built into the binary"
	case c.Policy.Bundle != "":
		src = "bundle " + c.Policy.Bundle
	}
	add("CC8.1", "policy source", src+", rule "+c.Policy.Path)
	if c.Policy.Bundle != "" {
		sig := "NOT verified: bundles are loaded unsigned"
		if c.Policy.BundleVerificationKey != "" {
			sig = "bundles must be signed by " + c.Policy.BundleVerificationKey
		}
		add("CC8.1", "policy bundle signature", sig)
	}
	add("CC7.2", "policy.eval_timeout", fmt.Sprintf("%v (a slower evaluation is a denial)", c.Policy.EvalTimeout.D()))
	rs := "on: each allowed response is signed and logged"
	if c.ResponseSigning.Disabled {
		rs = "off (Envoy's ext_proc filter then fails closed)"
	}
	add("PI1.3", "response_signing", rs)
	return cf, nil
}
