# An opa-envoy-plugin policy, unchanged: boolean allow on method and path.
package envoy.authz

default allow := false

allow if {
	input.attributes.request.http.method == "GET"
	input.parsed_path[0] == "v1"
	input.parsed_path[1] == "payments"
}
