package pgsql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
)

// copyBatch is how many rows one INSERT of CopyRows carries.
const copyBatch = 200

// Table is a table a store's copy copies (the same on SQLite and
// PostgreSQL): its name, the ORDER BY that reads its rows, its columns. All
// three are the caller's constants, put into statements as they are.
type Table struct {
	Name, Order string
	Cols        []string
}

// CopyRows streams the rows of t, in order, from src (a SQLite store's
// snapshot) into the same columns of dst (a PostgreSQL transaction),
// copyBatch rows per INSERT, never more in memory, and returns how many it
// copied.
func CopyRows(ctx context.Context, src, dst *sql.Tx, t Table) (int64, error) {
	table, order, cols := t.Name, t.Order, t.Cols
	list := strings.Join(cols, ", ")
	rows, err := src.QueryContext(ctx, `SELECT `+list+` FROM `+table+` ORDER BY `+order) //nolint:gosec // constant names
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", table, err)
	}
	defer rows.Close()
	one := "(" + strings.TrimSuffix(strings.Repeat("?, ", len(cols)), ", ") + ")"
	var n int64
	batch := make([]any, 0, copyBatch*len(cols))
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		k := len(batch) / len(cols)
		q := `INSERT INTO ` + table + ` (` + list + `) VALUES ` + strings.TrimSuffix(strings.Repeat(one+", ", k), ", ") //nolint:gosec // the caller's constant names; the values are parameters
		if _, err := dst.ExecContext(ctx, q, batch...); err != nil {
			return fmt.Errorf("write %s: %w", table, err)
		}
		n += int64(k)
		batch = batch[:0]
		return nil
	}
	vals := make([]any, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return n, fmt.Errorf("read %s: %w", table, err)
		}
		for _, v := range vals {
			if b, ok := v.([]byte); ok { // the driver may reuse it
				v = append([]byte(nil), b...)
			}
			batch = append(batch, v)
		}
		if len(batch) == cap(batch) {
			if err := flush(); err != nil {
				return n, err
			}
		}
	}
	if err := rows.Err(); err != nil {
		return n, fmt.Errorf("read %s: %w", table, err)
	}
	return n, flush()
}

// Occupied is the first of tables that holds a row, or "" when none does:
// a copy goes only into empty tables.
func Occupied(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, tables []Table) (string, error) {
	for _, t := range tables {
		var one int
		err := q.QueryRowContext(ctx, `SELECT 1 FROM `+t.Name+` LIMIT 1`).Scan(&one) //nolint:gosec // a constant table name
		switch {
		case err == nil:
			return t.Name, nil
		case !errors.Is(err, sql.ErrNoRows):
			return "", err
		}
	}
	return "", nil
}
