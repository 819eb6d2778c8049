package decisionlog

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/agentauthz/agentauthz/internal/jsonstring"
	"github.com/agentauthz/agentauthz/internal/jsonvalid"
	"github.com/agentauthz/agentauthz/internal/testenv"
)

func samplePayloadRecords() []Record {
	at := time.Date(2026, 11, 26, 3, 4, 5, 123456000, time.UTC)
	return []Record{
		{Seq: 1, DecisionID: "0192f0c4-7d1e-7a3b-9c1d-2e3f4a5b6c7d", Time: at, Log: "agentauthz", KeyID: "kid_-AZ09", Prev: "",
			Decision: Decision{Reasons: []string{}}},
		{Seq: 18446744073709551615, DecisionID: "d", Time: at.In(time.FixedZone("x", 3600)), Log: "eu-west/replica <1> & \"2\"",
			KeyID: "k", Prev: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
			Agent: Agent{ID: "payments-agent", SPIFFEID: "spiffe://acme.example/agent/payments-agent", Tenant: "acme.example",
				TrustLevel: "L3", Scopes: []string{"payments:initiate", "ledger:read"}, Owner: "team-payments@acme.example",
				Serial: "0a1b", CertSHA256: "ab", Issuer: "CN=Acme Agents CA", Source: "xfcc"},
			Request: Request{ID: "req-1", Method: "POST", Host: "api.acme.example", Path: "/v1/payments\u2028é\x00",
				Operation: "payments.initiate", Source: "10.0.0.1:443"},
			Decision: Decision{Allowed: true, HTTPStatus: 200, Reasons: []string{"allowed"}, PolicyRevision: "r1"}},
		{Seq: 7, DecisionID: "rot\xff", Time: at, Log: "l\tog", KeyID: "k1", Prev: "00", Kind: KindKeyRotation,
			KeyRotation: &KeyRotation{NewKeyID: "k2", NewKey: "AAAA"}, Decision: Decision{Reasons: []string{}}},
	}
}

func TestPreparedRecordRoundTrips(t *testing.T) {
	for _, r := range samplePayloadRecords() {
		checkPrepared(t, r)
	}
}

// checkPrepared: the record line decodes (strictly) to the record, with
// the assigned index and log.
func checkPrepared(t *testing.T, r Record) {
	t.Helper()
	r.Seq, r.KeyID, r.Prev = 0, "", ""
	if r.Kind == "" {
		r.Kind = KindDecision
	}
	if r.Decision.Reasons == nil {
		r.Decision.Reasons = []string{}
	}
	p, err := prepareRecord(&r)
	if err != nil {
		t.Fatal(err)
	}
	line := p.appendLine([]byte("scratch"), r.Index, "log-1")[len("scratch"):]
	got, err := decodeRecordLine(line)
	if err != nil {
		if r.Kind == KindKeyRotation {
			return // the sample rotation announces a made-up key
		}
		t.Fatalf("%s: %v", line, err)
	}
	want := r
	want.Log = "log-1"
	want.Time = r.Time.UTC().Truncate(time.Microsecond)
	gb, _ := got.MarshalJSON()
	wb, _ := want.MarshalJSON()
	if !bytes.Equal(gb, wb) {
		t.Fatalf("round trip:\n got %s\nwant %s", gb, wb)
	}
}

// FuzzPreparedRecord: every record line decodes back to its record.
func FuzzPreparedRecord(f *testing.F) {
	for _, r := range samplePayloadRecords() {
		f.Add(r.Seq, r.DecisionID, r.Agent.ID, r.Request.Path, r.Time.UnixNano(), r.Decision.Allowed)
	}
	f.Fuzz(func(t *testing.T, index uint64, id, agent, path string, at int64, allowed bool) {
		r := Record{Index: index, DecisionID: id, Time: time.Unix(0, at),
			Agent: Agent{ID: agent, Scopes: []string{agent, path}}, Request: Request{Path: path},
			Decision: Decision{Allowed: allowed, Reasons: []string{path}}}
		if r.Time.Year() < 0 || r.Time.Year() > 9999 {
			return
		}
		boundRecord(&r)
		for _, s := range []string{id, agent, path} {
			if !utf8.ValidString(s) {
				return // JSON replaces invalid UTF-8: not a round trip
			}
		}
		checkPrepared(t, r)
	})
}

// TestHugeFieldsAreRecordedTruncated (#15.4): a 33 KB Host full of '&' (six
// bytes each under HTML escaping), a huge x-request-id and scope list: the
// record is still written, every field within its bound, flagged
// truncated, and without HTML escapes.
func TestHugeFieldsAreRecordedTruncated(t *testing.T) {
	o := testOptions(t)
	l := mustOpen(t, o)
	defer l.Close()
	r := sampleRecord(1)
	r.Decision = Decision{Allowed: false, HTTPStatus: 403, Reasons: []string{"policy_denied"}}
	r.Request.Host = strings.Repeat("&", 33<<10)
	r.Request.ID = strings.Repeat("é", 40<<10) // cut at a rune boundary
	r.Request.Path = "/a<b>&c"
	scopes := make([]string, 1000)
	for i := range scopes {
		scopes[i] = strings.Repeat("s", 300)
	}
	r.Agent.Scopes = scopes
	if _, err := l.Append(context.Background(), r); err != nil {
		t.Fatalf("a denial must be recorded whatever its size: %v", err)
	}
	records, _, _ := logLines(t, o.Dir)
	payload := records[0]
	got, err := decodeRecordLine(payload)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Truncated {
		t.Error("record not flagged truncated")
	}
	if len(got.Request.Host) != limitLong || len(got.Request.ID) > limitID || !utf8.ValidString(got.Request.ID) {
		t.Errorf("host %d bytes, request id %d bytes (valid UTF-8: %v)", len(got.Request.Host), len(got.Request.ID), utf8.ValidString(got.Request.ID))
	}
	if len(got.Agent.Scopes) != limitScopes || len(got.Agent.Scopes[0]) != limitScope || len(scopes[0]) != 300 {
		t.Errorf("scopes: %d of %d bytes (caller's slice: %d bytes)", len(got.Agent.Scopes), len(got.Agent.Scopes[0]), len(scopes[0]))
	}
	if got.Request.Path != "/a<b>&c" {
		t.Errorf("path %q", got.Request.Path)
	}
	if bytes.Contains(payload, []byte(`\u0026`)) || bytes.Contains(payload, []byte(`\u003c`)) {
		t.Error("record JSON is HTML-escaped")
	}
	if !bytes.Contains(payload, []byte(`"truncated":true`)) {
		t.Errorf("no truncated flag in %s", payload[:200])
	}
	// The worst case: every field at its bound and every byte a control
	// character (a six-byte JSON escape) still fits in one record.
	w := sampleRecord(3)
	ctl := strings.Repeat("\x01", limitPath)
	for _, f := range []*string{&w.DecisionID, &w.Agent.ID, &w.Agent.SPIFFEID, &w.Agent.Tenant, &w.Agent.TrustLevel, &w.Agent.Owner,
		&w.Agent.Serial, &w.Agent.CertSHA256, &w.Agent.Issuer, &w.Agent.Source, &w.Request.ID, &w.Request.Method, &w.Request.Host,
		&w.Request.Path, &w.Request.Operation, &w.Request.Source, &w.Decision.PolicyRevision} {
		*f = ctl
	}
	w.Agent.Scopes = make([]string, limitScopes+1)
	w.Decision.Reasons = make([]string, limitReasons+1)
	for i := range w.Agent.Scopes {
		w.Agent.Scopes[i] = ctl
	}
	for i := range w.Decision.Reasons {
		w.Decision.Reasons[i] = ctl
	}
	if _, err := l.Append(context.Background(), w); err != nil {
		t.Fatalf("worst-case record: %v", err)
	}
	// An ordinary record carries no flag.
	if _, err := l.Append(context.Background(), sampleRecord(2)); err != nil {
		t.Fatal(err)
	}
	if records, _, _ := logLines(t, o.Dir); strings.Contains(string(records[2]), "truncated") {
		t.Error("an ordinary record is flagged truncated")
	}
}

// recordTail is a record line from "decision_id" on, in Record's field
// order: what the log encoded with encoding/json before appendRecordTail.
type recordTail struct {
	DecisionID  string          `json:"decision_id"`
	KeyRotation *KeyRotation    `json:"key_rotation,omitempty"`
	Response    *Response       `json:"response,omitempty"`
	Agent       Agent           `json:"agent"`
	Request     Request         `json:"request"`
	Decision    Decision        `json:"decision"`
	Data        json.RawMessage `json:"data,omitempty"`
	Truncated   bool            `json:"truncated,omitempty"`
	Time        string          `json:"time"`
}

// tailByEncodingJSON is what encoding/json writes for r's tail, as the
// log wrote it before appendRecordTail.
func tailByEncodingJSON(t testing.TB, r *Record) []byte {
	t.Helper()
	tail, err := marshalJSON(recordTail{DecisionID: r.DecisionID, KeyRotation: r.KeyRotation, Response: r.Response,
		Agent: r.Agent, Request: r.Request, Decision: r.Decision, Data: r.Data, Truncated: r.Truncated,
		Time: r.Time.UTC().Format(TimeLayout)})
	if err != nil {
		t.Fatal(err)
	}
	tail[0] = ','
	return tail
}

// FuzzRecordTail: appendRecordTail writes every kind of record by the
// documented rule (internal/jsonstring: encoding/json of go1.26 without
// HTML escaping) for any strings in any field (escapes, invalid UTF-8,
// U+2028, HTML characters), empty and absent lists, MCP messages, key
// rotations, responses and data. The reference is encoding/json with
// invalid bytes stood in for (testenv.JSONRef), so it holds on every
// toolchain: go1.27 writes invalid UTF-8 as a raw U+FFFD.
func FuzzRecordTail(f *testing.F) {
	f.Add("dec-1", "payments-bot", "payments:initiate", "/v1/pay", "api.acme.test", "scope_missing", "", uint8(0), 200)
	f.Add("a\"b\\c\x00\x1f\x7f", "é\u2028\u2029", "<script>&amp;", "\xff\xfe", "\t\n\r\b\f", "", "tools/call", uint8(7), 403)
	f.Add("", "", "", "", "", "x", "\xe2\x80", uint8(2), -1)
	f.Add("rot\xff", "AAAA", "<&>", "/p", "h", "signed\u2028\xff", "\ufffd", uint8(0x71), 201)
	f.Fuzz(func(t *testing.T, id, agent, scope, path, host, reason, tool string, shape uint8, status int) {
		build := func(in func(string) string) *Record {
			id, agent, scope, path, host, reason, tool := in(id), in(agent), in(scope), in(path), in(host), in(reason), in(tool)
			r := sampleRecord(int(shape))
			r.DecisionID, r.Agent.ID, r.Request.Path, r.Request.Host, r.Decision.HTTPStatus = id, agent, path, host, status
			r.Agent.Owner, r.Agent.Issuer, r.Request.Source = scope, reason, tool
			switch shape % 4 {
			case 0:
				r.Agent = Agent{CertSHA256: agent}
				r.Decision.Reasons = nil
			case 1:
				r.Agent.Scopes = []string{scope, reason, ""}
				r.Decision.Reasons = []string{reason}
			case 2:
				r.Agent.Scopes = []string{}
				r.Request = Request{MCP: []MCPMessage{{Kind: "request", Method: "tools/call", Tool: tool, ArgumentsSHA256: id}, {Kind: reason, URI: path, Operation: scope}}}
			case 3:
				r.Request.MCP = []MCPMessage{{Kind: ""}}
				r.Decision.PolicyRevision = ""
			}
			r.Truncated = shape&4 != 0
			r.Decision.Allowed = shape&8 != 0
			if shape&16 != 0 {
				r.Response = &Response{Status: status, Body: reason, ContentDigest: scope, Bytes: int64(status) * 3, SignatureInput: tool, Signature: id}
			}
			if shape&32 != 0 {
				r.KeyRotation = &KeyRotation{NewKeyID: id, NewKey: agent, NoteKey: tool}
			}
			if shape&64 != 0 {
				// Data as a caller writes it: valid UTF-8, spaces to drop
				// (and no raw U+2028: go1.27's encoding/json escapes those
				// in a json.RawMessage, TestRecordDataAsGiven).
				r.Data = fmt.Appendf(nil, `{ "k" : %s , "n" : [1, 2.50] }`, jsonstring.Append(nil, reason))
			}
			return r
		}
		ref := testenv.NewJSONRef(id, agent, scope, path, host, reason, tool)
		got := appendRecordTail(nil, build(func(s string) string { return s }))
		if want := ref.Out(tailByEncodingJSON(t, build(ref.In))); !bytes.Equal(got, want) {
			t.Fatalf("appendRecordTail:\n%s\nthe rule (encoding/json, invalid bytes as \\ufffd):\n%s", got, want)
		}
		if !utf8.Valid(got) || !jsonvalid.Valid(append([]byte(`{"x":0`), got...), jsonvalid.StdMaxDepth) {
			t.Fatalf("not valid JSON in UTF-8: %s", got)
		}
	})
}

// TestRecordDataAsGiven: a record's data is written as the caller gave it,
// compacted, whatever encoding/json would escape in a json.RawMessage
// (go1.26 and go1.27 differ on U+2028); data that is not UTF-8 is refused.
func TestRecordDataAsGiven(t *testing.T) {
	r := sampleRecord(1)
	r.Kind, r.Data = "migration", []byte("{ \"a\" : \"x\u2028<&>\\u00e9\" ,\n \"b\":[1, 2.50, 1e3] }")
	want := []byte(",\"data\":{\"a\":\"x\u2028<&>\\u00e9\",\"b\":[1,2.50,1e3]},\"time\":")
	if got := appendRecordTail(nil, r); !bytes.Contains(got, want) {
		t.Fatalf("got %s\nwant it to hold %s", got, want)
	}
	o := testOptions(t)
	l, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	bad := sampleRecord(2)
	bad.Kind, bad.Data = "migration", []byte("{\"a\":\"\xff\"}")
	if _, err := l.Append(context.Background(), bad); err == nil || !strings.Contains(err.Error(), "UTF-8") {
		t.Fatalf("data with invalid UTF-8: %v, want a refusal", err)
	}
	if _, err := prepareRecord(bad); err == nil {
		t.Fatal("prepareRecord took data with invalid UTF-8")
	}
}

// TestPreparedLineInPlace: the line prepareRecord leaves room for is the
// line appendLine writes, for indices of every length, and a decision
// costs one allocation.
func TestPreparedLineInPlace(t *testing.T) {
	r := sampleRecord(1)
	r.Log = "log-1"
	for _, idx := range []uint64{0, 9, 10, 12345, 1<<64 - 1} {
		p, err := prepareRecord(r)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := p.line(idx, "log-1"), p.appendLine(nil, idx, "log-1"); !bytes.Equal(got, want) || cap(got) == len(got) {
			t.Fatalf("index %d: %s\nwant %s (cap %d)", idx, got, want, cap(got))
		}
		if got, want := p.line(idx, "another-log"), p.appendLine(nil, idx, "another-log"); !bytes.Equal(got, want) {
			t.Fatalf("another log: %s", got)
		}
	}
	testenv.SkipAllocsUnderRace(t)
	if n := testing.AllocsPerRun(100, func() {
		p, _ := prepareRecord(r)
		_ = p.line(123456789, "log-1")
	}); n != 1 {
		t.Errorf("%v allocations per record line, want 1", n)
	}
}
