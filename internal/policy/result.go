package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
)

// Result is the policy's decision in typed form. For a boolean decision only
// Allowed is set (plus Revision and Operation).
type Result struct {
	Allowed bool
	// Reason is the policy's reason code; empty when the policy gave none
	// (the caller then uses "allowed" or "policy_denied").
	Reason string
	// Headers: on allow, added to the request sent upstream; on deny, sent to
	// the client. Sorted by key, several values per key possible.
	Headers                 []Header
	RequestHeadersToRemove  []string
	ResponseHeadersToAdd    []Header
	QueryParametersToSet    []Header
	QueryParametersToRemove []string
	// HeaderAppendAction is how Envoy adds Headers and ResponseHeadersToAdd
	// (an envoy.config.core.v3.HeaderValueOption.HeaderAppendAction name);
	// empty: left unset, as opa-envoy-plugin leaves it.
	HeaderAppendAction string
	// HTTPStatus is the status for a denial; 0 when the policy gave none.
	HTTPStatus int
	// Body is the denial body the policy chose; HasBody tells "" from unset.
	Body    string
	HasBody bool
	// DynamicMetadata is the policy's dynamic_metadata object with numbers as
	// float64, ready for structpb.NewStruct; nil when unset.
	DynamicMetadata map[string]any
	// Revision is the policy revision that decided (bundle manifest revision or
	// directory content hash).
	Revision string
	// Operation is input.operation ("" when no route matched). For an
	// MCP call, the operation of the message that decided.
	Operation string
	// MCP is set for a POST to a declared MCP endpoint.
	MCP *MCPResult
}

// Header is one header or query parameter name and value.
type Header struct {
	Key   string
	Value string
}

// Sentinel errors; the caller denies with policy_error on any of them.
var (
	ErrUndefined      = errors.New("policy decision is undefined")
	ErrInvalidResult  = errors.New("invalid policy decision")
	ErrNotReady       = errors.New("no policy loaded")
	ErrEvalTimeout    = errors.New("policy evaluation timed out")
	ErrPolicyRejected = errors.New("policy refused")
)

// MaxDecisionEntries bounds each list a decision can carry (headers,
// response_headers_to_add, query_parameters_to_set, request_headers_to_remove,
// query_parameters_to_remove): far above real use (opa-envoy-plugin has no
// bound), low enough that one answer stays small. Past it the decision is
// invalid: policy_error.
const MaxDecisionEntries = 1024

// parseDecision converts the query result (as OPA returns it: bool or
// map[string]any with json.Number numbers) into a Result, checking every type.
func parseDecision(v any) (*Result, error) {
	switch d := v.(type) {
	case bool:
		return &Result{Allowed: d}, nil
	case map[string]any:
		return parseDecisionObject(d)
	default:
		return nil, fmt.Errorf("%w: decision is %s, want boolean or object", ErrInvalidResult, typeName(v))
	}
}

func parseDecisionObject(d map[string]any) (*Result, error) {
	r := &Result{}
	a, ok := d["allowed"]
	if !ok {
		return nil, fmt.Errorf("%w: decision object has no \"allowed\"", ErrInvalidResult)
	}
	if r.Allowed, ok = a.(bool); !ok {
		return nil, fmt.Errorf("%w: \"allowed\" is %s, want boolean", ErrInvalidResult, typeName(a))
	}
	var err error
	if v, ok := d["reason"]; ok {
		if r.Reason, ok = v.(string); !ok {
			return nil, fmt.Errorf("%w: \"reason\" is %s, want string", ErrInvalidResult, typeName(v))
		}
	}
	if r.Headers, err = headersField(d, "headers"); err != nil {
		return nil, err
	}
	if r.ResponseHeadersToAdd, err = headersField(d, "response_headers_to_add"); err != nil {
		return nil, err
	}
	if r.QueryParametersToSet, err = queryToSetField(d); err != nil {
		return nil, err
	}
	if r.RequestHeadersToRemove, err = stringsField(d, "request_headers_to_remove"); err != nil {
		return nil, err
	}
	if r.QueryParametersToRemove, err = stringsField(d, "query_parameters_to_remove"); err != nil {
		return nil, err
	}
	if v, ok := d["header_append_action"]; ok {
		a, ok := v.(string)
		if _, known := corev3.HeaderValueOption_HeaderAppendAction_value[a]; !ok || !known {
			return nil, fmt.Errorf("%w: \"header_append_action\" is %v, want one of APPEND_IF_EXISTS_OR_ADD, ADD_IF_ABSENT, OVERWRITE_IF_EXISTS_OR_ADD, OVERWRITE_IF_EXISTS", ErrInvalidResult, v)
		}
		r.HeaderAppendAction = a
	}
	if v, ok := d["http_status"]; ok {
		n, ok := v.(json.Number)
		if !ok {
			return nil, fmt.Errorf("%w: \"http_status\" is %s, want number", ErrInvalidResult, typeName(v))
		}
		// Exactly the codes opa-envoy-plugin accepts: known to Go and to
		// Envoy's StatusCode enum.
		code, err := n.Int64()
		if err != nil || code < 100 || code > 599 || http.StatusText(int(code)) == "" {
			return nil, fmt.Errorf("%w: invalid \"http_status\" %s", ErrInvalidResult, n)
		}
		if _, ok := typev3.StatusCode_name[int32(code)]; !ok {
			return nil, fmt.Errorf("%w: invalid \"http_status\" %s", ErrInvalidResult, n)
		}
		r.HTTPStatus = int(code)
	}
	if v, ok := d["body"]; ok {
		if r.Body, ok = v.(string); !ok {
			return nil, fmt.Errorf("%w: \"body\" is %s, want string", ErrInvalidResult, typeName(v))
		}
		r.HasBody = true
	}
	if v, ok := d["dynamic_metadata"]; ok {
		m, ok := v.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("%w: \"dynamic_metadata\" is %s, want object", ErrInvalidResult, typeName(v))
		}
		if err := numbersToFloat(m); err != nil {
			return nil, err
		}
		r.DynamicMetadata = m
	}
	return r, nil
}

// headersField accepts what opa-envoy-plugin accepts: an object whose values
// are strings or arrays of strings, or an array of such objects.
func headersField(d map[string]any, name string) ([]Header, error) {
	v, ok := d[name]
	if !ok {
		return nil, nil
	}
	var out []Header
	add := func(m map[string]any) error {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			switch hv := m[k].(type) {
			case string:
				out = append(out, Header{k, hv})
			case []any:
				for _, e := range hv {
					s, ok := e.(string)
					if !ok {
						return fmt.Errorf("%w: %q value for %q is %s, want string", ErrInvalidResult, name, k, typeName(e))
					}
					out = append(out, Header{k, s})
				}
			default:
				return fmt.Errorf("%w: %q value for %q is %s, want string or array", ErrInvalidResult, name, k, typeName(hv))
			}
			if len(out) > MaxDecisionEntries {
				return fmt.Errorf("%w: more than %d entries in %q", ErrInvalidResult, MaxDecisionEntries, name)
			}
		}
		return nil
	}
	switch hv := v.(type) {
	case map[string]any:
		if err := add(hv); err != nil {
			return nil, err
		}
	case []any:
		for _, e := range hv {
			m, ok := e.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("%w: %q element is %s, want object", ErrInvalidResult, name, typeName(e))
			}
			if err := add(m); err != nil {
				return nil, err
			}
		}
	default:
		return nil, fmt.Errorf("%w: %q is %s, want object", ErrInvalidResult, name, typeName(v))
	}
	return out, nil
}

func queryToSetField(d map[string]any) ([]Header, error) {
	v, ok := d["query_parameters_to_set"]
	if !ok {
		return nil, nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%w: \"query_parameters_to_set\" is %s, want object", ErrInvalidResult, typeName(v))
	}
	return headersField(map[string]any{"query_parameters_to_set": m}, "query_parameters_to_set")
}

func stringsField(d map[string]any, name string) ([]string, error) {
	v, ok := d[name]
	if !ok {
		return nil, nil
	}
	arr, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("%w: %q is %s, want array of strings", ErrInvalidResult, name, typeName(v))
	}
	if len(arr) > MaxDecisionEntries {
		return nil, fmt.Errorf("%w: more than %d entries in %q", ErrInvalidResult, MaxDecisionEntries, name)
	}
	out := make([]string, len(arr))
	for i, e := range arr {
		s, ok := e.(string)
		if !ok {
			return nil, fmt.Errorf("%w: %q element is %s, want string", ErrInvalidResult, name, typeName(e))
		}
		out[i] = s
	}
	return out, nil
}

func typeName(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case string:
		return "string"
	case json.Number:
		return "number"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return fmt.Sprintf("%T", v)
}

// numbersToFloat converts json.Number values in place (recursively) to
// float64, the number type google.protobuf.Struct carries.
func numbersToFloat(v any) error {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if n, ok := e.(json.Number); ok {
				f, err := n.Float64()
				if err != nil {
					return fmt.Errorf("%w: dynamic_metadata number %s: %w", ErrInvalidResult, n, err)
				}
				x[k] = f
				continue
			}
			if err := numbersToFloat(e); err != nil {
				return err
			}
		}
	case []any:
		for i, e := range x {
			if n, ok := e.(json.Number); ok {
				f, err := n.Float64()
				if err != nil {
					return fmt.Errorf("%w: dynamic_metadata number %s: %w", ErrInvalidResult, n, err)
				}
				x[i] = f
				continue
			}
			if err := numbersToFloat(e); err != nil {
				return err
			}
		}
	}
	return nil
}
