package mcp

import (
	"encoding/json"
	"strconv"
)

// JSON-RPC error codes of a denial. -32600 is JSON-RPC 2.0's own. A
// refusal is 403, an application-defined code (outside -32768..-32000),
// chosen to read as HTTP's 403: the implementation range is crowded (the
// official Go SDK reads -32003 as "client is closing" and drops the
// connection).
const (
	CodeInvalidRequest = -32600
	CodeForbidden      = 403
)

// ErrorData is the error's data member: what a client, or the model behind
// it, needs to explain the refusal and quote it to an operator.
type ErrorData struct {
	Reason     string `json:"reason"`
	DecisionID string `json:"decision_id"`
}

type rpcError struct {
	Code    int       `json:"code"`
	Message string    `json:"message"`
	Data    ErrorData `json:"data"`
}

type errorResponse struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Error   rpcError        `json:"error"`
}

// ErrorBody is the JSON-RPC answer to a denied call: one error response for
// a single message, an array of them (one per request of the batch, each
// with its id) for a batch. A call that could not be read (c nil), or whose
// messages are all notifications or responses, gets one error with id null.
func ErrorBody(c *Call, code int, message string, data ErrorData) []byte {
	e := rpcError{Code: code, Message: message, Data: data}
	var out []errorResponse
	if c != nil {
		for _, m := range c.Messages {
			if m.Kind == Request {
				out = append(out, errorResponse{"2.0", json.RawMessage(m.ID), e})
			}
		}
	}
	if len(out) == 0 {
		out = append(out, errorResponse{"2.0", json.RawMessage("null"), e})
	}
	var b []byte
	if c != nil && c.Batch && len(out) > 0 && out[0].ID != nil && string(out[0].ID) != "null" {
		b, _ = json.Marshal(out)
	} else {
		b, _ = json.Marshal(out[0])
	}
	return b
}

// DenialMessage returns the human text of a denial's JSON-RPC error.
func DenialMessage(reason string, m *Message) string {
	what := "this call"
	switch {
	case m == nil:
	case m.Tool != "":
		what = "tool " + strconv.Quote(m.Tool)
	case m.URI != "":
		what = "resource " + strconv.Quote(m.URI)
	case m.Method != "":
		what = "method " + strconv.Quote(m.Method)
	}
	return "agentauthz denied " + what + ": " + reason
}
