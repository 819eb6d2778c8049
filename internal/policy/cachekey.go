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

// keyBuf is the encoding that is hashed: every part is tagged and
// length-prefixed, so that two different inputs never encode alike.
type keyBuf struct {
	b       []byte
	scratch [512]byte
}

func (k *keyBuf) reset() { k.b = k.scratch[:0] }

func (k *keyBuf) str(s string) {
	k.b = binary.AppendUvarint(k.b, uint64(len(s)))
	k.b = append(k.b, s...)
}

func (k *keyBuf) int(v int64) { k.b = binary.AppendVarint(k.b, v) }

// time encodes what agentValue makes of t: nothing when t is zero, else
// its second in UTC (RFC 3339 has no fraction).
func (k *keyBuf) time(t time.Time) {
	if t.IsZero() {
		k.b = append(k.b, 0)
		return
	}
	k.b = append(k.b, 1)
	k.int(t.Unix())
}

// agent encodes the attributes in fields of a (nil: no input.agent).
func (k *keyBuf) agent(a *identity.Agent, fields agentField) {
	if a == nil {
		k.b = append(k.b, 0)
		return
	}
	k.b = append(k.b, 1)
	for f := agentField(1); f <= fieldSource; f <<= 1 {
		if fields&f == 0 {
			continue
		}
		switch f {
		case fieldID:
			k.str(a.ID)
		case fieldSPIFFEID:
			k.str(a.SPIFFEID)
		case fieldTenant:
			k.str(a.Tenant)
		case fieldTrust:
			k.int(int64(a.TrustLevel))
		case fieldScopes:
			k.int(int64(len(a.Scopes)))
			for _, s := range a.Scopes {
				k.str(s)
			}
		case fieldOwner:
			k.str(a.Owner)
		case fieldSerial:
			k.str(a.Serial)
		case fieldCertSHA256:
			k.str(a.CertSHA256)
		case fieldIssuer:
			k.str(a.Issuer)
		case fieldNotBefore:
			k.time(a.NotBefore)
		case fieldNotAfter:
			k.time(a.NotAfter)
		case fieldProfile:
			k.str(string(a.Profile))
		case fieldSource:
			k.str(string(a.Source))
		}
	}
}

func (k *keyBuf) sum() digest { return sha256.Sum256(k.b) }

// agentDigest identifies input.agent as agentValue builds it from a: the
// key of the agent term cache.
func agentDigest(a *identity.Agent) digest {
	var k keyBuf
	k.reset()
	k.agent(a, allAgentFields)
	return k.sum()
}
