package mcp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ParseToolsHeader reads the allowed-tools header agentauthz sets on an
// allowed tools/list (a JSON array of tool names).
func ParseToolsHeader(v string) ([]string, error) {
	var tools []string
	if err := json.Unmarshal([]byte(v), &tools); err != nil || tools == nil {
		return nil, fmt.Errorf("allowed-tools header is not a JSON array of names")
	}
	return tools, nil
}

// ErrUnfilterable means a tools/list answer cannot be read, so cannot be
// filtered; it must not reach the agent.
var ErrUnfilterable = errors.New("tools/list answer cannot be filtered")

// FilterToolsList removes from an MCP server's answer every tool not in
// allowed: in each JSON-RPC response whose result has a "tools" array, the
// tools whose name is not allowed are dropped. The body is JSON (one
// response or a batch of them) or, with content type text/event-stream,
// server-sent events whose data are such messages. Other messages pass
// unchanged. It reports whether anything was removed.
func FilterToolsList(body []byte, contentType string, allowed []string) ([]byte, bool, error) {
	if strings.HasPrefix(strings.TrimSpace(strings.ToLower(contentType)), "text/event-stream") {
		return filterSSE(body, allowed)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return body, false, nil
	}
	return filterJSON(body, allowed)
}

func filterJSON(body []byte, allowed []string) ([]byte, bool, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil || dec.More() {
		return nil, false, fmt.Errorf("%w: not JSON", ErrUnfilterable)
	}
	changed := false
	switch x := v.(type) {
	case map[string]any:
		changed = filterMessage(x, allowed)
	case []any:
		for _, e := range x {
			if m, ok := e.(map[string]any); ok {
				changed = filterMessage(m, allowed) || changed
			}
		}
	}
	if !changed {
		return body, false, nil
	}
	out, err := json.Marshal(v)
	if err != nil {
		return nil, false, fmt.Errorf("%w: %w", ErrUnfilterable, err)
	}
	return out, true, nil
}

func filterMessage(m map[string]any, allowed []string) bool {
	res, ok := m["result"].(map[string]any)
	if !ok {
		return false
	}
	tools, ok := res["tools"].([]any)
	if !ok {
		return false
	}
	kept := make([]any, 0, len(tools))
	for _, t := range tools {
		if o, ok := t.(map[string]any); ok {
			if name, ok := o["name"].(string); ok && slices.Contains(allowed, name) {
				kept = append(kept, t)
			}
		}
	}
	if len(kept) == len(tools) {
		return false
	}
	res["tools"] = kept
	return true
}

// filterSSE filters the data of each event. An event whose data spans
// several lines is rewritten as one data line when it changes.
func filterSSE(body []byte, allowed []string) ([]byte, bool, error) {
	norm := bytes.ReplaceAll(body, []byte("\r\n"), []byte("\n"))
	events := bytes.Split(norm, []byte("\n\n"))
	changed := false
	for i, ev := range events {
		lines := bytes.Split(ev, []byte("\n"))
		var data [][]byte
		var other [][]byte
		for _, l := range lines {
			if d, ok := bytes.CutPrefix(l, []byte("data:")); ok {
				data = append(data, bytes.TrimPrefix(d, []byte(" ")))
			} else {
				other = append(other, l)
			}
		}
		if len(data) == 0 {
			continue
		}
		out, ch, err := filterJSON(bytes.Join(data, []byte("\n")), allowed)
		if err != nil {
			return nil, false, err
		}
		if !ch {
			continue
		}
		changed = true
		rebuilt := append(other, append([]byte("data: "), out...))
		events[i] = bytes.Join(rebuilt, []byte("\n"))
	}
	if !changed {
		return body, false, nil
	}
	return bytes.Join(events, []byte("\n\n")), true, nil
}
