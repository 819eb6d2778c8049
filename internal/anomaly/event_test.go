package anomaly

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
)

func lineSeeds() [][]byte {
	at := time.Date(2026, 12, 7, 21, 0, 0, 123456000, time.UTC)
	recs := []decisionlog.Record{
		{DecisionID: "d1", Time: at, Log: "replica-1", Agent: decisionlog.Agent{ID: "bot", SPIFFEID: "spiffe://acme.test/agent/bot", Tenant: "acme.test",
			CertSHA256: "ab12", Source: "peer_certificate", Scopes: []string{"payments:read"}},
			Request:  decisionlog.Request{Method: "GET", Host: "api", Path: "/v1/payments/12345", Operation: "payments:read", Source: "10.1.2.3:4000"},
			Decision: decisionlog.Decision{Allowed: true, HTTPStatus: 200, Reasons: []string{"allowed"}}},
		{DecisionID: "d2", Time: at, Log: "replica-1", Agent: decisionlog.Agent{CertSHA256: "cd34", Issuer: "CN=Forged CA"},
			Request:  decisionlog.Request{Method: "POST", Path: "/v1/payments", Source: "[2001:db8::1]:443"},
			Decision: decisionlog.Decision{HTTPStatus: 403, Reasons: []string{"untrusted_issuer"}}},
		{DecisionID: "d3", Time: at, Log: "replica-1", Kind: decisionlog.KindKeyRotation,
			KeyRotation: &decisionlog.KeyRotation{NewKeyID: "k", NewKey: "x"}},
		{DecisionID: "d4", Time: at, Log: "replica-2", Kind: decisionlog.KindDecision, Agent: decisionlog.Agent{ID: "no-spiffe"}},
	}
	var out [][]byte
	for i := range recs {
		b, err := json.Marshal(recs[i])
		if err != nil {
			panic(err)
		}
		out = append(out, b)
	}
	return out
}

// checkFromLine: FromLine reads a line as FromRecord reads the decoded
// record, or refuses it.
func checkFromLine(t *testing.T, line []byte) {
	t.Helper()
	got, gotOK, err := FromLine(line)
	var r decisionlog.Record
	rerr := json.Unmarshal(line, &r)
	if err != nil || rerr != nil {
		return // what one refuses the other may read; the store holds verified records only
	}
	want, wantOK := FromRecord(&r)
	if gotOK != wantOK || got != want {
		t.Fatalf("line %s:\nFromLine   %+v %v\nFromRecord %+v %v", line, got, gotOK, want, wantOK)
	}
}

func TestFromLineMatchesFromRecord(t *testing.T) {
	for _, l := range lineSeeds() {
		if _, _, err := FromLine(l); err != nil {
			t.Errorf("%s: %v", l, err)
		}
		checkFromLine(t, l)
	}
}

func FuzzFromLine(f *testing.F) {
	for _, l := range lineSeeds() {
		f.Add(l)
	}
	f.Fuzz(checkFromLine)
}
