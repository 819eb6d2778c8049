# Reviewer tests for the shipped policy: agents × operations.
# Run with `opa test policies -v` (stock OPA, pinned in go.mod) or `make policy-test`.
package agentauthz.authz_test

import data.agentauthz.authz

# --- agents (what input.agent carries for a verified certificate) ---

agent(id, trust, scopes) := {
	"id": id,
	"spiffe_id": concat("", ["spiffe://dev.agentauthz.local/agent/", id]),
	"tenant": "dev.agentauthz.local",
	"trust_level": sprintf("L%d", [trust]),
	"trust": trust,
	"scopes": scopes,
	"owner": "team-test",
	"profile": "native",
	"source": "peer_certificate",
}

screener := agent("sanctions-screener", 1, ["sanctions:screen"])

reader := agent("payments-reader", 1, ["payments:read"])

onboarder := agent("merchant-onboarder", 2, ["merchants:onboard"])

payer := agent("payments-bot", 3, ["payments:initiate", "payments:read"])

collector := agent("loan-collector", 3, ["loans:repay"])

l2_payer := agent("junior-payments-bot", 2, ["payments:initiate", "payments:read"])

privileged := agent("ops-bot", 4, [
	"sanctions:screen", "payments:read", "payments:initiate",
	"merchants:onboard", "loans:repay",
])

operations := ["sanctions:screen", "payments:read", "merchants:onboard", "payments:initiate", "loans:repay"]

decide(a, op) := d if {
	d := authz.decision with input as {"agent": a, "operation": op}
}

allowed(a, op) if decide(a, op).allowed == true

denied_with(a, op, reason) if {
	d := decide(a, op)
	d.allowed == false
	d.reason == reason
}

# A fixed "now" (2026-01-01T00:00:00Z) for restriction expiry tests.
now_ns := 1767225600000000000

# --- the five operations, each by the agent made for it ---

test_sanctions_screen_allowed if {
	d := decide(screener, "sanctions:screen")
	d.allowed == true
	d.reason == "allowed"
	d.headers["x-agent-operation"] == "sanctions:screen"
}

test_payments_read_allowed if allowed(reader, "payments:read")

test_merchants_onboard_allowed if allowed(onboarder, "merchants:onboard")

test_payments_initiate_allowed if allowed(payer, "payments:initiate")

test_loans_repay_allowed if allowed(collector, "loans:repay")

test_privileged_agent_allowed_everything if {
	every op in operations {
		allowed(privileged, op)
	}
}

# --- least privilege ---

test_read_only_agent_cannot_write if {
	denied_with(reader, "payments:initiate", "insufficient_trust_level")
	denied_with(reader, "merchants:onboard", "insufficient_trust_level")
	denied_with(reader, "loans:repay", "insufficient_trust_level")
}

test_read_only_agent_with_enough_trust_still_needs_scope if {
	denied_with(agent("reader-l3", 3, ["payments:read"]), "payments:initiate", "scope_missing")
}

test_sanctions_agent_cannot_pay if {
	denied_with(screener, "payments:initiate", "insufficient_trust_level")
	denied_with(screener, "payments:read", "scope_missing")
}

test_l2_agent_with_payments_scope_refused if {
	denied_with(l2_payer, "payments:initiate", "insufficient_trust_level")
	allowed(l2_payer, "payments:read")
}

test_payer_cannot_repay_loans if denied_with(payer, "loans:repay", "scope_missing")

test_l0_agent_refused_everything if {
	every op in operations {
		denied_with(agent("untrusted", 0, ["payments:read", "sanctions:screen"]), op, "insufficient_trust_level")
	}
}

test_unknown_operation_denied if {
	denied_with(privileged, "admin:delete", "unknown_operation")
	d := authz.decision with input as {"agent": privileged}
	d.reason == "unknown_operation"
}

test_no_agent_denied if {
	d := authz.decision with input as {"operation": "payments:read"}
	d.allowed == false
	d.reason == "insufficient_trust_level"
}

# --- restrictions overlay (keyed by SPIFFE ID) ---

restricted(a, r) := {a.spiffe_id: r}

test_quarantined_agent_refused_everything if {
	r := restricted(privileged, {"quarantined": true})
	every op in operations {
		d := decide(privileged, op) with data.agentauthz.restrictions as r
		d.allowed == false
		d.reason == "agent_quarantined"
	}
	d := decide(privileged, "admin:delete") with data.agentauthz.restrictions as r
	d.reason == "agent_quarantined"
}

test_quarantine_is_per_agent if {
	allowed(payer, "payments:initiate") with data.agentauthz.restrictions as restricted(privileged, {"quarantined": true})
}

test_quarantined_false_restricts_nothing if {
	allowed(payer, "payments:initiate") with data.agentauthz.restrictions as restricted(payer, {"quarantined": false, "note": "INC-42"})
}

# Two tenants may each have an agent called payments-bot: a quarantine names
# one of them by SPIFFE ID and neither hits nor misses the other.
other_tenant_payer := object.union(payer, {
	"spiffe_id": "spiffe://acme.example/agent/payments-bot",
	"tenant": "acme.example",
})

test_quarantine_is_per_tenant if {
	r := restricted(other_tenant_payer, {"quarantined": true})
	allowed(payer, "payments:initiate") with data.agentauthz.restrictions as r
	denied_with(other_tenant_payer, "payments:initiate", "agent_quarantined") with data.agentauthz.restrictions as r
}

test_restriction_by_bare_agent_id_is_not_applied if {
	# agentauthz refuses such data at load; the policy never matches it.
	allowed(payer, "payments:initiate") with data.agentauthz.restrictions as {"payments-bot": {"quarantined": true}}
}

test_max_trust_downgrades if {
	r := restricted(payer, {"max_trust": 2})
	denied_with(payer, "payments:initiate", "insufficient_trust_level") with data.agentauthz.restrictions as r
	allowed(payer, "payments:read") with data.agentauthz.restrictions as r
}

test_max_trust_cannot_escalate if {
	denied_with(reader, "payments:initiate", "insufficient_trust_level") with data.agentauthz.restrictions as restricted(reader, {"max_trust": 4})
}

test_removed_scope if {
	r := restricted(payer, {"removed_scopes": ["payments:initiate"]})
	denied_with(payer, "payments:initiate", "scope_missing") with data.agentauthz.restrictions as r
	allowed(payer, "payments:read") with data.agentauthz.restrictions as r
}

test_restriction_in_force_until_it_expires if {
	r := restricted(payer, {"quarantined": true, "until": "2026-01-02T00:00:00Z"})
	denied_with(payer, "payments:initiate", "agent_quarantined") with data.agentauthz.restrictions as r
		with time.now_ns as now_ns
}

test_restriction_expires if {
	r := restricted(payer, {"quarantined": true, "max_trust": 0, "until": "2025-12-31T23:59:59Z"})
	allowed(payer, "payments:initiate") with data.agentauthz.restrictions as r
		with time.now_ns as now_ns
}

test_restriction_with_unparsable_until_stays_in_force if {
	r := restricted(payer, {"quarantined": true, "until": "next tuesday"})
	denied_with(payer, "payments:initiate", "agent_quarantined") with data.agentauthz.restrictions as r
		with time.now_ns as now_ns
}

# --- malformed policy data denies (issue 15.5) ---

# Each of these was silently ignored, and the L3 payer kept moving money.
test_malformed_restriction_quarantines if {
	every bad in [
		{"quarantined": "true"},
		{"quarantined": 1},
		{"max_trust": "L1"},
		{"max_trust": 1.5},
		{"max_trust": 7},
		{"removed_scopes": "payments:initiate"},
		{"removed_scopes": [1]},
		{"until": 1767225600},
		{"quarantine": true},
		{"max-trust": 0},
	] {
		denied_with(payer, "payments:initiate", "agent_quarantined") with data.agentauthz.restrictions as restricted(payer, bad)
	}
}

test_restriction_that_is_not_an_object_quarantines if {
	every bad in [true, "quarantined", 0, ["payments:initiate"]] {
		denied_with(payer, "payments:read", "agent_quarantined") with data.agentauthz.restrictions as restricted(payer, bad)
	}
}

test_restrictions_that_are_not_an_object_quarantine_everyone if {
	every bad in [[], "x", true] {
		denied_with(payer, "payments:read", "agent_quarantined") with data.agentauthz.restrictions as bad
	}
}

pay_op(fields) := {"payments:initiate": object.union({"scope": "payments:initiate"}, fields)}

test_missing_or_malformed_min_trust_denies if {
	every bad in [
		{},
		{"min-trust": 3},
		{"min_trust": "3"},
		{"min_trust": "L3"},
		{"min_trust": null},
		{"min_trust": 2.5},
		{"min_trust": -1},
		{"min_trust": 5},
		{"min_trust": [3]},
	] {
		denied_with(privileged, "payments:initiate", "insufficient_trust_level") with data.agentauthz.operations as pay_op(bad)
		denied_with(agent("untrusted", 0, ["payments:initiate"]), "payments:initiate", "insufficient_trust_level") with data.agentauthz.operations as pay_op(bad)
	}
	allowed(payer, "payments:initiate") with data.agentauthz.operations as pay_op({"min_trust": 3})
}

test_missing_or_malformed_scope_denies if {
	every bad in [
		{"min_trust": 0},
		{"min_trust": 0, "scope": ["payments:initiate"]},
		{"min_trust": 0, "scope": true},
	] {
		denied_with(privileged, "payments:initiate", "scope_missing") with data.agentauthz.operations as {"payments:initiate": bad}
	}
}

test_operation_that_is_not_an_object_is_unknown if {
	denied_with(privileged, "payments:initiate", "unknown_operation") with data.agentauthz.operations as {"payments:initiate": 3}
}

# --- tenants ---

acme_only := pay_op({"min_trust": 3, "tenants": ["acme.example"]})

test_operation_limited_to_tenants if {
	allowed(other_tenant_payer, "payments:initiate") with data.agentauthz.operations as acme_only
	denied_with(payer, "payments:initiate", "unknown_operation") with data.agentauthz.operations as acme_only
	d := authz.decision with input as {"operation": "payments:initiate"} with data.agentauthz.operations as acme_only
	d.reason == "unknown_operation"
}

test_malformed_tenants_is_no_tenant if {
	every bad in ["acme.example", {"acme.example": true}, null] {
		denied_with(other_tenant_payer, "payments:initiate", "unknown_operation") with data.agentauthz.operations as pay_op({"min_trust": 3, "tenants": bad})
	}
}

# --- the shipped data is consistent ---

test_every_route_names_a_known_operation if {
	every r in data.agentauthz.routes {
		data.agentauthz.operations[r.operation]
	}
}

test_every_operation_has_a_trust_level_and_scope if {
	every _, o in data.agentauthz.operations {
		o.min_trust in numbers.range(0, 4)
		scoped_or_public(o)
	}
}

scoped_or_public(o) if contains(o.scope, ":")

scoped_or_public(o) if {
	o.public == true
	not "scope" in object.keys(o)
}

test_every_mcp_mapping_names_a_known_operation if {
	mcp := data.agentauthz.mcp
	every _, op in mcp.methods {
		data.agentauthz.operations[op]
	}
	every _, op in mcp.tools {
		data.agentauthz.operations[op]
	}
	every r in mcp.resources {
		data.agentauthz.operations[r.operation]
	}
	data.agentauthz.operations[mcp.responses]
}

# --- MCP: agentauthz resolves each JSON-RPC message to an operation from
# data.agentauthz.mcp and describes it in input.mcp ---

mcp_tool_op(tool) := data.agentauthz.mcp.tools[tool]

mcp_method_op(method) := data.agentauthz.mcp.methods[method]

mcp_decide(a, op, msg) := d if {
	d := authz.decision with input as {"agent": a, "operation": op, "mcp": msg}
}

test_mcp_tools_map_to_their_operations if {
	mcp_tool_op("initiate_payment") == "payments:initiate"
	mcp_tool_op("get_payment") == "payments:read"
	mcp_tool_op("list_payments") == "payments:read"
}

test_mcp_payer_may_initiate_payment if {
	d := mcp_decide(payer, mcp_tool_op("initiate_payment"), {"method": "tools/call", "tool": "initiate_payment", "kind": "request"})
	d.allowed == true
	d.headers["x-agent-operation"] == "payments:initiate"
}

test_mcp_reader_may_read_but_not_initiate if {
	mcp_decide(reader, mcp_tool_op("get_payment"), {"method": "tools/call", "tool": "get_payment"}).allowed == true
	d := mcp_decide(reader, mcp_tool_op("initiate_payment"), {"method": "tools/call", "tool": "initiate_payment"})
	d.allowed == false
	d.reason == "insufficient_trust_level"
}

test_mcp_l2_payer_refused_initiate_payment if {
	d := mcp_decide(l2_payer, mcp_tool_op("initiate_payment"), {"method": "tools/call", "tool": "initiate_payment"})
	d.reason == "insufficient_trust_level"
}

# An unknown tool resolves to no operation (input.operation absent).
test_mcp_unknown_tool_denied if {
	not data.agentauthz.mcp.tools.delete_everything
	d := authz.decision with input as {"agent": privileged, "mcp": {"method": "tools/call", "tool": "delete_everything"}}
	d.allowed == false
	d.reason == "unknown_operation"
}

# Discovery and session upkeep are open to every verified agent, even one
# of trust L0 without scopes.
test_mcp_discovery_and_session_open_to_every_agent if {
	nobody := agent("new-bot", 0, [])
	every method in ["initialize", "ping", "tools/list", "resources/list", "prompts/list"] {
		mcp_decide(nobody, mcp_method_op(method), {"method": method}).allowed == true
	}
	mcp_decide(nobody, data.agentauthz.mcp.methods["notifications/*"], {"method": "notifications/initialized", "kind": "notification"}).allowed == true
	mcp_decide(nobody, data.agentauthz.mcp.responses, {"kind": "response"}).allowed == true
}

test_mcp_public_operation_needs_an_agent if {
	d := authz.decision with input as {"operation": mcp_method_op("tools/list")}
	d.allowed == false
	d.reason == "scope_missing"
}

test_mcp_public_operation_keeps_its_trust_level if {
	ops := {"mcp:discover": {"min_trust": 2, "public": true}}
	denied_with(reader, "mcp:discover", "insufficient_trust_level") with data.agentauthz.operations as ops
	allowed(onboarder, "mcp:discover") with data.agentauthz.operations as ops
}

test_mcp_public_must_be_true if {
	every bad in ["true", 1, false, null] {
		denied_with(privileged, "mcp:discover", "scope_missing") with data.agentauthz.operations as {"mcp:discover": {"min_trust": 0, "public": bad}}
	}
}

test_mcp_quarantined_agent_cannot_even_list_tools if {
	r := restricted(payer, {"quarantined": true})
	denied_with(payer, mcp_method_op("tools/list"), "agent_quarantined") with data.agentauthz.restrictions as r
}

test_mcp_resource_read_by_uri_pattern if {
	r := data.agentauthz.mcp.resources[0]
	r.uri == "payments://payments/*"
	mcp_decide(reader, r.operation, {"method": "resources/read", "uri": "payments://payments/p-1"}).allowed == true
	mcp_decide(screener, r.operation, {"method": "resources/read", "uri": "payments://payments/p-1"}).reason == "scope_missing"
}
