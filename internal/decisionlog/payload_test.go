package decisionlog

import (
	"bytes"
	"testing"
	"time"
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

func TestPreparedRecordMatchesMarshalJSON(t *testing.T) {
	for _, r := range samplePayloadRecords() {
		checkPrepared(t, r)
	}
}

func checkPrepared(t *testing.T, r Record) {
	t.Helper()
	want, err := r.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	p, err := prepareRecord(&r)
	if err != nil {
		t.Fatal(err)
	}
	got := p.appendPayload([]byte("scratch"), r.Seq, r.Log, r.KeyID, r.Prev)
	if !bytes.Equal(got[len("scratch"):], want) {
		t.Fatalf("prepared payload differs from MarshalJSON:\n got %s\nwant %s", got[len("scratch"):], want)
	}
}

// FuzzPreparedRecord: the spliced payload is always MarshalJSON's bytes.
func FuzzPreparedRecord(f *testing.F) {
	for _, r := range samplePayloadRecords() {
		f.Add(r.Seq, r.DecisionID, r.Log, r.KeyID, r.Prev, r.Agent.ID, r.Request.Path, r.Time.UnixNano(), r.Decision.Allowed)
	}
	f.Fuzz(func(t *testing.T, seq uint64, id, log, kid, prev, agent, path string, at int64, allowed bool) {
		checkPrepared(t, Record{Seq: seq, DecisionID: id, Log: log, KeyID: kid, Prev: prev, Time: time.Unix(0, at),
			Agent: Agent{ID: agent, Scopes: []string{agent, path}}, Request: Request{Path: path},
			Decision: Decision{Allowed: allowed, Reasons: []string{path}}})
	})
}
