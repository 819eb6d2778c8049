// Package reason owns the stable reason codes that explain every decision.
//
// A code is part of the public contract: it appears in the denial body, as a
// Prometheus label and in the decision record. Codes are added, never renamed.
package reason

// Code is a stable, machine-readable reason for a decision.
type Code string

// Identity failures (HTTP 401).
const (
	NoClientCertificate        Code = "no_client_certificate"
	MalformedClientCertificate Code = "malformed_client_certificate"
	MalformedXFCC              Code = "malformed_xfcc"
	UntrustedIssuer            Code = "untrusted_issuer"
	CertificateExpired         Code = "certificate_expired"
	CertificateNotYetValid     Code = "certificate_not_yet_valid"
	InvalidAgentProfile        Code = "invalid_agent_profile"
	CertificateRevoked         Code = "certificate_revoked"
	AgentRevoked               Code = "agent_revoked"
	RevocationStatusUnknown    Code = "revocation_status_unknown"
)

// Policy outcomes (HTTP 403).
const (
	Allowed                Code = "allowed"
	InsufficientTrustLevel Code = "insufficient_trust_level"
	ScopeMissing           Code = "scope_missing"
	UnknownOperation       Code = "unknown_operation"
	AgentQuarantined       Code = "agent_quarantined"
	PolicyDenied           Code = "policy_denied"
	PolicyError            Code = "policy_error"
)

// RequestParseError means the request could not be turned into policy input (HTTP 400): a path or
// query that does not decode, a malformed body, header values that are not
// UTF-8. opa-envoy-plugin answers the same requests with 400 and this code.
const RequestParseError Code = "request_parse_error"

// InvalidJSONRPC is for a POST to a declared MCP endpoint whose body is not a
// JSON-RPC 2.0 message or batch the service can read exactly as an MCP
// server would (HTTP 400, with a JSON-RPC error body).
const InvalidJSONRPC Code = "invalid_jsonrpc"

// Service failures.
const (
	DecisionLogUnavailable Code = "decision_log_unavailable"
	InternalError          Code = "internal_error"
)

// IsIdentity reports whether c means the caller is not authenticated: no
// identity, an invalid one, or one that may no longer be used.
func (c Code) IsIdentity() bool {
	switch c {
	case NoClientCertificate, MalformedClientCertificate, MalformedXFCC, UntrustedIssuer,
		CertificateExpired, CertificateNotYetValid, InvalidAgentProfile,
		CertificateRevoked, AgentRevoked, RevocationStatusUnknown:
		return true
	}
	return false
}

// HTTPStatus is the status a denial with this code carries by default:
// 401 for identity failures, 400 for a request that cannot be parsed, 503
// when the service cannot record or decide, 403 for everything the policy
// refused.
func (c Code) HTTPStatus() int {
	switch {
	case c == Allowed:
		return 200
	case c == RequestParseError || c == InvalidJSONRPC:
		return 400
	case c.IsIdentity():
		return 401
	case c == DecisionLogUnavailable || c == InternalError:
		return 503
	default:
		return 403
	}
}

// ErrorName is the one-word description used in denial bodies (the "error"
// field). Not Error(): a Code is not an error value.
func (c Code) ErrorName() string {
	switch c.HTTPStatus() {
	case 400:
		return "bad_request"
	case 401:
		return "unauthenticated"
	case 503:
		return "unavailable"
	default:
		return "forbidden"
	}
}

// Known lists every code the service itself emits, for metric pre-registration
// and documentation. Policies may return further codes of their own.
func Known() []Code {
	return []Code{
		NoClientCertificate, MalformedClientCertificate, MalformedXFCC, UntrustedIssuer,
		CertificateExpired, CertificateNotYetValid, InvalidAgentProfile, CertificateRevoked,
		AgentRevoked, RevocationStatusUnknown, Allowed, InsufficientTrustLevel, ScopeMissing,
		UnknownOperation, AgentQuarantined, PolicyDenied, PolicyError, RequestParseError,
		InvalidJSONRPC, DecisionLogUnavailable, InternalError,
	}
}
