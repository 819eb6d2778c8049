package ca

import (
	"context"
	"errors"
	"testing"

	"github.com/agentauthz/agentauthz/internal/testenv"
)

// TestCopyInventoryRefusesDamagedSource: a source whose change log does not
// verify is not copied, and the destination is left without a row; the
// source is copied once it is whole, and a second copy into the filled
// destination is refused with ErrDestinationNotEmpty. (internal/cli
// TestMigrateStore checks what a copy holds.)
func TestCopyInventoryRefusesDamagedSource(t *testing.T) {
	ctx := context.Background()
	a, _ := newTestAuthority(t)
	if _, err := a.Issue(issueReq("bot-1")); err != nil {
		t.Fatal(err)
	}
	dsn := pgShared.Database(t)
	// Rewrite one row's detail behind the log's back, then put it back.
	set := func(detail string) {
		t.Helper()
		for _, q := range []string{`DROP TRIGGER events_append_only_update`,
			`UPDATE events SET detail = ? WHERE seq = 1`,
			`CREATE TRIGGER events_append_only_update BEFORE UPDATE ON events BEGIN SELECT RAISE(ABORT, 'events are append-only'); END`} {
			args := []any{}
			if q[0] == 'U' {
				args = append(args, detail)
			}
			if _, err := a.db.Exec(q, args...); err != nil {
				t.Fatal(err)
			}
		}
	}
	var orig string
	if err := a.db.QueryRow(`SELECT detail FROM events WHERE seq = 1`).Scan(&orig); err != nil {
		t.Fatal(err)
	}
	set(orig + " (forged)")
	if _, err := CopyInventory(ctx, a.DataDir(), dsn); err == nil {
		t.Fatal("a source with a modified change-log row was copied")
	}
	dst, err := Open(a.DataDir(), WithStore(dsn))
	if err != nil {
		t.Fatal(err)
	}
	if err := dst.checkEmpty(ctx, dst.db); err != nil {
		t.Errorf("the destination after a refused copy: %v", err)
	}
	dst.Close()

	set(orig)
	res, err := CopyInventory(ctx, a.DataDir(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := ChangeLogKeys(a.DataDir())
	if err != nil {
		t.Fatal(err)
	}
	want, err := a.VerifyChangeLog(keys...)
	if err != nil || want.Problem != nil {
		t.Fatal(err, want.Problem)
	}
	if res.ChangeLog.Head != want.Head || res.ChangeLog.Events != want.Events || res.ChangeLog.Events == 0 {
		t.Errorf("copied change log %+v, the source's %+v", res.ChangeLog, want)
	}
	if _, err := CopyInventory(ctx, a.DataDir(), dsn); !errors.Is(err, ErrDestinationNotEmpty) {
		t.Errorf("a second copy: %v, want ErrDestinationNotEmpty", err)
	}
}

// TestCopyNamesEveryColumn: CopyInventory's table list names every column
// of the inventory's tables, and every table it leaves out says why.
func TestCopyNamesEveryColumn(t *testing.T) {
	a, _ := newTestAuthority(t)
	copied := map[string][]string{}
	for _, tb := range inventoryTables {
		copied[tb.Name] = tb.Cols
	}
	testenv.CheckCopied(t, a.db, copied, map[string]string{
		"meta":             "its one row, the revocation generation, is copied by itself",
		"console_links":    "sign-in state: users sign in again",
		"console_sessions": "sign-in state: users sign in again",
		"console_oidc":     "sign-in state: users sign in again",
		"console_keys":     "made again by the first instance that needs one",
	})
}
