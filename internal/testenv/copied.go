package testenv

import (
	"database/sql"
	"slices"
	"testing"
)

// CheckCopied fails t unless copied names every table of the SQLite
// database db, with exactly its columns, except the tables notCopied gives
// a reason for. A store's copy (control migrate-store) lists its tables and
// columns by name; this keeps a table or column added later from being
// left behind silently.
func CheckCopied(t *testing.T, db *sql.DB, copied map[string][]string, notCopied map[string]string) {
	t.Helper()
	rows, err := db.Query(`SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name`)
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, name)
	}
	if err := rows.Close(); err != nil {
		t.Fatal(err)
	}
	for _, table := range tables {
		want, ok := copied[table]
		if !ok {
			if notCopied[table] == "" {
				t.Errorf("table %s is neither copied nor said not to be", table)
			}
			continue
		}
		cols, err := db.Query(`SELECT name FROM pragma_table_info(?) ORDER BY name`, table)
		if err != nil {
			t.Fatal(err)
		}
		var have []string
		for cols.Next() {
			var c string
			if err := cols.Scan(&c); err != nil {
				t.Fatal(err)
			}
			have = append(have, c)
		}
		if err := cols.Close(); err != nil {
			t.Fatal(err)
		}
		want = slices.Sorted(slices.Values(want))
		if !slices.Equal(have, want) {
			t.Errorf("table %s has the columns %v; the copy names %v", table, have, want)
		}
	}
	for table := range copied {
		if !slices.Contains(tables, table) {
			t.Errorf("the copy names table %s, which the schema does not have", table)
		}
	}
	for table := range notCopied {
		if !slices.Contains(tables, table) {
			t.Errorf("table %s is said not to be copied, but the schema does not have it", table)
		}
	}
}
