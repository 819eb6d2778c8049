# A policy with faults that only some requests reach: an eval-time conflict
# on /conflict, an undefined decision on /undefined.
package agentauthz.authz

decision := {"allowed": true} if {
	input.parsed_path[0] == "conflict"
}

decision := {"allowed": false} if {
	input.parsed_path[0] == "conflict"
}

decision := {"allowed": true, "reason": "allowed"} if {
	not input.parsed_path[0] in {"conflict", "undefined"}
}
