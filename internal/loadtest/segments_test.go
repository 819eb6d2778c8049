package loadtest

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
)

// TestReadSegments reads the decision log's own segment counter, so a
// renamed metric fails here rather than silently reporting zero.
func TestReadSegments(t *testing.T) {
	reg := prometheus.NewRegistry()
	dir := t.TempDir()
	l, err := decisionlog.Open(decisionlog.Options{
		Dir: filepath.Join(dir, "log"), KeyDir: filepath.Join(dir, "keys"), Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	rec := &decisionlog.Record{DecisionID: "d1", Time: time.Now()}
	if _, err := l.Append(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	var st ServerStats
	readSegments(reg, &st)
	// A new log's first segment is appended to: nothing was prepared yet.
	if st.SegmentsAppended != 1 || st.SegmentsPreallocated != 0 {
		t.Fatalf("segments: %d appended, %d preallocated; want 1, 0", st.SegmentsAppended, st.SegmentsPreallocated)
	}
	if st.LogFlushes != 1 {
		t.Fatalf("log flushes %d after one sync append, want 1", st.LogFlushes)
	}
}
