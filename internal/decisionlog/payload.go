package decisionlog

import (
	"bytes"
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// marshalJSON is json.Marshal without HTML escaping: a record is not HTML,
// and escaping turns each of '<', '>' and '&' into six bytes.
func marshalJSON(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// fieldLimits bound, in bytes, every string the caller puts into a record
// (request fields come from the client, through Envoy, and are otherwise
// bounded only by the gRPC message size). With them a record stays far
// below MaxRecordBytes even when every byte needs a six-byte JSON escape,
// so a decision is never left unrecorded for being too large.
const (
	limitID      = 256  // decision id, request id, serial, tenant, owner, …
	limitLong    = 1024 // SPIFFE id, issuer DN, host
	limitPath    = 2048
	limitMethod  = 32
	limitScopes  = 64 // entries, of limitScope bytes each
	limitScope   = 128
	limitReasons = 16 // entries, of limitReason bytes each
	limitReason  = 64
	limitMCP     = 8 // messages of an MCP batch recorded,
	limitTool    = 128
	limitURI     = 512
)

// boundRecord cuts every field of r to its limit (at a UTF-8 boundary) and
// reports whether it cut anything.
func boundRecord(r *Record) bool {
	cut := false
	str := func(s *string, n int) {
		if len(*s) > n {
			i := n
			for i > 0 && !utf8.RuneStart((*s)[i]) {
				i--
			}
			*s, cut = (*s)[:i], true
		}
	}
	list := func(l *[]string, items, n int) {
		if len(*l) > items {
			*l, cut = (*l)[:items:items], true
		}
		copied := false
		for i := range *l {
			if len((*l)[i]) > n {
				if !copied {
					*l, copied = append([]string(nil), *l...), true // never write into the caller's slice
				}
				str(&(*l)[i], n)
			}
		}
	}
	str(&r.DecisionID, limitID)
	a := &r.Agent
	for _, f := range []*string{&a.ID, &a.Tenant, &a.TrustLevel, &a.Owner, &a.Serial, &a.CertSHA256, &a.Source} {
		str(f, limitID)
	}
	str(&a.SPIFFEID, limitLong)
	str(&a.Issuer, limitLong)
	list(&a.Scopes, limitScopes, limitScope)
	q := &r.Request
	for _, f := range []*string{&q.ID, &q.Operation, &q.Source} {
		str(f, limitID)
	}
	str(&q.Method, limitMethod)
	str(&q.Host, limitLong)
	str(&q.Path, limitPath)
	if len(q.MCP) > limitMCP {
		q.MCP, cut = q.MCP[:limitMCP:limitMCP], true
	}
	copied := false
	for i := range q.MCP {
		m := q.MCP[i]
		for _, f := range []*string{&m.Kind, &m.Method, &m.Operation} {
			str(f, limitID)
		}
		str(&m.Tool, limitTool)
		str(&m.ArgumentsSHA256, 64)
		str(&m.URI, limitURI)
		if m != q.MCP[i] {
			if !copied {
				q.MCP, copied = append([]MCPMessage(nil), q.MCP...), true // never write into the caller's slice
			}
			q.MCP[i] = m
		}
	}
	list(&r.Decision.Reasons, limitReasons, limitReason)
	str(&r.Decision.PolicyRevision, limitID)
	return cut
}

// preparedRecord is a record's JSON with the fields the log assigns (seq,
// log, kid, prev) left open. Append builds it before taking the log's lock;
// under the lock only the splice, the base64 and one SHA-256 remain, which
// is all the hash chain forces to run one record at a time. A shorter
// critical section also means a lock holder descheduled by a busy machine
// stalls fewer appenders.
type preparedRecord struct {
	id   string // decision_id
	tail []byte // `,"kind":…,"time":"…"}`: everything after "prev"
}

// recordTail is Record's JSON from "kind" on, in MarshalJSON's field order.
type recordTail struct {
	Kind        string       `json:"kind,omitempty"`
	KeyRotation *KeyRotation `json:"key_rotation,omitempty"`
	Response    *Response    `json:"response,omitempty"`
	Agent       Agent        `json:"agent"`
	Request     Request      `json:"request"`
	Decision    Decision     `json:"decision"`
	Truncated   bool         `json:"truncated,omitempty"`
	Time        string       `json:"time"`
}

func prepareRecord(r *Record) (preparedRecord, error) {
	tail, err := marshalJSON(recordTail{
		Kind: r.Kind, KeyRotation: r.KeyRotation, Response: r.Response, Agent: r.Agent, Request: r.Request, Decision: r.Decision,
		Truncated: r.Truncated, Time: r.Time.UTC().Format(TimeLayout),
	})
	if err != nil {
		return preparedRecord{}, err
	}
	tail[0] = ',' // the object continues after "prev"
	return preparedRecord{id: r.DecisionID, tail: tail}, nil
}

// appendPayload appends the record's JSON with the log-assigned fields:
// byte for byte what Record.MarshalJSON writes for the same record
// (TestPreparedRecordMatchesMarshalJSON, FuzzPreparedRecord).
func (p preparedRecord) appendPayload(buf []byte, seq uint64, log, kid, prev string) []byte {
	buf = append(buf, `{"seq":`...)
	buf = strconv.AppendUint(buf, seq, 10)
	buf = append(buf, `,"decision_id":`...)
	buf = appendJSONString(buf, p.id)
	buf = append(buf, `,"log":`...)
	buf = appendJSONString(buf, log)
	buf = append(buf, `,"kid":`...)
	buf = appendJSONString(buf, kid)
	buf = append(buf, `,"prev":`...)
	buf = appendJSONString(buf, prev)
	return append(buf, p.tail...)
}

// appendJSONString appends s as marshalJSON writes it. kid and prev are
// base64url and hex, and log names are plain, so the copy is the common
// case, as are decision ids (UUIDs); anything that needs escaping goes
// through encoding/json.
func appendJSONString(buf []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' {
			b, _ := marshalJSON(s) // a string always marshals
			return append(buf, b...)
		}
	}
	buf = append(buf, '"')
	buf = append(buf, s...)
	return append(buf, '"')
}
