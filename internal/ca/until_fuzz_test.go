package ca

import (
	"errors"
	"testing"
	"time"
)

// FuzzParseUntil: a --until is either a time strictly after now or refused
// as invalid input.
func FuzzParseUntil(f *testing.F) {
	for _, s := range []string{"2h", "30m", "-1h", "0s", "2026-11-02T00:00:00Z", "2020-01-01T00:00:00Z", "tomorrow", "", "9999999h"} {
		f.Add(s)
	}
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseUntil(s, now)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("%q: %v is not ErrInvalid", s, err)
			}
			return
		}
		if !u.After(now) {
			t.Fatalf("%q gave %v, not after now", s, u)
		}
	})
}
