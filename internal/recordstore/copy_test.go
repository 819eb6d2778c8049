package recordstore

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/agentauthz/agentauthz/internal/testenv"
)

// TestCopyNamesEveryColumn: CopyTo's table list names every column of the
// record store's tables, and every table it leaves out says why.
// (internal/cli TestMigrateStore checks what a copy holds.)
func TestCopyNamesEveryColumn(t *testing.T) {
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "records.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	copied := map[string][]string{}
	for _, tb := range copiedTables {
		copied[tb.Name] = tb.Cols
	}
	rebuilt := "a rollup, rebuilt from the copied records"
	testenv.CheckCopied(t, s.db, copied, map[string]string{
		"schema_version":      "the destination's own",
		"rollup_fleet_minute": rebuilt, "rollup_fleet_hour": rebuilt, "rollup_agent_minute": rebuilt,
		"rollup_agent_day": rebuilt, "rollup_windows": rebuilt, "rollup_window_counts": rebuilt,
	})
}
