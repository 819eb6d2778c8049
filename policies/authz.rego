# Least privilege for agents: an operation (from the route table) is allowed
# when the agent's trust level is high enough and it holds the operation's
# scope. Restrictions in data.agentauthz.restrictions can only take away.
#
# input.operation is set by agentauthz from data.agentauthz.routes; an
# unknown route has no operation and is denied. See docs/policies.md.
package agentauthz.authz

# The decision agentauthz queries (path agentauthz/authz/decision). The
# checks run in order; the first that fails gives the reason.
decision := {"allowed": false, "reason": "agent_quarantined"} if {
	quarantined
} else := {"allowed": false, "reason": "unknown_operation"} if {
	not operation_rule
} else := {"allowed": false, "reason": "insufficient_trust_level"} if {
	effective_trust < operation_rule.min_trust
} else := {"allowed": false, "reason": "scope_missing"} if {
	not operation_rule.scope in effective_scopes
} else := {
	"allowed": true,
	"reason": "allowed",
	"headers": {"x-agent-operation": input.operation},
}

operation_rule := data.agentauthz.operations[input.operation]

# restriction is the agent's entry in the overlay while it is in force. An
# "until" that does not parse keeps the restriction in force (fail closed).
restriction := r if {
	r := data.agentauthz.restrictions[input.agent.id]
	not expired(r)
}

expired(r) if time.now_ns() >= time.parse_rfc3339_ns(r.until)

quarantined if restriction.quarantined == true

# The certificate's trust level, lowered (never raised) by max_trust.
effective_trust := min({agent_trust, restriction.max_trust}) if {
	is_number(restriction.max_trust)
} else := agent_trust

agent_trust := object.get(input, ["agent", "trust"], 0)

# The certificate's scopes minus the removed ones.
effective_scopes contains s if {
	some s in object.get(input, ["agent", "scopes"], [])
	not s in removed_scopes
}

removed_scopes := restriction.removed_scopes if {
	is_array(restriction.removed_scopes)
} else := []
