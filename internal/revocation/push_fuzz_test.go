package revocation

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/testca"
)

// FuzzVerifyPush: a watch event's data, as any server could send it, is
// accepted only when it is exactly what the tenant's CA signed; anything
// else is refused with one of the documented reasons, without panicking.
func FuzzVerifyPush(f *testing.F) {
	ca := testca.New(f)
	now := time.Unix(1_800_000_000, 0)
	good := WatchEvent{Generation: 3, Tenant: td, CRL: []byte{1, 2}, RevokedAgents: []string{"bot-a"},
		Restrictions: json.RawMessage(`{"bot-b":{"quarantined":true}}`), Expires: now.Add(time.Minute).Unix()}
	sig, err := SignPush(ca.Key, PushMessage(&good))
	if err != nil {
		f.Fatal(err)
	}
	good.Signature = sig
	seed, _ := json.Marshal(good)
	f.Add(seed)
	f.Add([]byte(`{"generation":1,"tenant":"example.test","revoked_agents":[],"expires":1,"signature":""}`))
	f.Add([]byte(`{"restrictions":[1],"signature":"AAAA"}`))
	cas := []*x509.Certificate{ca.Cert}
	f.Fuzz(func(t *testing.T, data []byte) {
		var ev WatchEvent
		if json.Unmarshal(data, &ev) != nil {
			return
		}
		err := VerifyPush(cas, &ev, now)
		if err == nil {
			// Accepted: it must carry exactly the signed state.
			if ev.Tenant != good.Tenant || ev.Generation != good.Generation || ev.Expires != good.Expires ||
				string(PushMessage(&ev)) != string(PushMessage(&good)) {
				t.Fatalf("accepted an event that differs from the signed one: %s", data)
			}
			return
		}
		var pe *PushError
		if !errors.As(err, &pe) {
			t.Fatalf("error %v is not a PushError", err)
		}
		switch pe.Reason {
		case PushUnsigned, PushBadSignature, PushExpired, PushBadRestriction:
		default:
			t.Fatalf("undocumented reason %q", pe.Reason)
		}
	})
}
