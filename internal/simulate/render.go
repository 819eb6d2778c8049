package simulate

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/agentauthz/agentauthz/internal/termtext"
)

// WriteJSON writes the report as one JSON document.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(r)
}

// WriteText writes the report for a terminal.
func (r *Report) WriteText(w io.Writer) error {
	p := &printer{w: w}
	p.f("policy simulation: proposed revision %s\n", r.Revision)
	if span := r.span(); span != "" {
		p.f("records from %s\n", span)
	}
	p.f("%d records read: %d replayed (%d unchanged, %d newly allowed, %d newly denied, %d otherwise changed), %d not replayed, %d malformed\n",
		r.Read, r.Replayed, r.Unchanged, Count(r.NewlyAllowed), Count(r.NewlyDenied), Count(r.Changed), Count(r.NotReplayed), r.Malformed)
	for _, g := range r.Gaps {
		p.f("uncertain: the proposed policy reads %s, which decision records do not keep; changes below may be due to it\n", g)
	}
	sections := []struct {
		title string
		gs    []Group
	}{{"NEWLY ALLOWED", r.NewlyAllowed}, {"NEWLY DENIED", r.NewlyDenied}, {"OTHERWISE CHANGED", r.Changed}}
	for _, s := range sections {
		if len(s.gs) == 0 {
			continue
		}
		p.f("\n%s\n", s.title)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "AGENT\tOPERATION\tBEFORE\tAFTER\tCOUNT\tEXAMPLES")
		for _, g := range s.gs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", text(g.Agent), text(g.Operation), g.Before, g.After, g.Count, strings.Join(g.Examples, " "))
		}
		p.err(tw.Flush())
	}
	if len(r.NotReplayed) > 0 {
		p.f("\nNOT REPLAYED\n")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "AGENT\tOPERATION\tWHY\tCOUNT\tEXAMPLES")
		for _, g := range r.NotReplayed {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", text(g.Agent), text(g.Operation), g.After, g.Count, strings.Join(g.Examples, " "))
		}
		p.err(tw.Flush())
	}
	for _, l := range []struct {
		verb string
		ops  []AgentOperation
	}{{"would gain", r.Gaining}, {"would lose", r.Losing}} {
		for _, a := range l.ops {
			p.f("agent %s %s %s (%d requests)\n", text(a.Agent), l.verb, text(a.Operation), a.Count)
		}
	}
	return p.e
}

// WriteMarkdown writes the report as a pull-request comment.
func (r *Report) WriteMarkdown(w io.Writer) error {
	p := &printer{w: w}
	p.f("### Policy simulation: `%s`\n\n", md(r.Revision))
	if span := r.span(); span != "" {
		p.f("Recorded decisions from %s.\n\n", span)
	}
	p.f("| records read | replayed | unchanged | newly allowed | newly denied | otherwise changed | not replayed | malformed |\n")
	p.f("|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	p.f("| %d | %d | %d | **%d** | **%d** | %d | %d | %d |\n\n", r.Read, r.Replayed, r.Unchanged, Count(r.NewlyAllowed),
		Count(r.NewlyDenied), Count(r.Changed), Count(r.NotReplayed), r.Malformed)
	for _, g := range r.Gaps {
		p.f("> **Uncertain:** the proposed policy reads `%s`, which decision records do not keep; the changes below may be due to it.\n\n", md(g))
	}
	for _, s := range []struct {
		title string
		gs    []Group
	}{{"Newly allowed", r.NewlyAllowed}, {"Newly denied", r.NewlyDenied}, {"Otherwise changed", r.Changed}, {"Not replayed", r.NotReplayed}} {
		if len(s.gs) == 0 {
			continue
		}
		p.f("#### %s\n\n| agent | operation | before | after | count | examples |\n|---|---|---|---|---:|---|\n", s.title)
		for _, g := range s.gs {
			p.f("| %s | %s | %s | %s | %d | %s |\n", md(g.Agent), md(g.Operation), md(g.Before), md(g.After), g.Count, md(strings.Join(g.Examples, " ")))
		}
		p.f("\n")
	}
	if len(r.Gaining)+len(r.Losing) > 0 {
		p.f("#### Operations gained or lost\n\n")
		for _, a := range r.Gaining {
			p.f("- `%s` would **gain** `%s` (%d requests)\n", md(a.Agent), md(a.Operation), a.Count)
		}
		for _, a := range r.Losing {
			p.f("- `%s` would **lose** `%s` (%d requests)\n", md(a.Agent), md(a.Operation), a.Count)
		}
	}
	return p.e
}

func (r *Report) span() string {
	switch {
	case r.From.IsZero() && r.To.IsZero():
		return ""
	case r.To.IsZero():
		return r.From.UTC().Format(time.RFC3339) + " on"
	case r.From.IsZero():
		return "the start of the log to " + r.To.UTC().Format(time.RFC3339)
	}
	return r.From.UTC().Format(time.RFC3339) + " to " + r.To.UTC().Format(time.RFC3339)
}

type printer struct {
	w io.Writer
	e error
}

func (p *printer) f(format string, args ...any) {
	if p.e == nil {
		_, p.e = fmt.Fprintf(p.w, format, args...)
	}
}

func (p *printer) err(err error) {
	if p.e == nil {
		p.e = err
	}
}

// text is a recorded string as a terminal shows it: "-" when empty,
// escaped like every other human output (termtext).
func text(s string) string {
	if s == "" {
		return "-"
	}
	return termtext.Escape(s)
}

// md escapes what would break a Markdown table cell or inline code.
func md(s string) string {
	s = text(s)
	return strings.NewReplacer("|", `\|`, "`", "'", "<", "&lt;", ">", "&gt;").Replace(s)
}
