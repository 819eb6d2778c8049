package mcp

import "github.com/agentauthz/agentauthz/internal/jsonvalid"

// validJSON is json.Valid in one tight pass (the parser's budget is a few
// microseconds per call), refusing nesting deeper than maxDepth.
func validJSON(b []byte) bool { return jsonvalid.Valid(b, maxDepth) }

// maxDepth bounds nesting: deeper bodies are refused, not recursed into.
const maxDepth = 512
