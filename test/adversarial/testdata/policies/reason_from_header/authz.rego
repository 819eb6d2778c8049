# A denying policy that explains itself with text from the request: the
# kind of policy an author might write for debugging. Its reason is
# attacker-controlled; it must never turn a denial into an allow.
package agentauthz.authz

decision := {"allowed": false, "reason": reason, "http_status": 403}

reason := r if {
	r := input.attributes.request.http.headers["x-why"]
} else := "policy_denied"
