package alerts

import (
	"path/filepath"
	"testing"

	"github.com/agentauthz/agentauthz/internal/testenv"
)

// TestCopyNamesEveryColumn: CopyTo's table list names every column of the
// alert store's tables, and every table it leaves out says why.
// (internal/cli TestMigrateStore checks what a copy holds.)
func TestCopyNamesEveryColumn(t *testing.T) {
	d, err := openDB(filepath.Join(t.TempDir(), "alerts.db"), "")
	if err != nil {
		t.Fatal(err)
	}
	defer d.sql.Close()
	copied := map[string][]string{}
	for _, tb := range copiedTables {
		copied[tb.Name] = tb.Cols
	}
	testenv.CheckCopied(t, d.sql, copied, map[string]string{
		"lease": "the first instance on the destination takes a new one",
	})
}
