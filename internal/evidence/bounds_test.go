package evidence

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
)

// TestLinkWindowForgetsTheOldest: the ids kept to link responses to their
// decisions are the latest linkWindow, no more.
func TestLinkWindowForgetsTheOldest(t *testing.T) {
	w := newIDWindow()
	for i := range linkWindow + 10 {
		w.add(fmt.Sprintf("dec-%d", i))
	}
	if len(w.ring) != linkWindow || len(w.set) > linkWindow {
		t.Fatalf("window holds %d ids (%d distinct), bound %d", len(w.ring), len(w.set), linkWindow)
	}
	for i, want := range map[int]bool{0: false, 9: false, 10: true, linkWindow + 9: true} {
		if w.has(fmt.Sprintf("dec-%d", i)) != want {
			t.Errorf("dec-%d kept: %v, want %v", i, !want, want)
		}
	}
}

// TestTalliesAreBounded: a history with more distinct reasons, agents and
// certificates than the bounds keeps at most the bound of each, counts the
// rest under "(other)", and says the shared-certificate check is incomplete
// instead of passing it.
func TestTalliesAreBounded(t *testing.T) {
	st := newStats(nil, 1)
	st.links = newIDWindow()
	n := maxCerts + 5
	for i := range n {
		r := &decisionlog.Record{DecisionID: fmt.Sprint(i), Time: benchStart.Add(time.Duration(i) * time.Second),
			Agent:    decisionlog.Agent{ID: fmt.Sprintf("a%d", i), Tenant: td, TrustLevel: "L1", CertSHA256: fmt.Sprintf("c%d", i)},
			Request:  decisionlog.Request{Operation: "op"},
			Decision: decisionlog.Decision{Allowed: i%2 == 0, Reasons: []string{fmt.Sprintf("reason-%d", i)}}}
		st.add(0, Scanned{Record: r}, nil, 0)
	}
	if len(st.byReason) > maxKeys+1 || st.byReason[other] == 0 || len(st.matrix) > maxAgents+1 || st.matrix["(other agents)"]["op"] == 0 ||
		len(st.certAgent) != maxCerts || !st.certsTruncated || len(st.byDay) > maxKeys+1 {
		t.Fatalf("reasons %d (other %d), agents %d, certs %d truncated %v, days %d", len(st.byReason), st.byReason[other], len(st.matrix),
			len(st.certAgent), st.certsTruncated, len(st.byDay))
	}
	r := &Report{Logs: []LogSource{{Dir: "log", Name: "a"}}}
	r.build(Inputs{Sources: []Source{nil}}, st)
	if c := r.Controls[0]; c.Status != StatusGap || !strings.Contains(c.Summary, "distinct certificates") {
		t.Fatalf("CC6.1 beyond the certificate bound: %+v", c)
	}
}

// wholeSource reads a log directory decoding every record whole, as audit
// query does.
type wholeSource struct{ DirSource }

func (w wholeSource) Scan(_ context.Context, _, _ time.Time, each func(Scanned) error) (int, error) {
	r := decisionlog.NewReader(w.Dir)
	defer r.Close()
	for {
		e, err := r.Next()
		if errors.Is(err, io.EOF) {
			return 0, nil
		}
		if err != nil {
			return 0, err
		}
		if err := each(Scanned{Record: e.Record}); err != nil {
			return 0, err
		}
	}
}

// TestLeanDecodeAgreesWithWholeRecords: the report from the lean decode
// equals the report from whole records, figure for figure.
func TestLeanDecodeAgreesWithWholeRecords(t *testing.T) {
	h := newHistory(t)
	lean := h.collect(t, nil)
	whole := h.collect(t, func(in *Inputs) { in.Sources = []Source{wholeSource{in.Sources[0].(DirSource)}} })
	for i, c := range lean.Controls {
		w := whole.Controls[i]
		if c.Status != w.Status || c.Summary != w.Summary || fmt.Sprint(c.Evidence) != fmt.Sprint(w.Evidence) {
			t.Errorf("%s: lean %s %q %v\nwhole %s %q %v", c.ID, c.Status, c.Summary, c.Evidence, w.Status, w.Summary, w.Evidence)
		}
	}
	if fmt.Sprint(lean.Sample) != fmt.Sprint(whole.Sample) || len(lean.Sample) == 0 || lean.Sample[0].Record.Request.Path == "" {
		t.Errorf("samples differ or are not whole records:\n%+v\n%+v", lean.Sample, whole.Sample)
	}
}

// FuzzDecodeLean: the lean decode accepts exactly what the whole decode
// accepts, with the same counted fields.
func FuzzDecodeLean(f *testing.F) {
	for i := range 3 {
		b, err := benchRecord(i*97, 10).MarshalJSON()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Add(`{"index":0,"log":"a","kind":"response","decision_id":"d","response":{"status":200,"body":"signed","bytes":3,"signature":"s"},"agent":{},"request":{},"decision":{"allowed":false,"http_status":0,"reasons":null},"time":"2026-11-01T00:00:00.000000Z"}`)
	f.Add(`{"time":"2026-11-01T00:00:00Z"}`)
	var dec leanDecoder
	f.Fuzz(func(t *testing.T, line string) {
		lean, lerr := dec.decode(line)
		whole, werr := decisionlog.DecodeLine(line)
		if werr != nil {
			if lerr == nil {
				t.Fatalf("lean decode accepts what the whole one refuses (%v)", werr)
			}
			return
		}
		if lerr != nil {
			t.Fatalf("whole decode accepts, lean refuses: %v", lerr)
		}
		if lean.Kind != whole.Kind || lean.Log != whole.Log || lean.DecisionID != whole.DecisionID || !lean.Time.Equal(whole.Time) ||
			lean.Agent.ID != whole.Agent.ID || lean.Agent.Tenant != whole.Agent.Tenant || lean.Agent.TrustLevel != whole.Agent.TrustLevel ||
			lean.Agent.CertSHA256 != whole.Agent.CertSHA256 || lean.Request.Operation != whole.Request.Operation ||
			lean.Decision.Allowed != whole.Decision.Allowed || lean.Decision.PolicyRevision != whole.Decision.PolicyRevision || fmt.Sprint(lean.Decision.Reasons) != fmt.Sprint(whole.Decision.Reasons) ||
			(lean.Response == nil) != (whole.Response == nil) ||
			lean.Response != nil && (lean.Response.Body != whole.Response.Body || lean.Response.Signature != whole.Response.Signature) {
			t.Fatalf("lean %+v\nwhole %+v", lean, whole)
		}
	})
}
