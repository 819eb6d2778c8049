package policy

import (
	"crypto/sha256"
	"encoding/binary"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/agentauthz/agentauthz/internal/identity"
)

// Cache keys are SHA-256 digests of what a decision depends on, never
// pointers: the identity verifier hands out a fresh *identity.Agent for
// every SPIFFE-profile request, and an address says nothing about the
// agent behind it once that agent is gone. Equal keys mean equal inputs at
// every path the policy reads (SHA-256 is collision resistant), so a hit
// answers exactly what evaluating would; two agents that differ in any
// attribute the policy reads never share an entry.

// digest is a cache key.
type digest [sha256.Size]byte

// agentField is one attribute of input.agent (see agentValue); a set of
// them is what a policy reads of the agent.
type agentField uint16

const (
	fieldID agentField = 1 << iota
	fieldSPIFFEID
	fieldTenant
	fieldTrust // trust and trust_level
	fieldScopes
	fieldOwner
	fieldSerial
	fieldCertSHA256
	fieldIssuer
	fieldNotBefore
	fieldNotAfter
	fieldProfile
	fieldSource

	allAgentFields agentField = 1<<iota - 1
)

// agentFields maps each key of input.agent to the attribute it is built
// from; TestAgentFieldsCoverAgentValue pins it to agentValue.
var agentFields = map[string]agentField{
	"id": fieldID, "spiffe_id": fieldSPIFFEID, "tenant": fieldTenant,
	"trust": fieldTrust, "trust_level": fieldTrust, "scopes": fieldScopes,
	"owner": fieldOwner, "serial": fieldSerial, "cert_sha256": fieldCertSHA256,
	"issuer": fieldIssuer, "not_before": fieldNotBefore, "not_after": fieldNotAfter,
	"profile": fieldProfile, "source": fieldSource,
}

// agentFieldsRead is the set of attributes read through path (a path
// under input.agent, without the leading input.agent). The whole agent, or
// a key the builder does not know, counts as every attribute: wider keys
// only cost hits.
func agentFieldsRead(path ast.Ref) agentField {
	if len(path) == 0 {
		return allAgentFields
	}
	if s, ok := path[0].Value.(ast.String); ok {
		if f, ok := agentFields[string(s)]; ok {
			return f
		}
	}
	return allAgentFields
}

// The encoding that is hashed: every part is tagged and length-prefixed,
// so that two different inputs never encode alike. The appends work on a
// caller's stack buffer (a struct holding both would escape to the heap).

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// appendTime encodes what agentValue makes of t: nothing when t is zero,
// else its second in UTC (RFC 3339 has no fraction).
func appendTime(b []byte, t time.Time) []byte {
	if t.IsZero() {
		return append(b, 0)
	}
	return binary.AppendVarint(append(b, 1), t.Unix())
}

// appendAgent encodes the attributes in fields of a (nil: no input.agent).
func appendAgent(b []byte, a *identity.Agent, fields agentField) []byte {
	if a == nil {
		return append(b, 0)
	}
	b = append(b, 1)
	for f := agentField(1); f <= fieldSource; f <<= 1 {
		if fields&f == 0 {
			continue
		}
		switch f {
		case fieldID:
			b = appendStr(b, a.ID)
		case fieldSPIFFEID:
			b = appendStr(b, a.SPIFFEID)
		case fieldTenant:
			b = appendStr(b, a.Tenant)
		case fieldTrust:
			b = binary.AppendVarint(b, int64(a.TrustLevel))
		case fieldScopes:
			b = binary.AppendUvarint(b, uint64(len(a.Scopes)))
			for _, s := range a.Scopes {
				b = appendStr(b, s)
			}
		case fieldOwner:
			b = appendStr(b, a.Owner)
		case fieldSerial:
			b = appendStr(b, a.Serial)
		case fieldCertSHA256:
			b = appendStr(b, a.CertSHA256)
		case fieldIssuer:
			b = appendStr(b, a.Issuer)
		case fieldNotBefore:
			b = appendTime(b, a.NotBefore)
		case fieldNotAfter:
			b = appendTime(b, a.NotAfter)
		case fieldProfile:
			b = appendStr(b, string(a.Profile))
		case fieldSource:
			b = appendStr(b, string(a.Source))
		}
	}
	return b
}

// agentDigest identifies input.agent as agentValue builds it from a: the
// key of the agent term cache.
func agentDigest(a *identity.Agent) digest {
	var scratch [512]byte
	return sha256.Sum256(appendAgent(scratch[:0], a, allAgentFields))
}
