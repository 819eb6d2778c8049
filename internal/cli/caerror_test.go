package cli

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/agentauthz/agentauthz/internal/ca"
)

// TestCAErrorHints checks that each inventory failure an operator can act
// on gets the hint that says what to do, and keeps the error it wraps.
func TestCAErrorHints(t *testing.T) {
	for _, tc := range []struct {
		err  error
		hint string
	}{
		{fmt.Errorf("issue: %w", ca.ErrStoreBusy), "another agentauthz process is writing to /data"},
		{fmt.Errorf("open: %w", ca.ErrCorruptStore), "restore /data/inventory.db from a backup"},
		{fmt.Errorf("open: %w", ca.ErrNoStore), "agentauthz ca init"},
		{fmt.Errorf("agent: %w", ca.ErrNotFound), "agentauthz ca list"},
	} {
		err := caError(tc.err, "/data")
		var he hintError
		if !errors.As(err, &he) || !strings.Contains(he.hint, tc.hint) {
			t.Errorf("caError(%v): hint %q, want one containing %q", tc.err, he.hint, tc.hint)
		}
		if !errors.Is(err, tc.err) {
			t.Errorf("caError(%v) lost the error it wraps: %v", tc.err, err)
		}
	}
}
