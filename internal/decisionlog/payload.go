package decisionlog

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"unicode/utf8"
)

// marshalJSON is json.Marshal without HTML escaping: a record is not HTML,
// and escaping turns each of '<', '>' and '&' into six bytes.
func marshalJSON(v any) ([]byte, error) {
	e := encoders.Get().(*encoder)
	defer encoders.Put(e)
	e.buf.Reset()
	if err := e.enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.Clone(bytes.TrimSuffix(e.buf.Bytes(), []byte("\n"))), nil
}

// encoder is a reusable JSON encoder without HTML escaping: one per
// concurrent append, so a record costs one allocation for its JSON.
type encoder struct {
	buf bytes.Buffer
	enc *json.Encoder
}

var encoders = sync.Pool{New: func() any {
	e := &encoder{}
	e.enc = json.NewEncoder(&e.buf)
	e.enc.SetEscapeHTML(false)
	return e
}}

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

// preparedRecord is a record's JSON line with the fields the log assigns
// (index, log) left open. Append builds it before taking the log's lock;
// under the lock only the head and the leaf hash remain. The tail is
// written into buf after room bytes, enough for the longest head, so that
// line writes the head in place: one allocation per record.
type preparedRecord struct {
	kind string
	log  string // the name room was reserved for
	buf  []byte // room bytes, then tail
	room int
	tail []byte // `,"decision_id":…,"time":"…"}`: everything after "kind"
}

// prepareRecord encodes r (r.Log set) by appendRecordTail.
func prepareRecord(r *Record) (preparedRecord, error) {
	kind := r.Kind
	if kind == "" {
		kind = KindDecision
	}
	if len(r.Data) > 0 && (!json.Valid(r.Data) || !utf8.Valid(r.Data)) {
		return preparedRecord{}, errors.New("decision log: record data is not valid JSON in UTF-8")
	}
	p := preparedRecord{kind: kind, log: r.Log, room: headRoom(r.Log, kind)}
	p.buf = appendRecordTail(make([]byte, p.room, p.room+tailEstimate(r)), r)
	p.tail = p.buf[p.room:]
	return p, nil
}

// headRoom is the longest head a record of this log and kind can have.
func headRoom(log, kind string) int {
	return len(recordPrefix) + 20 + len(`,"log":"`) + len(log) + len(`","kind":"`) + len(kind) + 1
}

// tailEstimate is what the tail needs when nothing is escaped, plus room
// for the line's LF.
func tailEstimate(r *Record) int {
	n := 448 + len(r.DecisionID) // the names, quotes and punctuation of every member: ~400 bytes
	a, q := &r.Agent, &r.Request
	n += len(a.ID) + len(a.SPIFFEID) + len(a.Tenant) + len(a.TrustLevel) + len(a.Owner) + len(a.Serial) + len(a.CertSHA256) + len(a.Issuer) + len(a.Source)
	for _, s := range a.Scopes {
		n += len(s) + 3
	}
	n += len(q.ID) + len(q.Method) + len(q.Host) + len(q.Path) + len(q.Operation) + len(q.Source)
	for _, m := range q.MCP {
		n += 100 + len(m.Kind) + len(m.Method) + len(m.Tool) + len(m.URI) + len(m.Operation) + len(m.ArgumentsSHA256)
	}
	for _, s := range r.Decision.Reasons {
		n += len(s) + 3
	}
	if k := r.KeyRotation; k != nil {
		n += 64 + len(k.NewKeyID) + len(k.NewKey) + len(k.NoteKey)
	}
	if p := r.Response; p != nil {
		n += 128 + len(p.Body) + len(p.ContentDigest) + len(p.SignatureInput) + len(p.Signature)
	}
	return n + len(r.Decision.PolicyRevision) + len(r.Data)
}

// line returns the record line (without its LF, with room for it) for
// index in log, written in place before the tail.
func (p preparedRecord) line(index uint64, log string) []byte {
	head := len(recordPrefix) + decimalLen(index) + len(`,"log":"`) + len(log) + len(`","kind":"`) + len(p.kind) + 1
	if log != p.log || head > p.room {
		return p.appendLine(make([]byte, 0, head+len(p.tail)+1), index, log)
	}
	start := p.room - head
	_ = p.appendHead(p.buf[start:start], index, log) // fills buf[start:room]
	return p.buf[start:]
}

func decimalLen(n uint64) int {
	d := 1
	for ; n >= 10; n /= 10 {
		d++
	}
	return d
}

// appendLine appends the record line (without its LF):
// {"index":N,"log":"…","kind":"…","decision_id":…}. The head is written by
// hand so that readers (verification above all) can take index, log and
// kind from it without decoding the JSON (parseRecordHead).
func (p preparedRecord) appendLine(buf []byte, index uint64, log string) []byte {
	return append(p.appendHead(buf, index, log), p.tail...)
}

func (p preparedRecord) appendHead(buf []byte, index uint64, log string) []byte {
	buf = append(buf, recordPrefix...)
	buf = strconv.AppendUint(buf, index, 10)
	buf = append(buf, `,"log":"`...)
	buf = append(buf, log...) // validOrigin: nothing to escape
	buf = append(buf, `","kind":"`...)
	buf = append(buf, p.kind...) // validKind: nothing to escape
	return append(buf, '"')
}

// recordHead is what parseRecordHead reads from the start of a record line.
type recordHead struct {
	index     uint64
	log, kind string
}

// parseRecordHead reads index, log and kind from the fixed head of a v2
// record line. It does not check the rest of the line.
func parseRecordHead(line []byte) (recordHead, error) { return parseRecordHeadIn(line, "") }

// parseRecordHeadIn is parseRecordHead for a line of the log named origin
// (audit verify's): the usual log name and kinds are not copied.
func parseRecordHeadIn(line []byte, origin string) (recordHead, error) {
	var h recordHead
	rest, ok := bytes.CutPrefix(line, []byte(recordPrefix))
	if !ok {
		return h, fmt.Errorf("%w: a record line starts with %s", ErrMalformed, recordPrefix)
	}
	i := 0
	for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
		i++
	}
	if i == 0 || i > 20 || (i > 1 && rest[0] == '0') {
		return h, fmt.Errorf("%w: index", ErrMalformed)
	}
	var err error
	if h.index, err = strconv.ParseUint(string(rest[:i]), 10, 64); err != nil {
		return h, fmt.Errorf("%w: index: %v", ErrMalformed, err)
	}
	rest = rest[i:]
	str := func(prefix string) (string, bool) {
		r, ok := bytes.CutPrefix(rest, []byte(prefix))
		if !ok {
			return "", false
		}
		j := bytes.IndexByte(r, '"')
		if j < 0 {
			return "", false
		}
		rest = r[j+1:]
		switch v := r[:j]; string(v) {
		case origin:
			return origin, true
		case KindDecision:
			return KindDecision, true
		case KindResponse:
			return KindResponse, true
		default:
			return string(v), true
		}
	}
	if h.log, ok = str(`,"log":"`); !ok || !validOrigin(h.log) {
		return h, fmt.Errorf("%w: log", ErrMalformed)
	}
	if h.kind, ok = str(`,"kind":"`); !ok || !validKind(h.kind) {
		return h, fmt.Errorf("%w: kind", ErrMalformed)
	}
	if len(rest) == 0 || (rest[0] != ',' && rest[0] != '}') {
		return h, fmt.Errorf("%w: after kind", ErrMalformed)
	}
	return h, nil
}

// ParseRecordHead reads index, log and kind from the fixed head of a v2
// record line, {"index":N,"log":"…","kind":"…", as DecodeRecordLine checks
// it; it does not look at the rest of the line (policy simulation decodes
// the rest itself).
func ParseRecordHead(line []byte) (index uint64, log, kind string, err error) {
	h, err := parseRecordHead(line)
	return h.index, h.log, h.kind, err
}

// validKind: a record kind is 1 to 32 of [a-z_].
func validKind(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 'a' || c > 'z') && c != '_' {
			return false
		}
	}
	return true
}

// decodeRecordLine decodes a v2 record line strictly: the head, then the
// whole line as JSON into a Record whose index, log and kind agree with
// the head.
func decodeRecordLine(line []byte) (*Record, error) {
	if len(line) > MaxRecordBytes {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrMalformed, MaxRecordBytes)
	}
	h, err := parseRecordHead(line)
	if err != nil {
		return nil, err
	}
	var r Record
	if err := json.Unmarshal(line, &r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if r.Index != h.index || r.Log != h.log || r.Kind != h.kind || r.Seq != 0 || r.KeyID != "" || r.Prev != "" {
		return nil, fmt.Errorf("%w: fields disagree with the line's head", ErrMalformed)
	}
	if (r.Kind == KindResponse) != (r.Response != nil) {
		return nil, fmt.Errorf("%w: a response record without its response, or a response on another kind", ErrMalformed)
	}
	if r.Kind == KindKeyRotation {
		if err := checkRotation(&r); err != nil {
			return nil, err
		}
	}
	return &r, nil
}

// DecodeRecordLine decodes a v2 record line (without its LF) strictly,
// without verifying anything: the line's hash is what receipts and
// checkpoints cover.
func DecodeRecordLine(line []byte) (*Record, error) { return decodeRecordLine(line) }
