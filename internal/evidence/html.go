package evidence

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"time"
)

//go:embed report.html.tmpl
var reportTemplate string

var tmpl = template.Must(template.New("report").Funcs(template.FuncMap{
	"ts": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format(time.RFC3339)
	},
	"class": func(status string) string {
		switch status {
		case StatusEvidence:
			return "ok"
		case StatusGap:
			return "gap"
		}
		return "na"
	},
	"json": func(v any) (string, error) {
		b, err := json.MarshalIndent(v, "", "  ")
		return string(b), err
	},
	"chart": dayChart,
}).Parse(reportTemplate))

// WriteHTML writes the report as one self-contained HTML file: no scripts,
// no external assets, a print stylesheet.
func (r *Report) WriteHTML(w io.Writer) error { return tmpl.Execute(w, r) }

// WriteJSON writes the report as JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(r)
}

// Counts is the number of controls in each status.
func (r *Report) Counts() map[string]int {
	m := map[string]int{}
	for _, c := range r.Controls {
		m[c.Status]++
	}
	return m
}

// dayChart draws allowed and denied decisions per day as stacked bars, in
// inline SVG.
func dayChart(days []Day) template.HTML {
	if len(days) == 0 {
		return template.HTML(`<p class="muted">No decisions in the period.</p>`)
	}
	const h, bw, gap = 160, 18, 6
	most := 1
	for _, d := range days {
		most = max(most, d.Allowed+d.Denied)
	}
	width := len(days)*(bw+gap) + 60
	s := fmt.Sprintf(`<svg role="img" aria-label="Decisions per day: allowed and denied" width="%d" height="%d" viewBox="0 0 %d %d" xmlns="http://www.w3.org/2000/svg">`, width, h+40, width, h+40)
	s += fmt.Sprintf(`<text x="0" y="12" class="axis">%d</text><line x1="40" y1="%d" x2="%d" y2="%d" class="base"/>`, most, h+10, width, h+10)
	for i, d := range days {
		x := 40 + i*(bw+gap)
		ah := d.Allowed * h / most
		dh := d.Denied * h / most
		s += fmt.Sprintf(`<rect x="%d" y="%d" width="%d" height="%d" class="allowed"><title>%s: %d allowed</title></rect>`, x, h+10-ah, bw, ah, d.Day, d.Allowed)
		s += fmt.Sprintf(`<rect x="%d" y="%d" width="%d" height="%d" class="denied"><title>%s: %d denied</title></rect>`, x, h+10-ah-dh, bw, dh, d.Day, d.Denied)
		if len(days) <= 31 {
			s += fmt.Sprintf(`<text x="%d" y="%d" class="axis" transform="rotate(45 %d %d)">%s</text>`, x, h+24, x, h+24, d.Day[5:])
		}
	}
	// Built only from numbers and dates formatted here: nothing to escape.
	return template.HTML(s + `</svg>`) //nolint:gosec // no user input in the chart
}
