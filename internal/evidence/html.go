package evidence

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"html"
	"html/template"
	"io"
	"math"
	"strings"
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
	"chart":    dayChart,
	"revchart": revocationChart,
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

// revocationChart draws, for each revocation, the time from the revocation
// to each replica's first refusal of the agent, on a log scale from 1 ms,
// with PropagationBound marked, in inline SVG. A replica the agent made no
// request to after the revocation has no bar, and says so.
func revocationChart(revs []Revocation) template.HTML {
	if len(revs) == 0 {
		return ""
	}
	const left, width, row, gap = 230, 420, 16, 14
	top := PropagationBound.Milliseconds()
	for _, rv := range revs {
		for _, p := range rv.Replicas {
			if p.TookMS != nil {
				top = max(top, *p.TookMS)
			}
		}
	}
	decades := math.Ceil(math.Log10(float64(top)))
	x := func(ms int64) float64 { return left + width*math.Log10(float64(max(ms, 1)))/decades }
	rows := 0
	for _, rv := range revs {
		rows += 1 + len(rv.Replicas)
	}
	h := rows*row + len(revs)*gap + 30
	var b strings.Builder
	fmt.Fprintf(&b, `<svg role="img" aria-label="Revocation propagation: time to each replica's first refusal" width="%d" height="%d" viewBox="0 0 %d %d" xmlns="http://www.w3.org/2000/svg">`, left+width+70, h, left+width+70, h)
	for d := 0.0; d <= decades; d++ {
		ms := int64(math.Pow(10, d))
		label := fmt.Sprintf("%d ms", ms)
		if ms >= 1000 {
			label = fmt.Sprintf("%d s", ms/1000)
		}
		fmt.Fprintf(&b, `<line x1="%.1f" y1="0" x2="%.1f" y2="%d" class="grid"/><text x="%.1f" y="%d" class="axis">%s</text>`, x(ms), x(ms), h-18, x(ms)-8, h-4, label)
	}
	bx := x(PropagationBound.Milliseconds())
	fmt.Fprintf(&b, `<line x1="%.1f" y1="0" x2="%.1f" y2="%d" class="bound"/><text x="%.1f" y="10" class="axis">%v bound</text>`, bx, bx, h-18, bx+3, PropagationBound)
	y := 0
	for _, rv := range revs {
		y += gap
		fmt.Fprintf(&b, `<text x="0" y="%d" class="head">%s revoked %s</text>`, y+row-4, html.EscapeString(rv.Tenant+"/"+rv.Agent), rv.At.UTC().Format(time.TimeOnly))
		y += row
		for _, p := range rv.Replicas {
			fmt.Fprintf(&b, `<text x="12" y="%d" class="axis">%s</text>`, y+row-5, html.EscapeString(p.Log))
			if p.TookMS == nil {
				fmt.Fprintf(&b, `<text x="%d" y="%d" class="axis">no request after the revocation</text>`, left, y+row-5)
			} else {
				w := x(*p.TookMS) - left
				fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.1f" height="%d" class="%s"><title>%s: first refusal %d ms after</title></rect><text x="%.1f" y="%d" class="axis">%s</text>`,
					left, y+2, max(w, 1), row-5, map[bool]string{true: "ontime", false: "late"}[*p.TookMS <= PropagationBound.Milliseconds()],
					html.EscapeString(p.Log), *p.TookMS, left+max(w, 1)+4, y+row-5, msText(*p.TookMS))
			}
			y += row
		}
	}
	// Log names and agent ids are escaped above; the rest is numbers.
	return template.HTML(b.String() + `</svg>`) //nolint:gosec // every recorded string in it is escaped
}

func msText(ms int64) string {
	if ms < 1000 {
		return fmt.Sprintf("%d ms", ms)
	}
	return fmt.Sprintf("%.1f s", float64(ms)/1000)
}
