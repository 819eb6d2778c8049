package pgsql

import "testing"

func TestRebind(t *testing.T) {
	for in, want := range map[string]string{
		`SELECT a FROM t WHERE x = ? AND y = ?`:     `SELECT a FROM t WHERE x = $1 AND y = $2`,
		`SELECT '?' , "a?b", ? FROM t`:              `SELECT '?' , "a?b", $1 FROM t`,
		`DO $$ BEGIN PERFORM '?'; END $$; SELECT ?`: `DO $$ BEGIN PERFORM '?'; END $$; SELECT $1`,
		`no placeholders`:                           `no placeholders`,
	} {
		if got := rebind(in); got != want {
			t.Errorf("rebind(%q) = %q, want %q", in, got, want)
		}
	}
}
