package recordstore

import (
	"errors"
	"fmt"
	"testing"
)

// FuzzParseCursor: a page cursor from a client either parses into the
// three parts Find writes or is refused with ErrBadQuery.
func FuzzParseCursor(f *testing.F) {
	for _, s := range []string{"1764547200000000.41.bG9nLTAx", "0.0.", "x", "1.2.3.4", "-1.-1.AA", "99999999999999999999.1.AA"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, c string) {
		tm, log, idx, err := parseCursor(c)
		if err != nil {
			if !errors.Is(err, ErrBadQuery) {
				t.Fatalf("%q: %v is not ErrBadQuery", c, err)
			}
			return
		}
		// What parses round-trips through the writer's format.
		again := fmt.Sprintf("%d.%d.%s", tm, idx, encodeLog(log))
		t2, l2, i2, err := parseCursor(again)
		if err != nil || t2 != tm || l2 != log || i2 != idx {
			t.Fatalf("%q → %q does not round-trip: %v", c, again, err)
		}
	})
}
