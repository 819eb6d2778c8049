package recordstore

import (
	"context"
	"fmt"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
)

// Since returns up to limit stored records of log from index from on, in
// index order: how a reader that keeps its own cursor per log (the anomaly
// detector) follows the store.
func (s *Store) Since(ctx context.Context, log string, from uint64, limit int) ([]Stored, error) {
	if limit <= 0 || limit > MaxLimit {
		return nil, fmt.Errorf("%w: limit %d outside 1..%d", ErrBadQuery, limit, MaxLimit)
	}
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT idx, line FROM records WHERE log = ? AND idx >= ? ORDER BY idx LIMIT ?`),
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
		// Stored records were verified on the way in.
		if st.Record, err = decisionlog.DecodeRecordLine([]byte(st.Line)); err != nil {
			return nil, s.wrap(fmt.Errorf("stored record %s/%d: %w", log, st.Index, err))
		}
		out = append(out, st)
	}
	return out, s.wrap(rows.Err())
}
