package simrun

import (
	"strings"
	"testing"
	"time"
)

func sample() *Run {
	return &Run{Revision: `bundle "v2" 2026-12-07`, From: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC),
		First: time.Date(2026, 12, 1, 0, 0, 0, 12_000, time.UTC), Last: time.Date(2026, 12, 7, 23, 59, 59, 998_000_000, time.UTC),
		Read: 1200, Replayed: 1180, Unchanged: 1168, NewlyAllowed: 2, NewlyDenied: 10, NotReplayed: 19, Malformed: 1,
		Uncertain: true, Gate: GateAccepted, ReportSHA256: strings.Repeat("9c", 32)}
}

func TestDetailRoundTrip(t *testing.T) {
	r := sample()
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	d := r.Detail()
	want := `revision="bundle \"v2\" 2026-12-07" from=2026-12-01T00:00:00Z to=- first=2026-12-01T00:00:00.000012Z last=2026-12-07T23:59:59.998Z ` +
		`read=1200 replayed=1180 unchanged=1168 newly_allowed=2 newly_denied=10 changed=0 not_replayed=19 malformed=1 uncertain=true gate=accepted report_sha256=` + strings.Repeat("9c", 32)
	if d != want {
		t.Fatalf("detail\n%s\nwant\n%s", d, want)
	}
	if len(d) > 1024 {
		t.Fatalf("detail of %d bytes: the change log takes 1024", len(d))
	}
	back, err := Parse(d)
	if err != nil {
		t.Fatal(err)
	}
	if *back != *r {
		t.Fatalf("parsed %+v, want %+v", back, r)
	}
	long := sample()
	long.Revision = strings.Repeat("\u00e9", maxRevision/2)
	if d := long.Detail(); len(d) > 1024 {
		t.Fatalf("the longest revision makes a detail of %d bytes", len(d))
	}
}

func TestValidateRefusesInconsistentRuns(t *testing.T) {
	for name, f := range map[string]func(*Run){
		"no revision":             func(r *Run) { r.Revision = "" },
		"revision too long":       func(r *Run) { r.Revision = strings.Repeat("x", maxRevision+1) },
		"control character":       func(r *Run) { r.Revision = "a\nb" },
		"to before from":          func(r *Run) { r.To = r.From.Add(-time.Second) },
		"half a span":             func(r *Run) { r.Last = time.Time{} },
		"negative count":          func(r *Run) { r.Changed, r.Unchanged = -1, r.Unchanged+1 },
		"replayed does not add":   func(r *Run) { r.Unchanged++ },
		"read does not add":       func(r *Run) { r.Read++ },
		"pass with newly allowed": func(r *Run) { r.Gate = GatePass },
		"fail with nothing":       func(r *Run) { r.NewlyAllowed, r.Unchanged, r.Gate = 0, r.Unchanged+2, GateFail },
		"unknown gate":            func(r *Run) { r.Gate = "ok" },
		"digest not hex":          func(r *Run) { r.ReportSHA256 = strings.Repeat("G", 64) },
		"digest uppercase":        func(r *Run) { r.ReportSHA256 = strings.Repeat("9C", 32) },
	} {
		r := sample()
		f(r)
		if err := r.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestParseIsStrict(t *testing.T) {
	d := sample().Detail()
	for name, bad := range map[string]string{
		"no revision":      strings.TrimPrefix(d, "revision="),
		"unquoted":         strings.Replace(d, `revision="bundle \"v2\" 2026-12-07"`, "revision=x", 1),
		"reordered":        strings.Replace(strings.Replace(d, "read=", "READ=", 1), "replayed=", "read=", 1),
		"missing field":    strings.Replace(d, " malformed=1", "", 1),
		"extra field":      d + " extra=1",
		"offset time":      strings.Replace(d, "from=2026-12-01T00:00:00Z", "from=2026-12-01T01:00:00+01:00", 1),
		"double space":     strings.Replace(d, " read=", "  read=", 1),
		"count not number": strings.Replace(d, "read=1200", "read=12e2", 1),
		"sum wrong":        strings.Replace(d, "read=1200", "read=1201", 1),
	} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("%s: parsed %q", name, bad)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(sample().Detail())
	f.Add(`revision="x" from=- to=- first=- last=- read=0 replayed=0 unchanged=0 newly_allowed=0 newly_denied=0 changed=0 not_replayed=0 malformed=0 uncertain=false gate=pass report_sha256=` + strings.Repeat("0", 64))
	f.Fuzz(func(t *testing.T, detail string) {
		r, err := Parse(detail)
		if err != nil {
			return
		}
		if r.Detail() != detail {
			t.Fatalf("parsed %q, writes %q", detail, r.Detail())
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("parsed an invalid run: %v", err)
		}
	})
}
