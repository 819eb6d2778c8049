package ca

import (
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"testing"
	"time"
)

func changeLogKey(t *testing.T, a *Authority) ed25519.PublicKey {
	t.Helper()
	b, err := os.ReadFile(ChangeLogKeyPath(a.DataDir()))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ParseChangeLogKey(b)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// changedAuthority has two unsigned rows from before signing, then a CA,
// an agent, a restriction and its lift.
func changedAuthority(t *testing.T) (*Authority, ed25519.PublicKey, *ChangeLogResult) {
	t.Helper()
	c := &clock{t: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)}
	a, err := Open(t.TempDir(), WithClock(c.now))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	// Rows from before the change log was signed.
	for i := range 2 {
		if _, err := a.db.Exec(`INSERT INTO events (at, tenant, event, operator, detail) VALUES (?, 'old.test', 'legacy', 'bob', ?)`,
			fmtEvent(c.t), i); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Init(InitRequest{TrustDomain: td, Operator: "alice"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Issue(issueReq("bot")); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Restrict(RestrictRequest{TrustDomain: td, AgentID: "bot", Quarantine: true, Reason: "INC-1", Operator: "carol (responder)"}); err != nil {
		t.Fatal(err)
	}
	if err := a.Lift(td, "bot", "INC-1 closed", "carol (responder)"); err != nil {
		t.Fatal(err)
	}
	pub := changeLogKey(t, a)
	res, err := a.VerifyChangeLog(pub)
	if err != nil || res.Problem != nil {
		t.Fatalf("intact log: %+v %v", res, err)
	}
	if res.Unsigned != 2 || res.Signed < 4 || res.Events != res.LastSeq {
		t.Fatalf("counts: %+v", res)
	}
	return a, pub, res
}

func TestChangeLogSignedAndTamperEvident(t *testing.T) {
	a, _, res := changedAuthority(t)
	// The triggers stop SQL writers; someone with the file drops them.
	if _, err := a.db.Exec(`UPDATE events SET detail = 'x' WHERE seq = 3`); err == nil {
		t.Fatal("append-only trigger did not fire")
	}
	other, _, _ := ed25519.GenerateKey(rand.Reader)
	if got, _ := a.VerifyChangeLog(other); got.Problem == nil || got.Problem.Kind != "unknown_key" || got.Problem.Seq != 3 {
		t.Errorf("other key: %+v", got.Problem)
	}
	for _, tc := range []struct {
		name string
		sql  string
		seq  int64
		kind string
	}{
		{"legacy row changed", `UPDATE events SET detail = 'forged' WHERE seq = 1`, 3, "modified"},
		{"reason rewritten", `UPDATE events SET detail = 'reason=nothing happened' WHERE event = 'lift'`, res.LastSeq, "modified"},
		{"operator rewritten", `UPDATE events SET operator = 'mallory' WHERE event = 'restrict'`, res.LastSeq - 1, "modified"},
		{"row deleted", `DELETE FROM events WHERE seq = 4`, 4, "missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, pub, _ := changedAuthority(t)
			if _, err := a.db.Exec(`DROP TRIGGER events_append_only_update; DROP TRIGGER events_append_only_delete`); err != nil {
				t.Fatal(err)
			}
			if _, err := a.db.Exec(tc.sql); err != nil {
				t.Fatal(err)
			}
			got, err := a.VerifyChangeLog(pub)
			if err != nil || got.Problem == nil || got.Problem.Seq != tc.seq || got.Problem.Kind != tc.kind {
				t.Errorf("got %+v %v, want %s at %d", got.Problem, err, tc.kind, tc.seq)
			}
		})
	}
}
