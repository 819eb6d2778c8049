package console

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
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
	id   string // the last event id, as a browser keeps it
}

func (e *env) openStream(c *http.Client) *sse {
	e.t.Helper()
	return e.openStreamAt(c, "", "")
}

// openStreamAt opens a stream from the page's position after, or from the
// last event id lastID as a reconnecting browser does ("": none).
func (e *env) openStreamAt(c *http.Client, after, lastID string) *sse {
	e.t.Helper()
	resp, err := e.streamGet(c, after, lastID)
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

func (e *env) streamGet(c *http.Client, after, lastID string) (*http.Response, error) {
	u := e.srv.URL + "/ui/decisions/stream"
	if after != "" {
		u += "?after=" + url.QueryEscape(after)
	}
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	return c.Do(req)
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
		case strings.HasPrefix(line, "id: "):
			s.id = line[len("id: "):]
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

// consumer takes what the hub gives one subscriber as a fast stream would.
type consumer struct {
	mu      sync.Mutex
	ids     []string
	sampled int // takes where fewer decisions were sent than arrived
}

func consume(t *testing.T, s *tailSub) *consumer {
	c := &consumer{}
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	go func() {
		for {
			select {
			case <-done:
				return
			case <-s.wake:
				evs, arrived, _, _ := s.take()
				c.mu.Lock()
				for _, ev := range evs {
					c.ids = append(c.ids, ev.ID)
				}
				if arrived > len(evs) {
					c.sampled++
				}
				c.mu.Unlock()
			}
		}
	}()
	return c
}

// wait returns the consumer's ids once it has n, failing after 10 s.
func (c *consumer) wait(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.mu.Lock()
		ids := slices.Clone(c.ids)
		c.mu.Unlock()
		if len(ids) >= n {
			return ids
		}
		if time.Now().After(deadline) {
			t.Fatalf("a subscriber has %d decisions after 10 s, want %d", len(ids), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// subscribe subscribes to h until the test ends.
func subscribe(t *testing.T, h *tailHub) *tailSub {
	t.Helper()
	s, err := h.subscribe(context.Background(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.unsubscribe(s) })
	return s
}

// fastHub makes e's hub poll every 10 ms, before any stream starts it.
func fastHub(e *env) *tailHub {
	e.con.hub.interval = 10 * time.Millisecond
	return &e.con.hub
}

// TestTailHubFanOut: one poller hands every subscriber the same decisions,
// in the same order, each exactly once, and a subscriber sees only what
// was stored after it subscribed.
func TestTailHubFanOut(t *testing.T) {
	e := newEnv(t)
	h := fastHub(e)
	var cs []*consumer
	for range 3 {
		s := subscribe(t, h)
		cs = append(cs, consume(t, s))
	}
	var want []string
	for b := range 4 {
		log := fmt.Sprintf("fan-%d", b)
		shipMore(t, e.rs, log, "reports-bot", 30)
		for i := range 30 {
			want = append(want, fmt.Sprintf("%s-%d", log, i))
		}
		for _, c := range cs {
			c.wait(t, len(want))
		}
	}
	slices.Sort(want)
	for i, c := range cs {
		got := c.wait(t, len(want))
		if i > 0 && !slices.Equal(got, cs[0].wait(t, len(want))) {
			t.Errorf("subscriber %d got another order than subscriber 0", i)
		}
		slices.Sort(got)
		if !slices.Equal(got, want) || c.sampled != 0 {
			t.Errorf("subscriber %d: %d decisions, %d sampled; want the %d shipped, none sampled", i, len(got), c.sampled, len(want))
		}
	}

	// A subscriber that joins now is sent what is stored after it joined,
	// not the batch the poller has not read yet.
	shipMore(t, e.rs, "before", "reports-bot", 1)
	late := subscribe(t, h)
	lc := consume(t, late)
	shipMore(t, e.rs, "after", "reports-bot", 1)
	if got := cs[0].wait(t, len(want)+2); !slices.Contains(got, "before-0") || !slices.Contains(got, "after-0") {
		t.Errorf("an earlier subscriber's last two: %v", got[len(want):])
	}
	if got := lc.wait(t, 1); len(got) != 1 || got[0] != "after-0" {
		t.Errorf("the late subscriber got %v, want only after-0", got)
	}
	time.Sleep(50 * time.Millisecond) // five more polls: nothing else arrives
	if got := lc.wait(t, 1); len(got) != 1 {
		t.Errorf("the late subscriber got %v, want only after-0", got)
	}
}

// TestTailHubSlowSubscriber: a subscriber that does not keep up (its
// stream blocked writing to a slow client) holds only the newest
// tailPerPoll decisions and is told how many arrived, while the poller and
// the other subscribers go on without waiting for it.
func TestTailHubSlowSubscriber(t *testing.T) {
	e := newEnv(t)
	h := fastHub(e)
	slow := subscribe(t, h)
	var fast []*consumer
	for range 2 {
		s := subscribe(t, h)
		fast = append(fast, consume(t, s))
	}
	var shipped []string
	for b := range 5 {
		log := fmt.Sprintf("burst-%d", b)
		shipMore(t, e.rs, log, "reports-bot", 30)
		for i := range 30 {
			shipped = append(shipped, fmt.Sprintf("%s-%d", log, i))
		}
		// The fast ones have each batch while the slow one has read
		// nothing.
		for _, c := range fast {
			c.wait(t, len(shipped))
		}
	}
	for i, c := range fast {
		if got := c.wait(t, len(shipped)); len(got) != len(shipped) || c.sampled != 0 {
			t.Errorf("fast subscriber %d: %d decisions, %d sampled, want %d, none sampled", i, len(got), c.sampled, len(shipped))
		}
	}
	evs, arrived, _, end := slow.take()
	var got []string
	for _, ev := range evs {
		got = append(got, ev.ID)
	}
	newest := slices.Clone(shipped[len(shipped)-tailPerPoll:])
	slices.Sort(got)
	slices.Sort(newest)
	if arrived != len(shipped) || !slices.Equal(got, newest) || end != "" {
		t.Errorf("the slow subscriber: %d arrived, %d held (%v), end %q; want %d arrived and the newest %d", arrived, len(evs), got, end, len(shipped), tailPerPoll)
	}
	// Caught up, it is sent the next batch whole.
	sc := consume(t, slow)
	shipMore(t, e.rs, "calm", "reports-bot", 3)
	if got := sc.wait(t, 3); len(got) != 3 || sc.sampled != 0 {
		t.Errorf("after catching up: %v, %d sampled", got, sc.sampled)
	}
}

// TestTailStreamsShareOnePoller: over HTTP, five open streams are served by
// one poller goroutine; when they close it stops, and no goroutine is left
// behind.
func TestTailStreamsShareOnePoller(t *testing.T) {
	e := newEnv(t)
	h := fastHub(e)
	var clients []*http.Client
	for i := range 3 {
		clients = append(clients, e.signIn(fmt.Sprintf("audrey%d", i), control.RoleAuditor))
	}
	for _, c := range clients {
		c.CloseIdleConnections()
	}
	time.Sleep(100 * time.Millisecond) // let closed connections' goroutines end
	before := runtime.NumGoroutine()
	var streams []*sse
	for i := range 5 {
		streams = append(streams, e.openStream(clients[i%3]))
	}
	h.mu.Lock()
	run, n := h.run, len(h.subs)
	h.mu.Unlock()
	if run == nil || n != 5 {
		t.Fatalf("%d subscribers, poller %v", n, run != nil)
	}
	shipMore(t, e.rs, "shared", "reports-bot", 2)
	for i, s := range streams {
		for range 2 {
			if ev, data := s.next(t); ev != "decision" || !strings.Contains(data, `"id":"shared-`) {
				t.Fatalf("stream %d: %q %s", i, ev, data)
			}
		}
	}
	for _, s := range streams {
		s.resp.Body.Close()
	}
	select {
	case <-run.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the poller still runs 10 s after every stream closed")
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before the streams opened:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.run != nil || len(h.subs) != 0 {
		t.Errorf("after the streams closed: %d subscribers, poller %v", len(h.subs), h.run != nil)
	}
}

// livePage returns the live page's body and the position it carries.
func (e *env) livePage(c *http.Client) (string, string) {
	e.t.Helper()
	code, body := e.get(c, "/ui/decisions/live")
	m := regexp.MustCompile(`<tbody id="tail-rows" data-after="([A-Za-z0-9_.~-]+)">`).FindStringSubmatch(body)
	if code != 200 || m == nil {
		e.t.Fatalf("live page: %d, no position\n%s", code, body)
	}
	return body, m[1]
}

// nextDecision fails unless the stream's next event is the decision id.
func (s *sse) nextDecision(t *testing.T, id string) {
	t.Helper()
	if ev, data := s.next(t); ev != "decision" || !strings.Contains(data, `"id":"`+id+`"`) {
		t.Fatalf("want decision %s, got %q %s", id, ev, data)
	}
}

// TestLiveTailFromPage: a decision stored after the live page was rendered
// and before its stream opened is the stream's first event, and is sent
// once; a reconnection with the last event id carries on from there; a gap
// larger than a stream holds is sampled and says so; a position that is
// altered, another viewer's, malformed or too long is refused.
func TestLiveTailFromPage(t *testing.T) {
	e := newEnv(t)
	fastHub(e)
	c := e.signIn("audrey", control.RoleAuditor)
	body, after := e.livePage(c)
	if !strings.Contains(body, `<tr data-id="dec-2">`) {
		t.Fatalf("the page's rows:\n%s", body)
	}
	shipMore(t, e.rs, "gap", "reports-bot", 1) // between the page and its stream
	s := e.openStreamAt(c, after, "")
	s.nextDecision(t, "gap-0")
	if s.id == "" || s.id == after {
		t.Fatalf("the backfill's event id: %q", s.id)
	}
	shipMore(t, e.rs, "next", "reports-bot", 1)
	s.nextDecision(t, "next-0") // not gap-0 again
	// A page rendered now shows both, and its position is past them.
	body, after2 := e.livePage(c)
	if !strings.Contains(body, `data-id="gap-0"`) || !strings.Contains(body, `data-id="next-0"`) {
		t.Errorf("the page after the gap lacks its decisions")
	}

	// The browser reconnects with the page's URL and the last event id:
	// what was stored while it was away, and nothing it had.
	s.resp.Body.Close()
	shipMore(t, e.rs, "away", "reports-bot", 1)
	s2 := e.openStreamAt(c, after, s.id)
	s2.nextDecision(t, "away-0")
	shipMore(t, e.rs, "back", "reports-bot", 1)
	s2.nextDecision(t, "back-0")
	s2.resp.Body.Close()

	// A gap larger than a stream holds: the newest 50, and how many there
	// were.
	b := e.signIn("bruno", control.RoleAdmin)
	_, bAfter := e.livePage(b)
	shipMore(t, e.rs, "burst", "reports-bot", 120)
	s3 := e.openStreamAt(b, bAfter, "")
	if ev, data := s3.next(t); ev != "sampled" || data != `{"arrived":120,"shown":50}` {
		t.Fatalf("a large gap: %q %s", ev, data)
	}
	for i := 70; i < 120; i++ {
		s3.nextDecision(t, fmt.Sprintf("burst-%d", i))
	}
	s3.resp.Body.Close()

	// Refused positions, from the URL and from Last-Event-ID.
	csrf := e.csrf(b, "/ui/decisions")
	forB := func(entries string) string { return e.con.positionMAC(&viewer{CSRF: csrf}, entries) + entries }
	altered := []byte(bAfter)
	altered[len(altered)-1] ^= 1 // a size changed
	for name, tok := range map[string]string{
		"another viewer's": after2,
		"altered":          string(altered),
		"malformed":        forB("~x"),
		"unordered":        forB("~bbbbbbbbbbbb.1~aaaaaaaaaaaa.1"),
		"too large":        forB("~aaaaaaaaaaaa.9223372036854775808"),
		"too long":         strings.Repeat("a", tailMaxPos+1),
		"short":            "abc",
	} {
		for _, hdr := range []bool{false, true} {
			var resp *http.Response
			var err error
			if hdr {
				resp, err = e.streamGet(b, "", tok)
			} else {
				resp, err = e.streamGet(b, tok, "")
			}
			if err != nil {
				t.Fatal(err)
			}
			msg, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(msg), "reload the page") {
				t.Errorf("%s position (Last-Event-ID %v): %d %s", name, hdr, resp.StatusCode, msg)
			}
		}
	}
	// A well-formed one of b's own is accepted.
	e.openStreamAt(b, forB("~aaaaaaaaaaaa.1"), "")
}

// TestTailPageAndBackfillMeet: a record stored after the page read the
// store's sizes and before it read its rows is not on the page; the stream
// opened from the page's position sends it first, once, then what comes
// after.
func TestTailPageAndBackfillMeet(t *testing.T) {
	e := newEnv(t)
	h := fastHub(e)
	ctx := context.Background()
	sizes, err := e.rs.Sizes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	shipMore(t, e.rs, "between", "reports-bot", 1) // while the page reads its rows
	recs, err := e.con.rowsBelow(ctx, sizes)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, st := range recs {
		ids = append(ids, st.Record.DecisionID)
	}
	if slices.Contains(ids, "between-0") || !slices.Contains(ids, "dec-2") {
		t.Fatalf("the page's rows: %v", ids)
	}
	pos := tailPos{}
	for log, n := range sizes {
		pos[logKey(log)] = n
	}
	s, err := h.subscribe(ctx, "", pos)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.unsubscribe(s) })
	sc := consume(t, s)
	if got := sc.wait(t, 1); !slices.Equal(got, []string{"between-0"}) {
		t.Fatalf("the stream's backfill: %v", got)
	}
	shipMore(t, e.rs, "later", "reports-bot", 1)
	sc.wait(t, 2)
	time.Sleep(50 * time.Millisecond) // five more polls: nothing else arrives
	if got := sc.wait(t, 2); !slices.Equal(got, []string{"between-0", "later-0"}) || sc.sampled != 0 {
		t.Errorf("the stream: %v, %d sampled", got, sc.sampled)
	}
}

// holdStreams holds the next live-tail stream request until release is
// called: held is closed when one is waiting, as when a browser takes a
// moment to connect after rendering the page.
func (e *env) holdStreams() (held <-chan struct{}, release func()) {
	h, r := make(chan struct{}), make(chan struct{})
	var once sync.Once
	f := func(req *http.Request) {
		once.Do(func() { close(h) })
		select {
		case <-r:
		case <-req.Context().Done():
		}
	}
	e.hold.Store(&f)
	return h, func() { e.hold.Store(nil); close(r) }
}
