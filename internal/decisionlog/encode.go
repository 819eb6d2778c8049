package decisionlog

import (
	"bytes"
	"encoding/json"
	"strconv"

	"github.com/agentauthz/agentauthz/internal/jsonstring"
)

// appendRecordTail appends a record's line from "decision_id" on, starting
// with ',', without reflection or allocation: the members of recordTail in
// its order, without HTML escaping, strings by internal/jsonstring's rule
// (invalid UTF-8 as \ufffd) and data compacted, as it is (FuzzRecordTail).
// Where the strings are valid UTF-8 and the data compact, that is what
// encoding/json writes for recordTail (and, for every record, what it wrote
// before go1.27). data must be valid JSON (Append checks).
func appendRecordTail(b []byte, r *Record) []byte {
	b = append(b, `,"decision_id":`...)
	b = appendJSONString(b, r.DecisionID)
	if k := r.KeyRotation; k != nil {
		b = append(b, `,"key_rotation":{"new_kid":`...)
		b = appendJSONString(b, k.NewKeyID)
		b = append(b, `,"new_key":`...)
		b = appendJSONString(b, k.NewKey)
		b = optString(b, 0, `"new_note_key":`, k.NoteKey)
		b = append(b, '}')
	}
	if p := r.Response; p != nil {
		b = append(b, `,"response":{"status":`...)
		b = strconv.AppendInt(b, int64(p.Status), 10)
		b = append(b, `,"body":`...)
		b = appendJSONString(b, p.Body)
		b = optString(b, 0, `"content_digest":`, p.ContentDigest)
		b = append(b, `,"bytes":`...)
		b = strconv.AppendInt(b, p.Bytes, 10)
		b = optString(b, 0, `"signature_input":`, p.SignatureInput)
		b = optString(b, 0, `"signature":`, p.Signature)
		b = append(b, '}')
	}
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
	if len(r.Data) > 0 {
		b = append(b, `,"data":`...)
		buf := bytes.NewBuffer(b)
		_ = json.Compact(buf, r.Data) // valid (Append checks); Compact only drops whitespace
		b = buf.Bytes()
	}
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

// appendJSONString: the decision log's strings, without HTML escaping.
func appendJSONString(b []byte, s string) []byte { return jsonstring.Append(b, s) }
