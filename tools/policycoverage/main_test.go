package main

import (
	"io"
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	for _, tc := range []struct {
		in, min string
		ok      bool
	}{
		{`{"files":{"a.rego":{"coverage":95}},"coverage":95}`, "90", true},
		{`{"files":{"a.rego":{"coverage":80}},"coverage":80}`, "90", false},
		{`{"files":{},"coverage":0}`, "0", false},
		{`not json`, "90", false},
	} {
		err := run(strings.NewReader(tc.in), io.Discard, []string{"-min", tc.min})
		if (err == nil) != tc.ok {
			t.Errorf("run(%s, -min %s) = %v, want ok=%v", tc.in, tc.min, err, tc.ok)
		}
	}
}
