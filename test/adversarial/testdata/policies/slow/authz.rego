# A policy whose evaluation never finishes in time for one path: /slow
# iterates 10^10 times. Every other request is allowed, so the smoke
# evaluation at load passes. Used by the budget and deadline tests.
package agentauthz.authz

default decision := {"allowed": false, "reason": "policy_denied"}

decision := {"allowed": true, "reason": "allowed"} if {
	input.parsed_path[0] != "slow"
}

decision := {"allowed": true, "reason": "allowed"} if {
	input.parsed_path[0] == "slow"
	some i in numbers.range(1, 100000)
	some j in numbers.range(1, 100000)
	i * j == -1
}
