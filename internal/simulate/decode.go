package simulate

import (
	"fmt"
	"math"
	"time"
	"unicode/utf8"

	"github.com/valyala/fastjson"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
)

// LogSource yields the records of a decision log, decoded by a
// LineDecoder.
type LogSource struct {
	r   *decisionlog.Reader
	dec LineDecoder
}

// NewLogSource reads the log in dir.
func NewLogSource(dir string) *LogSource { return &LogSource{r: decisionlog.NewReader(dir)} }

// Next returns the next record, valid until the following call; errors are
// Reader.Next's.
func (l *LogSource) Next() (decisionlog.Entry, error) {
	e, err := l.r.NextRaw()
	if err != nil {
		return e, err
	}
	rec, err := l.dec.Decode(e.Raw)
	if err != nil {
		return decisionlog.Entry{Segment: e.Segment, Line: e.Line, Raw: e.Raw}, fmt.Errorf("%s line %d: %w", e.Segment, e.Line, err)
	}
	e.Record = rec
	return e, nil
}

// Close releases the open segment.
func (l *LogSource) Close() error { return l.r.Close() }

var _ Source = (*LogSource)(nil)

// LineDecoder decodes record lines with only what simulation reads
// decoded, into one reused Record: a decision line as agentauthz writes it
// (compact JSON, no escapes, known fields of the documented types) is
// parsed with fastjson, reusing its buffers, and its few distinct strings
// (agents, paths, reasons) are interned. Any other line (another kind, a
// v1 JWS, an escape, an unknown or repeated field, a damaged line) goes to
// the log's strict decoder (decisionlog.DecodeLine), so the records and the
// errors are exactly those decisionlog.Reader.Next yields (FuzzFastDecode).
// The zero value is ready; it is not safe for concurrent use.
type LineDecoder struct{ fast fastDecoder }

// Decode decodes one line; the record is valid until the next call.
func (d *LineDecoder) Decode(line string) (*decisionlog.Record, error) {
	if rec, ok := d.fast.decode(line); ok {
		return rec, nil
	}
	return decisionlog.DecodeLine(line)
}

// fastDecoder decodes decision lines; the zero value is ready.
type fastDecoder struct {
	p      fastjson.Parser
	rec    decisionlog.Record
	scopes []string
	mcp    []decisionlog.MCPMessage
	reason []string
	intern map[string]string
	ok     bool // cleared by a field the fast path does not take
	seen   uint32
	head   [256]byte
	num    []byte
}

// maxInterned bounds the interned strings; a full table starts again.
const maxInterned = 1 << 16

// decode returns the record of line, or false for a line to hand to the
// strict decoder. It accepts only lines the strict decoder accepts, with
// the same values.
func (d *fastDecoder) decode(line string) (*decisionlog.Record, bool) {
	// Escapes and control bytes (which JSON forbids raw in a string, and
	// fastjson does not check) are left to the strict decoder.
	for i := 0; i < len(line); i++ {
		if c := line[i]; c < 0x20 || c == '\\' {
			return nil, false
		}
	}
	if len(line) > decisionlog.MaxRecordBytes {
		return nil, false
	}
	// The head ({"index":N,"log":"…","kind":"…",) is at most 145 bytes;
	// copied into a reused array, a longer one fails here and the strict
	// decoder judges the line.
	index, log, kind, err := decisionlog.ParseRecordHead(d.head[:copy(d.head[:], line)])
	if err != nil || kind != decisionlog.KindDecision {
		return nil, false
	}
	v, err := d.p.Parse(line)
	if err != nil {
		return nil, false
	}
	top, err := v.Object()
	if err != nil {
		return nil, false
	}
	d.rec = decisionlog.Record{Index: index, Log: log, Kind: kind}
	d.ok, d.seen = true, 0
	var timeSeen bool
	top.Visit(func(k []byte, v *fastjson.Value) {
		switch string(k) {
		case "index":
			d.once(0)
			if n, ok := d.uintValue(v); !ok || n != index {
				d.ok = false
			}
		case "log":
			d.once(1)
			if s, ok := d.str(v, false); !ok || s != log {
				d.ok = false
			}
		case "kind":
			d.once(2)
			if s, ok := d.str(v, false); !ok || s != kind {
				d.ok = false
			}
		case "decision_id":
			d.once(3)
			d.rec.DecisionID, _ = d.strField(v, true)
		case "time":
			d.once(4)
			b, err := v.StringBytes()
			if err != nil {
				d.ok = false
				return
			}
			t, ok := parseRecordTime(b)
			d.rec.Time, timeSeen = t, ok
			d.ok = d.ok && ok
		case "truncated":
			d.once(5)
			d.rec.Truncated = d.boolean(v)
		case "agent":
			d.once(6)
			d.agent(v)
		case "request":
			d.once(7)
			d.request(v)
		case "decision":
			d.once(8)
			d.decision(v)
		default:
			d.ok = false // seq, kid, prev, response, data, … or a case variant
		}
	})
	if !d.ok || !timeSeen || d.seen&(1<<0|1<<1|1<<2) != 1<<0|1<<1|1<<2 {
		return nil, false
	}
	return &d.rec, true
}

// once marks field bit seen; a repeated field is the strict decoder's.
func (d *fastDecoder) once(bit uint) {
	if d.seen&(1<<bit) != 0 {
		d.ok = false
	}
	d.seen |= 1 << bit
}

func (d *fastDecoder) agent(v *fastjson.Value) {
	o, err := v.Object()
	if err != nil {
		d.ok = false
		return
	}
	a := &d.rec.Agent
	var seen uint32
	o.Visit(func(k []byte, v *fastjson.Value) {
		var dst *string
		var bit uint32
		switch string(k) {
		case "id":
			dst, bit = &a.ID, 1<<0
		case "spiffe_id":
			dst, bit = &a.SPIFFEID, 1<<1
		case "tenant":
			dst, bit = &a.Tenant, 1<<2
		case "trust_level":
			dst, bit = &a.TrustLevel, 1<<3
		case "owner":
			dst, bit = &a.Owner, 1<<4
		case "serial":
			dst, bit = &a.Serial, 1<<5
		case "cert_sha256":
			dst, bit = &a.CertSHA256, 1<<6
		case "issuer":
			dst, bit = &a.Issuer, 1<<7
		case "source":
			dst, bit = &a.Source, 1<<8
		case "scopes":
			if seen&(1<<9) != 0 {
				d.ok = false
			}
			seen |= 1 << 9
			a.Scopes = d.strings(v, &d.scopes)
			return
		default:
			d.ok = false
			return
		}
		if seen&bit != 0 {
			d.ok = false
		}
		seen |= bit
		*dst, _ = d.strField(v, false)
	})
}

func (d *fastDecoder) request(v *fastjson.Value) {
	o, err := v.Object()
	if err != nil {
		d.ok = false
		return
	}
	q := &d.rec.Request
	var seen uint32
	o.Visit(func(k []byte, v *fastjson.Value) {
		var dst *string
		var bit uint32
		unique := false // a field of many values is not interned
		switch string(k) {
		case "id":
			dst, bit, unique = &q.ID, 1<<0, true
		case "method":
			dst, bit = &q.Method, 1<<1
		case "host":
			dst, bit = &q.Host, 1<<2
		case "path":
			dst, bit = &q.Path, 1<<3
		case "operation":
			dst, bit = &q.Operation, 1<<4
		case "source":
			dst, bit, unique = &q.Source, 1<<5, true
		case "mcp":
			if seen&(1<<6) != 0 {
				d.ok = false
			}
			seen |= 1 << 6
			d.mcpMessages(v)
			return
		default:
			d.ok = false
			return
		}
		if seen&bit != 0 {
			d.ok = false
		}
		seen |= bit
		*dst, _ = d.strField(v, unique)
	})
}

func (d *fastDecoder) mcpMessages(v *fastjson.Value) {
	vs, err := v.Array()
	if err != nil {
		d.ok = false
		return
	}
	if d.mcp == nil {
		d.mcp = make([]decisionlog.MCPMessage, 0, 4)
	}
	d.mcp = d.mcp[:0]
	for _, m := range vs {
		o, err := m.Object()
		if err != nil {
			d.ok = false
			return
		}
		var msg decisionlog.MCPMessage
		var seen uint32
		o.Visit(func(k []byte, v *fastjson.Value) {
			var dst *string
			var bit uint32
			switch string(k) {
			case "kind":
				dst, bit = &msg.Kind, 1<<0
			case "method":
				dst, bit = &msg.Method, 1<<1
			case "tool":
				dst, bit = &msg.Tool, 1<<2
			case "uri":
				dst, bit = &msg.URI, 1<<3
			case "operation":
				dst, bit = &msg.Operation, 1<<4
			case "arguments_sha256":
				dst, bit = &msg.ArgumentsSHA256, 1<<5
			default:
				d.ok = false
				return
			}
			if seen&bit != 0 {
				d.ok = false
			}
			seen |= bit
			*dst, _ = d.strField(v, false)
		})
		d.mcp = append(d.mcp, msg)
	}
	d.rec.Request.MCP = d.mcp
}

func (d *fastDecoder) decision(v *fastjson.Value) {
	o, err := v.Object()
	if err != nil {
		d.ok = false
		return
	}
	dec := &d.rec.Decision
	var seen uint32
	o.Visit(func(k []byte, v *fastjson.Value) {
		var bit uint32
		switch string(k) {
		case "allowed":
			bit = 1 << 0
			dec.Allowed = d.boolean(v)
		case "http_status":
			bit = 1 << 1
			n, ok := d.intValue(v)
			dec.HTTPStatus, d.ok = n, d.ok && ok
		case "reasons":
			bit = 1 << 2
			dec.Reasons = d.strings(v, &d.reason)
		case "policy_revision":
			bit = 1 << 3
			dec.PolicyRevision, _ = d.strField(v, false)
		default:
			d.ok = false
			return
		}
		if seen&bit != 0 {
			d.ok = false
		}
		seen |= bit
	})
}

// strField is str that clears d.ok when v is not a plain string.
func (d *fastDecoder) strField(v *fastjson.Value, unique bool) (string, bool) {
	s, ok := d.str(v, unique)
	d.ok = d.ok && ok
	return s, ok
}

// str returns v's string if it is valid UTF-8 (the strict decoder would
// replace bad bytes), interned unless unique.
func (d *fastDecoder) str(v *fastjson.Value, unique bool) (string, bool) {
	if v.Type() != fastjson.TypeString {
		return "", false
	}
	b, err := v.StringBytes()
	if err != nil || !utf8.Valid(b) {
		return "", false
	}
	if unique {
		return string(b), true
	}
	if s, ok := d.intern[string(b)]; ok {
		return s, true
	}
	if d.intern == nil || len(d.intern) >= maxInterned {
		d.intern = make(map[string]string, 256)
	}
	s := string(b)
	d.intern[s] = s
	return s, true
}

// strings decodes an array of strings into *buf (reused): non-nil when
// present, as the strict decoder leaves it.
func (d *fastDecoder) strings(v *fastjson.Value, buf *[]string) []string {
	vs, err := v.Array()
	if err != nil {
		d.ok = false
		return nil
	}
	if *buf == nil {
		*buf = make([]string, 0, 4)
	}
	out := (*buf)[:0]
	for _, e := range vs {
		s, ok := d.str(e, false)
		if !ok {
			d.ok = false
			return nil
		}
		out = append(out, s)
	}
	*buf = out
	return out
}

func (d *fastDecoder) boolean(v *fastjson.Value) bool {
	switch v.Type() {
	case fastjson.TypeTrue:
		return true
	case fastjson.TypeFalse:
		return false
	}
	d.ok = false
	return false
}

// intValue takes a JSON integer (-?(0|[1-9][0-9]*)) that fits an int;
// fastjson's numbers are laxer than JSON's.
func (d *fastDecoder) intValue(v *fastjson.Value) (int, bool) {
	neg, n, ok := d.integer(v)
	if !ok || n > math.MaxInt64 {
		return 0, false
	}
	if neg {
		return -int(n), true
	}
	return int(n), true
}

func (d *fastDecoder) uintValue(v *fastjson.Value) (uint64, bool) {
	neg, n, ok := d.integer(v)
	return n, ok && !neg
}

// integer reads a JSON integer's sign and magnitude.
func (d *fastDecoder) integer(v *fastjson.Value) (neg bool, n uint64, ok bool) {
	if v.Type() != fastjson.TypeNumber {
		return false, 0, false
	}
	d.num = v.MarshalTo(d.num[:0])
	digits := d.num
	if len(digits) > 0 && digits[0] == '-' {
		neg, digits = true, digits[1:]
	}
	if len(digits) == 0 || len(digits) > 20 || digits[0] == '0' && len(digits) > 1 {
		return false, 0, false
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return false, 0, false
		}
		if n > (math.MaxUint64-uint64(c-'0'))/10 {
			return false, 0, false // overflows
		}
		n = n*10 + uint64(c-'0')
	}
	return neg, n, true
}

// parseRecordTime reads decisionlog.TimeLayout (2006-01-02T15:04:05.000000Z)
// without allocating; a time that does not exist (February 30th) is
// refused, as time.Parse refuses it.
func parseRecordTime(b []byte) (time.Time, bool) {
	if len(b) != len(decisionlog.TimeLayout) || b[4] != '-' || b[7] != '-' || b[10] != 'T' || b[13] != ':' || b[16] != ':' || b[19] != '.' || b[26] != 'Z' {
		return time.Time{}, false
	}
	num := func(i, n int) (int, bool) {
		v := 0
		for _, c := range b[i : i+n] {
			if c < '0' || c > '9' {
				return 0, false
			}
			v = v*10 + int(c-'0')
		}
		return v, true
	}
	y, ok1 := num(0, 4)
	mo, ok2 := num(5, 2)
	d, ok3 := num(8, 2)
	h, ok4 := num(11, 2)
	mi, ok5 := num(14, 2)
	s, ok6 := num(17, 2)
	us, ok7 := num(20, 6)
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6 && ok7) || mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || s > 59 {
		return time.Time{}, false
	}
	t := time.Date(y, time.Month(mo), d, h, mi, s, us*1000, time.UTC)
	if t.Day() != d { // normalised: the day does not exist in that month
		return time.Time{}, false
	}
	return t, true
}
