package decisionlog

import (
	"strconv"
	"unicode/utf8"
)

// appendRecordTail appends a decision record's line from "decision_id" on,
// starting with ',': byte for byte what encoding/json writes for
// recordTail without HTML escaping (FuzzRecordTail), without reflection or
// allocation. Records with a key rotation, a response or data take
// encoding/json's path (prepareRecord).
func appendRecordTail(b []byte, r *Record) []byte {
	b = append(b, `,"decision_id":`...)
	b = appendJSONString(b, r.DecisionID)
	a := &r.Agent
	b = append(b, `,"agent":{`...)
	n := len(b)
	b = optString(b, n, `"id":`, a.ID)
	b = optString(b, n, `"spiffe_id":`, a.SPIFFEID)
	b = optString(b, n, `"tenant":`, a.Tenant)
	b = optString(b, n, `"trust_level":`, a.TrustLevel)
	if len(a.Scopes) > 0 {
		b = comma(b, n)
		b = append(b, `"scopes":`...)
		b = appendStrings(b, a.Scopes)
	}
	b = optString(b, n, `"owner":`, a.Owner)
	b = optString(b, n, `"serial":`, a.Serial)
	b = optString(b, n, `"cert_sha256":`, a.CertSHA256)
	b = optString(b, n, `"issuer":`, a.Issuer)
	b = optString(b, n, `"source":`, a.Source)
	q := &r.Request
	b = append(b, `},"request":{`...)
	n = len(b)
	b = optString(b, n, `"id":`, q.ID)
	b = optString(b, n, `"method":`, q.Method)
	b = optString(b, n, `"host":`, q.Host)
	b = optString(b, n, `"path":`, q.Path)
	b = optString(b, n, `"operation":`, q.Operation)
	b = optString(b, n, `"source":`, q.Source)
	if len(q.MCP) > 0 {
		b = comma(b, n)
		b = append(b, `"mcp":[`...)
		for i := range q.MCP {
			m := &q.MCP[i]
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"kind":`...)
			b = appendJSONString(b, m.Kind)
			b = optString(b, 0, `"method":`, m.Method)
			b = optString(b, 0, `"tool":`, m.Tool)
			b = optString(b, 0, `"uri":`, m.URI)
			b = optString(b, 0, `"operation":`, m.Operation)
			b = optString(b, 0, `"arguments_sha256":`, m.ArgumentsSHA256)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	d := &r.Decision
	b = append(b, `},"decision":{"allowed":`...)
	b = strconv.AppendBool(b, d.Allowed)
	b = append(b, `,"http_status":`...)
	b = strconv.AppendInt(b, int64(d.HTTPStatus), 10)
	b = append(b, `,"reasons":`...)
	if d.Reasons == nil {
		b = append(b, "null"...)
	} else {
		b = appendStrings(b, d.Reasons)
	}
	b = optString(b, 0, `"policy_revision":`, d.PolicyRevision)
	b = append(b, '}')
	if r.Truncated {
		b = append(b, `,"truncated":true`...)
	}
	b = append(b, `,"time":"`...)
	b = r.Time.UTC().AppendFormat(b, TimeLayout)
	return append(b, `"}`...)
}

// comma separates a member from the one before it, unless the object's
// members start at n (nothing written yet). n = 0: always.
func comma(b []byte, n int) []byte {
	if len(b) > n || n == 0 {
		b = append(b, ',')
	}
	return b
}

// optString writes an omitempty string member.
func optString(b []byte, n int, key, s string) []byte {
	if s == "" {
		return b
	}
	b = comma(b, n)
	b = append(b, key...)
	return appendJSONString(b, s)
}

func appendStrings(b []byte, l []string) []byte {
	b = append(b, '[')
	for i, s := range l {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, s)
	}
	return append(b, ']')
}

// appendJSONString is encoding/json's string encoding without HTML
// escaping: '"', '\\' and control characters escaped (\b \f \n \r \t by
// name, the rest as \u00xx), invalid UTF-8 as \ufffd, U+2028 and U+2029
// escaped.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
