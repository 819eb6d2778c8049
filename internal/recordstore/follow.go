package recordstore

import (
	"context"
	"fmt"
)

// Since returns up to limit stored records of log from index from on, in
// index order: how a reader that keeps its own cursor per log (the anomaly
// detector) follows the store. Only Log, Index and Line are set: the
// caller decodes what it reads of the (verified) line.
func (s *Store) Since(ctx context.Context, log string, from uint64, limit int) ([]Stored, error) {
	if limit <= 0 || limit > MaxLimit {
		return nil, fmt.Errorf("%w: limit %d outside 1..%d", ErrBadQuery, limit, MaxLimit)
	}
	rows, err := s.db.QueryContext(ctx, `SELECT idx, line FROM records WHERE log = ? AND idx >= ? ORDER BY idx LIMIT ?`,
		log, int64(from), limit)
	if err != nil {
		return nil, s.wrap(err)
	}
	defer rows.Close()
	var out []Stored
	for rows.Next() {
		st := Stored{Log: log}
		var idx int64
		if err := rows.Scan(&idx, &st.Line); err != nil {
			return nil, s.wrap(err)
		}
		st.Index = uint64(idx)
		out = append(out, st)
	}
	return out, s.wrap(rows.Err())
}
