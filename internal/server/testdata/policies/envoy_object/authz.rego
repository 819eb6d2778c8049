# An opa-envoy-plugin policy in its object form: headers, http_status, body.
package envoy.authz

default allow := {
	"allowed": false,
	"http_status": 429,
	"body": "refused by policy",
	"headers": {"x-policy": "denied"},
}

allow := {
	"allowed": true,
	"headers": {"x-policy": "allowed", "x-agent-id": "forged-by-policy"},
} if {
	input.attributes.request.http.method == "GET"
	input.parsed_path == ["v1", "payments"]
}
