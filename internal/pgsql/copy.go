package pgsql

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
)

// copyBatch is how many rows one INSERT of CopyRows carries.
const copyBatch = 200

// CopyRows streams the rows of table, in order, from src (a SQLite store's
// snapshot) into the same columns of dst (a PostgreSQL transaction),
// copyBatch rows per INSERT, never more in memory, and returns how many it
// copied. table, order and cols are the caller's constants, put into the
// statements as they are.
func CopyRows(ctx context.Context, src, dst *sql.Tx, table, order string, cols []string) (int64, error) {
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
