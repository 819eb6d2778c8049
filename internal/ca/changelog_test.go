package ca

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/testenv"
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

// A row as a go1.26 agentauthz signed it on SQLite, from a --reason with
// invalid UTF-8 (then accepted): the stored detail holds the raw bytes, the
// signed object holds \ufffd for each. Key: the Ed25519 seed of 32 bytes
// 0x26 (kid a82ecbc264095147). These bytes are history: never regenerate
// them.
const (
	legacyInvalidDetail = "reason=INC-1 \xff<caf\xe9> & \xe2\x80"
	legacyInvalidObject = `{"seq":1,"at":"2026-11-01T12:00:00.000000Z","tenant":"acme.example","agent_id":"bot","serial":"","event":"lift","operator":"carol (responder)","detail":"reason=INC-1 \ufffd\u003ccaf\ufffd\u003e \u0026 \ufffd\ufffd","prev":""}`
	legacyInvalidHash   = "0240637e2b1b740feaa24d477ac568d837e9da1f8eed44a417a3c784bceaa80a"
	legacyInvalidSig    = "NwtBq9ZmG9CidLYze5z9kt8_46abBAVhvM-PvLUoCwD9FzE4M7EYeslSadCwDaEZl-FyOy5ForAa88Q_VnmiBw"
)

// TestChangeLogRowBytesPinned: a change-log row is encoded again when it
// is verified, so its bytes must not move with the toolchain (go1.27's
// encoding/json writes invalid UTF-8 as a raw U+FFFD). A row signed by a
// go1.26 build over invalid UTF-8 still verifies, later rows chain onto
// it, and a new row with invalid UTF-8 is refused.
func TestChangeLogRowBytesPinned(t *testing.T) {
	r := ChangeRecord{Seq: 1, At: "2026-11-01T12:00:00.000000Z", Tenant: td, AgentID: "bot", Event: "lift",
		Operator: "carol (responder)", Detail: legacyInvalidDetail}
	if got := r.bytes(); string(got) != legacyInvalidObject {
		t.Fatalf("row bytes\n got %s\nwant %s", got, legacyInvalidObject)
	}
	if r.hash() != legacyInvalidHash {
		t.Fatalf("hash %s, want %s", r.hash(), legacyInvalidHash)
	}

	// The legacy row in a SQLite inventory, signed by the fixed key.
	c := &clock{t: time.Date(2026, 11, 2, 12, 0, 0, 0, time.UTC)}
	a, err := Open(t.TempDir(), WithClock(c.now))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{0x26}, ed25519.SeedSize))
	dir := filepath.Join(a.DataDir(), changeLogDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, changeLogKeyFile), []byte(base64.StdEncoding.EncodeToString(key.Seed())+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pub := key.Public().(ed25519.PublicKey)
	if _, err := a.db.Exec(`INSERT INTO events (seq, at, tenant, agent_id, serial, event, operator, detail, prev, hash, kid, sig)
		VALUES (1, ?, ?, 'bot', '', 'lift', 'carol (responder)', ?, '', ?, ?, ?)`,
		r.At, td, legacyInvalidDetail, legacyInvalidHash, KeyID(pub), legacyInvalidSig); err != nil {
		t.Fatal(err)
	}
	var stored string
	if err := a.db.QueryRow(`SELECT detail FROM events WHERE seq = 1`).Scan(&stored); err != nil || stored != legacyInvalidDetail {
		t.Fatalf("SQLite gave back %q (%v), want the raw bytes", stored, err)
	}
	if _, err := a.Init(InitRequest{TrustDomain: td, Operator: "alice"}); err != nil {
		t.Fatal(err)
	}
	res, err := a.VerifyChangeLog(pub)
	if err != nil || res.Problem != nil || res.Signed != 2 || res.Unsigned != 0 {
		t.Fatalf("the go1.26 row and the next: %+v %v", res, err)
	}

	// New rows: invalid UTF-8 is refused at the boundary, and by addEvent
	// for any caller; nothing is written.
	if _, err := a.Issue(issueReq("bot")); err != nil {
		t.Fatal(err)
	}
	before, _ := a.VerifyChangeLog(pub)
	for name, f := range map[string]func() error{
		"restrict reason": func() error {
			_, err := a.Restrict(RestrictRequest{TrustDomain: td, AgentID: "bot", Quarantine: true, Reason: "INC-\xff", Operator: "carol"})
			return err
		},
		"lift reason": func() error { return a.Lift(td, "bot", "done \xe2\x80", "carol") },
		"operator":    func() error { return a.RecordEvent(td, "bot", "", "note", "b\xffb", "x") },
		"detail":      func() error { return a.RecordEvent(td, "bot", "", "note", "bob", "x\xff") },
		"addEvent": func() error {
			return a.tx(context.Background(), func(tx *sql.Tx) error {
				return a.addEvent(tx, c.now(), td, "b\xffot", "", "note", "bob", "x")
			})
		},
	} {
		if err := f(); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "UTF-8") {
			t.Errorf("%s with invalid UTF-8: %v, want ErrInvalid naming UTF-8", name, err)
		}
	}
	after, err := a.VerifyChangeLog(pub)
	if err != nil || after.Problem != nil || after.LastSeq != before.LastSeq {
		t.Fatalf("after the refusals: %+v %v (before: seq %d)", after, err, before.LastSeq)
	}
}

// FuzzChangeRecordBytes: a row's bytes are encoding/json's (go1.26: HTML
// escaped, invalid UTF-8 as \ufffd) for any strings, on any toolchain (the
// reference stands in for invalid bytes, testenv.JSONRef).
func FuzzChangeRecordBytes(f *testing.F) {
	f.Add(int64(1), "2026-11-01T12:00:00.000000Z", td, "bot", "1f", "lift", "carol (responder)", "reason=INC-1", "")
	f.Add(int64(-9), "\xff", "<&>", "\u2028\u2029", "\x00\x1f\x7f", "\"\\", "é\ufffd", legacyInvalidDetail, "\xe2\x80")
	f.Fuzz(func(t *testing.T, seq int64, at, tenant, agent, serial, event, operator, detail, prev string) {
		ref := testenv.NewJSONRef(at, tenant, agent, serial, event, operator, detail, prev)
		in := ref.In
		want, err := json.Marshal(ChangeRecord{Seq: seq, At: in(at), Tenant: in(tenant), AgentID: in(agent), Serial: in(serial),
			Event: in(event), Operator: in(operator), Detail: in(detail), Prev: in(prev)})
		if err != nil {
			t.Fatal(err)
		}
		r := ChangeRecord{Seq: seq, At: at, Tenant: tenant, AgentID: agent, Serial: serial, Event: event, Operator: operator, Detail: detail, Prev: prev}
		if got := r.bytes(); !bytes.Equal(got, ref.Out(want)) {
			t.Fatalf("row bytes\n got %s\nwant %s", got, ref.Out(want))
		}
	})
}

// TestFinishRotationRace: the control plane and the CLI that rotated may both
// finish installing the same key at once (they share the data directory);
// every one of them succeeds and the new key ends up installed exactly.
func TestFinishRotationRace(t *testing.T) {
	for round := 0; round < 20; round++ {
		dir := t.TempDir()
		_, oldKey, _ := ed25519.GenerateKey(nil)
		newPub, newKey, _ := ed25519.GenerateKey(nil)
		seed := func(k ed25519.PrivateKey) []byte { return []byte(base64.StdEncoding.EncodeToString(k.Seed()) + "\n") }
		want := KeyID(newPub)
		if err := os.WriteFile(filepath.Join(dir, changeLogKeyFile), seed(oldKey), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, changeLogNextPrefix+want), seed(newKey), 0o600); err != nil {
			t.Fatal(err)
		}
		errs := make(chan error, 4)
		for range 4 {
			go func() { errs <- finishRotation(dir, want) }()
		}
		for range 4 {
			if err := <-errs; err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		cur, err := readSeedFile(filepath.Join(dir, changeLogKeyFile))
		if err != nil || KeyID(cur.Public().(ed25519.PublicKey)) != want {
			t.Fatalf("round %d: installed key %v", round, err)
		}
		if _, err := os.Stat(filepath.Join(dir, changeLogRetiredDir, KeyID(oldKey.Public().(ed25519.PublicKey))+".pub")); err != nil {
			t.Fatalf("round %d: retired public key: %v", round, err)
		}
	}
}
