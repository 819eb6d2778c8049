package ca

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
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

// legacyRows is how many unsigned rows changedAuthority writes first: only
// SQLite inventories are old enough to have them.
func legacyRows(be backend) int64 {
	if be.dsn != "" {
		return 0
	}
	return 2
}

// changedAuthority has two unsigned rows from before signing (SQLite), then
// a CA, an agent, a restriction and its lift.
func changedAuthority(t *testing.T, be backend) (*Authority, ed25519.PublicKey, *ChangeLogResult) {
	t.Helper()
	c := &clock{t: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)}
	a, err := be.open(t.TempDir(), WithClock(c.now))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	// Rows from before the change log was signed.
	for i := range legacyRows(be) {
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
	if res.Unsigned != legacyRows(be) || res.Signed < 4 || res.Events != res.LastSeq {
		t.Fatalf("counts: %+v", res)
	}
	return a, pub, res
}

func TestChangeLogSignedAndTamperEvident(t *testing.T) {
	eachBackend(t, testChangeLogSignedAndTamperEvident)
}

func testChangeLogSignedAndTamperEvident(t *testing.T, be backend) {
	a, _, res := changedAuthority(t, be)
	first := legacyRows(be) + 1 // the first signed row
	// The triggers stop SQL writers; someone with the file drops them.
	if _, err := a.db.Exec(`UPDATE events SET detail = 'x' WHERE seq = 3`); err == nil {
		t.Fatal("append-only trigger did not fire")
	}
	other, _, _ := ed25519.GenerateKey(rand.Reader)
	if got, _ := a.VerifyChangeLog(other); got.Problem == nil || got.Problem.Kind != "unknown_key" || got.Problem.Seq != first {
		t.Errorf("other key: %+v", got.Problem)
	}
	type tamper struct {
		name string
		sql  string
		seq  int64
		kind string
	}
	cases := []tamper{
		{"reason rewritten", `UPDATE events SET detail = 'reason=nothing happened' WHERE event = 'lift'`, res.LastSeq, "modified"},
		{"operator rewritten", `UPDATE events SET operator = 'mallory' WHERE event = 'restrict'`, res.LastSeq - 1, "modified"},
		{"row deleted", fmt.Sprintf(`DELETE FROM events WHERE seq = %d`, first+1), first + 1, "missing"},
	}
	if legacyRows(be) > 0 {
		cases = append(cases, tamper{"legacy row changed", `UPDATE events SET detail = 'forged' WHERE seq = 1`, first, "modified"})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, pub, _ := changedAuthority(t, be.fresh(t))
			drop := `DROP TRIGGER events_append_only_update; DROP TRIGGER events_append_only_delete`
			if be.dsn != "" {
				drop = `DROP TRIGGER events_append_only_update ON events`
			}
			if _, err := a.db.Exec(drop); err != nil {
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

// TestChangeLogKeyRotation: a rotation is a signed row; the log verifies
// across it from the first key alone or from the data directory's keys;
// the retired key may sign nothing more; a crash between the commit and the
// key files is finished by the next change.
func TestChangeLogKeyRotation(t *testing.T) { eachBackend(t, testChangeLogKeyRotation) }

func testChangeLogKeyRotation(t *testing.T, be backend) {
	a, first, _ := changedAuthority(t, be)
	rot, err := a.RotateChangeLogKey("alice (admin)", "yearly rotation")
	if err != nil {
		t.Fatal(err)
	}
	if rot.OldKID != KeyID(first) || rot.NewKID == rot.OldKID {
		t.Fatalf("rotation %+v, first key %s", rot, KeyID(first))
	}
	if _, err := a.Issue(issueReq("bot-2")); err != nil {
		t.Fatal(err)
	}
	keys, err := ChangeLogKeys(a.DataDir())
	if err != nil || len(keys) != 2 || KeyID(keys[0]) != rot.NewKID {
		t.Fatalf("data directory keys %d %v", len(keys), err)
	}
	for name, trusted := range map[string][]ed25519.PublicKey{"first key": {first}, "data directory": keys} {
		res, err := a.VerifyChangeLog(trusted...)
		if err != nil || res.Problem != nil || len(res.Keys) != 2 || res.Keys[1] != rot.NewKID {
			t.Fatalf("%s: %+v %v", name, res, err)
		}
	}
	if res, _ := a.VerifyChangeLog(keys[0]); res.Problem == nil || res.Problem.Kind != "unknown_key" {
		t.Fatalf("the new key alone vouches for older rows: %+v", res.Problem)
	}
	d, _ := a.Show(td, "bot-2")
	if len(d.Events) != 1 {
		t.Fatalf("events %+v", d.Events)
	}

	// The retired key signing after the rotation is refused.
	t.Run("retired key signs", func(t *testing.T) {
		b, first, _ := changedAuthority(t, be.fresh(t))
		old, err := readSeedFile(filepath.Join(b.DataDir(), changeLogDir, changeLogKeyFile))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.RotateChangeLogKey("alice (admin)", "test"); err != nil {
			t.Fatal(err)
		}
		// Someone with the old key (and the database) appends a row.
		b.ck.s = &changeSigner{key: old, kid: KeyID(first)}
		forged := b.tx(context.Background(), func(tx *sql.Tx) error {
			var last int64
			var h string
			if err := tx.QueryRow(`SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1`).Scan(&last, &h); err != nil {
				return err
			}
			r := ChangeRecord{Seq: last + 1, At: fmtEvent(time.Now()), Tenant: td, Event: "lift", Operator: "mallory", Prev: h}
			_, err := tx.Exec(`INSERT INTO events (seq, at, tenant, agent_id, serial, event, operator, detail, prev, hash, kid, sig)
				VALUES (?, ?, ?, '', '', ?, ?, '', ?, ?, ?, ?)`, r.Seq, r.At, r.Tenant, r.Event, r.Operator, r.Prev, r.hash(), KeyID(first),
				base64.RawURLEncoding.EncodeToString(ed25519.Sign(old, r.bytes())))
			return err
		})
		if forged != nil {
			t.Fatal(forged)
		}
		res, err := b.VerifyChangeLog(first)
		if err != nil || res.Problem == nil || res.Problem.Kind != "retired_key" {
			t.Fatalf("old key after rotation: %+v %v", res, err)
		}
	})

	t.Run("crash before the key files", func(t *testing.T) {
		be := be.fresh(t)
		b, first, _ := changedAuthority(t, be)
		dir := filepath.Join(b.DataDir(), changeLogDir)
		oldKey, _ := os.ReadFile(filepath.Join(dir, changeLogKeyFile))
		oldPub, _ := os.ReadFile(filepath.Join(dir, changeLogPubFile))
		rot, err := b.RotateChangeLogKey("alice (admin)", "test")
		if err != nil {
			t.Fatal(err)
		}
		// Undo the file step as if the process had died after the commit.
		nid := rot.NewKID
		if err := os.Rename(filepath.Join(dir, changeLogKeyFile), filepath.Join(dir, changeLogNextPrefix+nid)); err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(filepath.Join(dir, changeLogRetiredDir)); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, changeLogKeyFile), oldKey, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, changeLogPubFile), oldPub, 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := be.open(b.DataDir())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Issue(issueReq("bot-3")); err != nil {
			t.Fatal(err)
		}
		if res, err := c.VerifyChangeLog(first); err != nil || res.Problem != nil {
			t.Fatalf("after the finished rotation: %+v %v", res, err)
		}
		if keys, _ := ChangeLogKeys(b.DataDir()); len(keys) != 2 || KeyID(keys[0]) != nid {
			t.Fatal("the pending key was not installed")
		}
	})
}
