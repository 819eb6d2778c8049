package console

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/control"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/recordstore"
)

// shipMore stores n new signed decisions of agent in a new log, as one
// replica shipment, with decision ids <log>-<i>.
func shipMore(t *testing.T, rs *recordstore.Store, log, agent string, n int) {
	t.Helper()
	recs := make([]*decisionlog.Record, n)
	for i := range n {
		recs[i] = &decisionlog.Record{DecisionID: fmt.Sprintf("%s-%d", log, i), Time: time.Now(),
			Agent:    decisionlog.Agent{ID: agent, SPIFFEID: "spiffe://acme.test/agent/" + agent, Tenant: "acme.test", TrustLevel: "L2"},
			Request:  decisionlog.Request{ID: fmt.Sprintf("%s-r%d", log, i), Method: "GET", Path: "/v1/reports", Operation: "reports:read"},
			Decision: decisionlog.Decision{Allowed: true, HTTPStatus: 200, Reasons: []string{"allowed"}}}
	}
	shipRecords(t, rs, log, recs)
}

// shipRecords signs recs in a new log named log and stores them as its
// replica would ship them.
func shipRecords(t *testing.T, rs *recordstore.Store, log string, recs []*decisionlog.Record) {
	t.Helper()
	n := len(recs)
	dir := t.TempDir()
	l, err := decisionlog.Open(decisionlog.Options{Dir: filepath.Join(dir, "log"), KeyDir: filepath.Join(dir, "keys"), Name: log})
	if err != nil {
		t.Fatal(err)
	}
	keys := l.PublicKeys()
	for _, rec := range recs {
		if _, err := l.Append(context.Background(), rec); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	gs := logGroups(t, filepath.Join(dir, "log"))
	if res, err := rs.Append(context.Background(), recordstore.Shipment{Log: log, Keys: keys, Head: uint64(n), Groups: gs}); err != nil || res.Refused != nil || res.Stored != n {
		t.Fatalf("ship: %+v %v", res, err)
	}
}

// sse is an open event stream.
type sse struct {
	resp *http.Response
	r    *bufio.Reader
}

func (e *env) openStream(c *http.Client) *sse {
	e.t.Helper()
	resp, err := c.Get(e.srv.URL + "/ui/decisions/stream")
	if err != nil {
		e.t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		e.t.Fatalf("stream: %d %s", resp.StatusCode, b)
	}
	s := &sse{resp: resp, r: bufio.NewReader(resp.Body)}
	e.t.Cleanup(func() { resp.Body.Close() })
	return s
}

// next returns the next event (name and data), skipping comments; "" at
// the end of the stream. The test's deadline bounds it.
func (s *sse) next(t *testing.T) (string, string) {
	t.Helper()
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			s.resp.Body.Close()
		}
	}()
	var ev, data string
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			return "", ""
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case line == "" && ev != "":
			return ev, data
		case strings.HasPrefix(line, "event: "):
			ev = line[len("event: "):]
		case strings.HasPrefix(line, "data: "):
			data = line[len("data: "):]
		}
	}
}

func TestLiveTail(t *testing.T) {
	e := newEnv(t)
	c := e.signIn("audrey", control.RoleAuditor)
	code, body := e.get(c, "/ui/decisions/live")
	if code != 200 || !strings.Contains(body, `<script src="/ui/static/tail.js">`) || !strings.Contains(body, "/ui/decisions/dec-2") {
		t.Fatalf("live page: %d\n%s", code, body)
	}
	if code, js := e.get(c, "/ui/static/tail.js"); code != 200 || !strings.Contains(js, "EventSource") || strings.Contains(js, "innerHTML") {
		t.Fatalf("tail.js: %d", code)
	}
	s := e.openStream(c)
	shipMore(t, e.rs, "replica-2", "reports-bot", 1)
	if ev, data := s.next(t); ev != "decision" || !strings.Contains(data, `"id":"replica-2-0"`) || !strings.Contains(data, `"agent":"reports-bot"`) {
		t.Fatalf("first event: %q %s", ev, data)
	}
	// More than one poll can send: the newest 50, and a word that it sampled.
	shipMore(t, e.rs, "replica-3", "reports-bot", 120)
	ev, data := s.next(t)
	if ev != "sampled" || data != `{"arrived":120,"shown":50}` {
		t.Fatalf("sampled: %q %s", ev, data)
	}
	for i := range 50 {
		if ev, _ := s.next(t); ev != "decision" {
			t.Fatalf("decision %d of the sample: %q", i, ev)
		}
	}
	// A second stream of the session is allowed, a third is not.
	e.openStream(c)
	resp, err := c.Get(e.srv.URL + "/ui/decisions/stream")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("third stream of one session: %d", resp.StatusCode)
	}
	// Signing out ends the session's streams.
	if code, _ := e.post(c, "/ui/logout", url.Values{"csrf": {e.csrf(c, "/ui/decisions")}}); code != 200 {
		t.Fatalf("sign out: %d", code)
	}
	if ev, data := s.next(t); ev != "end" || data != "Signed out." {
		t.Errorf("after sign-out: %q %q", ev, data)
	}
	if ev, _ := s.next(t); ev != "" {
		t.Errorf("the stream goes on after its end: %q", ev)
	}
	// Signed out, the stream is refused.
	if code, _ := e.get(c, "/ui/decisions/stream"); code != http.StatusUnauthorized {
		t.Errorf("stream after sign-out: %d", code)
	}
}

// TestLiveTailRolesAndStop: a responder (no record access) gets no tail;
// Stop ends open streams (the control plane shutting down).
func TestLiveTailRolesAndStop(t *testing.T) {
	e := newEnv(t)
	r := e.signIn("rosa", control.RoleResponder)
	if code, _ := e.get(r, "/ui/decisions/stream"); code != http.StatusForbidden {
		t.Errorf("responder's stream: %d", code)
	}
	if code, _ := e.get(r, "/ui/decisions/live"); code != http.StatusForbidden {
		t.Errorf("responder's live page: %d", code)
	}
	s := e.openStream(e.client(e.certFor("audrey", control.RoleAuditor)))
	e.con.Stop()
	if ev, data := s.next(t); ev != "end" || !strings.Contains(data, "stopping") {
		t.Errorf("after Stop: %q %q", ev, data)
	}
}
