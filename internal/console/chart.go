package console

import (
	"context"
	"fmt"
	"time"

	"github.com/agentauthz/agentauthz/internal/recordstore"
)

// The decisions-over-time chart is SVG drawn on the server: no script, so
// the Content-Security-Policy needs nothing for it, and the numbers behind
// it are a table in the same page for screen readers and for copying.

// chartRange is one choice of the chart's time span.
type chartRange struct {
	Name string
	Step time.Duration
	N    int
}

var chartRanges = []chartRange{
	{"1h", time.Minute, 60},
	{"24h", 30 * time.Minute, 48},
	{"7d", 3 * time.Hour, 56},
	{"30d", 12 * time.Hour, 60},
}

func pickRange(name string) chartRange {
	for _, r := range chartRanges {
		if r.Name == name {
			return r
		}
	}
	return chartRanges[1]
}

// Chart geometry, in SVG user units.
const (
	chartW, chartH = 720, 160
	chartLeft      = 48 // room for the y-axis labels
	chartTop       = 8
	chartBottom    = 22 // room for the x-axis labels
)

// bar is one bucket drawn.
type bar struct {
	X, W                   int
	DecY, DecH, DenY, DenH int
	Title                  string
}

// chart is what the "chart" template draws.
type chart struct {
	Range          string
	Ranges         []string
	Bars           []bar
	Buckets        []recordstore.Bucket
	Max            int64
	Total, Denials int64
	From, To       string
	W, H, Left     int
	Base, Top      int
	Link           string // the page, for the range links
	Err            string
}

// decisionChart counts the decisions of agent ("" for the fleet) over the
// named range ending now, and lays it out.
func (c *Console) decisionChart(ctx context.Context, agent, rangeName, link string) *chart {
	rg := pickRange(rangeName)
	now := c.cfg.Now()
	since := now.Truncate(rg.Step).Add(-time.Duration(rg.N-1) * rg.Step)
	ch := &chart{Range: rg.Name, W: chartW, H: chartH, Left: chartLeft, Top: chartTop, Base: chartH - chartBottom, Link: link}
	for _, r := range chartRanges {
		ch.Ranges = append(ch.Ranges, r.Name)
	}
	bs, err := c.cfg.Records.Histogram(ctx, agent, since, rg.Step, rg.N)
	if err != nil {
		c.cfg.Logger.Error("console: record store", "error", err)
		ch.Err = "The record store is unavailable; retry."
		return ch
	}
	ch.Buckets = bs
	for _, b := range bs {
		ch.Max = max(ch.Max, b.Decisions)
		ch.Total += b.Decisions
		ch.Denials += b.Denials
	}
	layout := "15:04"
	if time.Duration(rg.N)*rg.Step >= 24*time.Hour {
		layout = "01-02 15:04"
	}
	ch.From, ch.To = since.UTC().Format(layout), since.Add(time.Duration(rg.N)*rg.Step).UTC().Format(layout)
	plotH := chartH - chartTop - chartBottom
	slot := (chartW - chartLeft) / rg.N
	for i, b := range bs {
		br := bar{X: chartLeft + i*slot + 1, W: max(slot-2, 1),
			Title: fmt.Sprintf("%s: %d decisions, %d denied", b.Start.Format("2006-01-02 15:04Z"), b.Decisions, b.Denials)}
		if ch.Max > 0 {
			br.DecH = int(b.Decisions * int64(plotH) / ch.Max)
			br.DenH = int(b.Denials * int64(plotH) / ch.Max)
			if b.Decisions > 0 && br.DecH == 0 {
				br.DecH = 1 // a bucket with decisions never looks empty
			}
			if b.Denials > 0 && br.DenH == 0 {
				br.DenH = 1
			}
		}
		br.DecY, br.DenY = ch.Base-br.DecH, ch.Base-br.DenH
		ch.Bars = append(ch.Bars, br)
	}
	return ch
}
