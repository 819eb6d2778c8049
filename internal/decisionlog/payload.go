package decisionlog

import (
	"encoding/json"
	"strconv"
)

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
	Time        string       `json:"time"`
}

func prepareRecord(r *Record) (preparedRecord, error) {
	tail, err := json.Marshal(recordTail{
		Kind: r.Kind, KeyRotation: r.KeyRotation, Response: r.Response, Agent: r.Agent, Request: r.Request, Decision: r.Decision,
		Time: r.Time.UTC().Format(TimeLayout),
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

// appendJSONString appends s as encoding/json writes it. kid and prev are
// base64url and hex, and log names are plain, so the copy is the common
// case, as are decision ids (UUIDs); anything that needs escaping goes
// through encoding/json.
func appendJSONString(buf []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			b, _ := json.Marshal(s) // a string always marshals
			return append(buf, b...)
		}
	}
	buf = append(buf, '"')
	buf = append(buf, s...)
	return append(buf, '"')
}
