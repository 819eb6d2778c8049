# Least privilege for agents: an operation (from the route table) is allowed
# when the agent's trust level is high enough and it holds the operation's
# scope. Restrictions in data.agentauthz.restrictions can only take away.
#
# input.operation is set by agentauthz from data.agentauthz.routes, or for a
# call to an MCP endpoint from data.agentauthz.mcp (by method, tool name or
# resource URI; input.mcp describes the message); an unknown route or tool
# has no operation and is denied. One route table serves every
# tenant (trust domain); an operation with a "tenants" list exists only for
# agents of those tenants. See docs/policies.md.
#
# agentauthz refuses data.agentauthz that does not follow its schema before
# this policy sees it. The rules below still deny on malformed data (under
# `opa test`, another runtime, or a schema gap): a missing or malformed
# min_trust denies, and a restriction that cannot be read quarantines.
package agentauthz.authz

# The decision agentauthz queries (path agentauthz/authz/decision). The
# checks run in order; the first that fails gives the reason.
decision := {"allowed": false, "reason": "agent_quarantined"} if {
	quarantined
} else := {"allowed": false, "reason": "unknown_operation"} if {
	not operation_rule
} else := {"allowed": false, "reason": "insufficient_trust_level"} if {
	not trust_sufficient
} else := {"allowed": false, "reason": "scope_missing"} if {
	not scope_held
} else := {
	"allowed": true,
	"reason": "allowed",
	"headers": {"x-agent-operation": input.operation},
	# Replace, not append beside, a value the client sent.
	"header_append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
}

# The operation, if it exists for the agent's tenant.
operation_rule := r if {
	r := data.agentauthz.operations[input.operation]
	for_tenant(r)
}

for_tenant(r) if {
	is_object(r)
	not "tenants" in object.keys(r)
}

for_tenant(r) if {
	is_array(r.tenants)
	input.agent.tenant in r.tenants
}

# Only an integer min_trust 0..4 can be met: missing, misspelt ("min-trust")
# or of another type, it denies.
trust_sufficient if {
	m := operation_rule.min_trust
	m in trust_levels
	effective_trust >= m
}

trust_levels := numbers.range(0, 4)

# Only a string scope can be held: missing or of another type, it denies.
scope_held if {
	s := operation_rule.scope
	is_string(s)
	s in effective_scopes
}

# A public operation (MCP's initialize, ping, tools/list: see
# data.agentauthz.mcp) needs no scope, only the trust level and a verified
# agent. Only the boolean true makes one public.
scope_held if {
	operation_rule.public == true
	is_string(input.agent.spiffe_id)
}

# restriction is the agent's entry in the overlay while it is in force, keyed
# by SPIFFE ID (which names the tenant: one tenant's restriction cannot touch
# another's agent of the same id). An "until" that does not parse keeps the
# restriction in force (fail closed).
restriction := r if {
	r := data.agentauthz.restrictions[input.agent.spiffe_id]
	not expired(r)
}

expired(r) if time.now_ns() >= time.parse_rfc3339_ns(r.until)

quarantined if restriction.quarantined == true

# A restriction that is not exactly of the documented shape quarantines the
# agent: "quarantined": "true", "max_trust": "L1" or "removed_scopes":
# "payments:initiate" must not be read as no restriction.
quarantined if {
	r := restriction
	not well_formed(r)
}

# Restrictions that are not an object cannot be looked up: everyone is
# quarantined until they are fixed.
quarantined if {
	rs := data.agentauthz.restrictions
	not is_object(rs)
}

well_formed(r) if {
	is_object(r)
	every k, v in r {
		field_ok(k, v)
	}
}

field_ok("quarantined", v) if is_boolean(v)

field_ok("max_trust", v) if v in trust_levels

field_ok("removed_scopes", v) if {
	is_array(v)
	every s in v {
		is_string(s)
	}
}

field_ok("until", v) if is_string(v)

field_ok("note", v) if is_string(v)

# The certificate's trust level, lowered (never raised) by max_trust.
effective_trust := min({agent_trust, restriction.max_trust}) if {
	restriction.max_trust in trust_levels
} else := agent_trust

agent_trust := object.get(input, ["agent", "trust"], 0)

# The certificate's scopes minus the removed ones.
effective_scopes contains s if {
	some s in object.get(input, ["agent", "scopes"], [])
	not s in removed_scopes
}

# (A removed_scopes that is not an array quarantines, above.)
removed_scopes := restriction.removed_scopes if {
	is_array(restriction.removed_scopes)
} else := []
