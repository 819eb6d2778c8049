package console

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/recordstore"
)

// The live tail: /ui/decisions/live shows the newest decisions and
// /ui/static/tail.js adds each new one from the server-sent events of
// /ui/decisions/stream. One poller per console (tailHub) asks the store
// what each log stored since its last poll (the logs' sizes, then those
// index ranges by primary key), so it sees every shipped record once,
// whichever control plane instance stored it, and hands each batch to every
// open stream. A stream holds at most tailPerPoll undelivered decisions:
// when more arrive before it sends them (a burst, or a slow client) it keeps
// the newest and tells its page how many it skipped; the poller never waits
// for a stream.

// Tail limits.
const (
	// TailPoll is how often the console looks for new records.
	TailPoll = time.Second
	// tailPerPoll is the most decisions one poll reads and one stream
	// holds undelivered; more is sampled.
	tailPerPoll = 50
	// tailHeartbeat keeps proxies from closing an idle stream.
	tailHeartbeat = 15 * time.Second
	// tailMaxAge ends a stream; the browser reconnects, and is
	// authenticated again.
	tailMaxAge = 30 * time.Minute
	// Open streams: per signed-in operator, and in all.
	tailPerViewer = 2
	tailMax       = 32
	// tailFirst is how many decisions the page shows before any arrive.
	tailFirst = 20
)

// tailEvent is one decision as the tail page shows it.
type tailEvent struct {
	ID      string   `json:"id"`
	Time    string   `json:"time"`
	Agent   string   `json:"agent"`
	Request string   `json:"request"`
	Allowed bool     `json:"allowed"`
	Reasons []string `json:"reasons"`
}

// streams counts open tail streams.
type streams struct {
	mu    sync.Mutex
	byKey map[string]int
	total int
}

func (s *streams) acquire(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byKey == nil {
		s.byKey = map[string]int{}
	}
	if s.total >= tailMax || s.byKey[key] >= tailPerViewer {
		return false
	}
	s.byKey[key]++
	s.total++
	return true
}

func (s *streams) release(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byKey[key]--; s.byKey[key] <= 0 {
		delete(s.byKey, key)
	}
	s.total--
}

func (c *Console) live(w http.ResponseWriter, r *http.Request, v *viewer) {
	data := map[string]any{}
	if c.cfg.Records == nil {
		data["RecordsOff"] = true
	} else if p, err := c.cfg.Records.Find(r.Context(), recordstore.Query{Limit: tailFirst, Newest: true}); err != nil {
		c.cfg.Logger.Error("console: record store", "error", err)
		data["RecordsErr"] = true
	} else {
		data["Records"] = p.Records
	}
	c.render(w, r, http.StatusOK, "live", v, data)
}

// stream serves the live tail's events until the client goes, the
// operator signs out or the session ends, the control plane stops, or
// tailMaxAge passes.
func (c *Console) stream(w http.ResponseWriter, r *http.Request, v *viewer) {
	if c.cfg.Records == nil {
		http.Error(w, "this control plane has no record store", http.StatusServiceUnavailable)
		return
	}
	key := v.sessionID
	if key == "" {
		key = v.CSRF // per client certificate
	}
	if !c.tails.acquire(key) {
		http.Error(w, fmt.Sprintf("too many live tails open (at most %d per operator): close another tab", tailPerViewer), http.StatusTooManyRequests)
		return
	}
	defer c.tails.release(key)
	ctx := r.Context()
	var sessionEnd <-chan time.Time
	if v.Session {
		se, err := c.sessions.get(v.sessionID, c.cfg.Now())
		if se == nil {
			if err != nil {
				c.cfg.Logger.Error("console: session store", "error", err)
				http.Error(w, "the session store is unavailable", http.StatusServiceUnavailable)
				return
			}
			http.Error(w, "the session ended: sign in again", http.StatusUnauthorized)
			return
		}
		t := time.NewTimer(se.expires.Sub(c.cfg.Now()))
		defer t.Stop()
		sessionEnd = t.C
	}
	sub, err := c.hub.subscribe(ctx, v.sessionID)
	if err != nil {
		c.cfg.Logger.Error("console: record store", "error", err)
		http.Error(w, "the record store is unavailable", http.StatusServiceUnavailable)
		return
	}
	defer c.hub.unsubscribe(sub)
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{}) // a stream outlives any per-request write timeout
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	send := func(event, data string) bool {
		//nolint:gosec // G705: text/event-stream, not HTML; the event names are constants and data is JSON or fixed text
		if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, data); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if _, err := fmt.Fprintf(w, "retry: 3000\n\n"); err != nil || rc.Flush() != nil {
		return
	}
	beat := time.NewTicker(tailHeartbeat)
	defer beat.Stop()
	maxAge := time.NewTimer(tailMaxAge)
	defer maxAge.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.stop:
			send("end", "The control plane is stopping.")
			return
		case <-sessionEnd:
			send("end", "The session ended: sign in again.")
			return
		case <-maxAge.C:
			return // the browser reconnects
		case <-beat.C:
			if _, err := fmt.Fprint(w, ": heartbeat\n\n"); err != nil || rc.Flush() != nil {
				return
			}
		case <-sub.wake:
			evs, arrived, end := sub.take()
			if end != "" {
				send("end", end)
				return
			}
			if arrived > len(evs) {
				if !send("sampled", fmt.Sprintf(`{"arrived":%d,"shown":%d}`, arrived, len(evs))) {
					return
				}
			}
			// Oldest first, so the page, which adds each at the top,
			// ends with the newest at the top.
			for _, ev := range evs {
				b, _ := json.Marshal(ev)
				if !send("decision", string(b)) {
					return
				}
			}
		}
	}
}

// tailSub is one open stream's side of the hub.
type tailSub struct {
	session string // the cookie session to check on each poll; "" for a certificate
	// wake says there is something to take (capacity 1: one wake covers
	// any number of batches).
	wake chan struct{}

	mu sync.Mutex
	// floor is each log's size when the stream opened: it is sent only
	// what was stored after; nil once every batch starts above it.
	floor   map[string]uint64
	pending []tailEvent // oldest first, at most tailPerPoll
	arrived int         // decisions arrived since the last take, sent or not
	held    bool        // the session could not be checked: send nothing
	end     string      // the stream must end, saying this
}

// take returns what the stream has to send (oldest first), how many
// decisions arrived since the last take, and why to end, if it must.
func (s *tailSub) take() ([]tailEvent, int, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.end != "" || s.held {
		return nil, 0, s.end
	}
	evs, arrived := s.pending, s.arrived
	s.pending, s.arrived = nil, 0
	return evs, arrived, ""
}

// tailRec is one record of a poll.
type tailRec struct {
	log   string
	index uint64
	ev    *tailEvent // nil: not a decision (a key rotation)
}

// tailBatch is what one poll found: each log's new index range [from, to)
// and the newest (at most tailPerPoll) records of those ranges, oldest
// first.
type tailBatch struct {
	from, to map[string]uint64
	recs     []tailRec
}

// put adds b to s's pending decisions, keeping the newest tailPerPoll.
func (s *tailSub) put(b *tailBatch) {
	s.mu.Lock()
	defer s.mu.Unlock()
	floor := s.floor
	for log, from := range b.from {
		if from, to := max(from, floor[log]), b.to[log]; to > from {
			s.arrived += int(to - from)
		}
	}
	for _, r := range b.recs {
		switch {
		case r.index < floor[r.log]:
		case r.ev == nil:
			s.arrived-- // counted above, not a decision
		default:
			s.pending = append(s.pending, *r.ev)
		}
	}
	if n := len(s.pending) - tailPerPoll; n > 0 {
		s.pending = append(s.pending[:0], s.pending[n:]...)
	}
	// The next batch starts where this one ends: once that is above
	// every log's floor, the floor has done its work.
	if floor != nil {
		above := true
		for log, f := range floor {
			above = above && b.to[log] >= f
		}
		if above {
			s.floor = nil
		}
	}
}

// tailHub is the console's one poller of the record store for the live
// tails. It runs while at least one stream is open.
type tailHub struct {
	c        *Console
	interval time.Duration

	mu   sync.Mutex
	subs map[*tailSub]struct{}
	run  *tailRun // nil: no poller
}

// tailRun is one poller goroutine's life; done is closed when it returns.
type tailRun struct {
	quit, done chan struct{}
}

// subscribe registers a stream, starting the poller if it is the first.
// The stream is sent what is stored after the store's sizes it reads here;
// reading them under h.mu, which the poller takes after each read, makes
// that exact: a poll that read before them delivers to this stream (what
// is above them), one that read after them is the next.
func (h *tailHub) subscribe(ctx context.Context, session string) (*tailSub, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	sizes, err := h.c.cfg.Records.Sizes(ctx)
	if err != nil {
		return nil, err
	}
	s := &tailSub{session: session, wake: make(chan struct{}, 1), floor: sizes}
	if h.subs == nil {
		h.subs = map[*tailSub]struct{}{}
	}
	h.subs[s] = struct{}{}
	if h.run == nil {
		h.run = &tailRun{quit: make(chan struct{}), done: make(chan struct{})}
		//nolint:gosec // G118: the poller serves every stream and outlives the request that started it; quit and c.stop end it
		go h.poll(h.run, maps.Clone(sizes))
	}
	return s, nil
}

// unsubscribe removes a stream, stopping the poller after the last.
func (h *tailHub) unsubscribe(s *tailSub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.subs, s)
	if len(h.subs) == 0 && h.run != nil {
		close(h.run.quit)
		h.run = nil
	}
}

// poll is the poller: every interval it reads what the store holds beyond
// sizes and hands it to every stream, until its run is quit or the console
// stops. It never waits for a stream.
func (h *tailHub) poll(run *tailRun, sizes map[string]uint64) {
	defer close(run.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-run.quit:
		case <-h.c.stop:
		}
		cancel()
	}()
	t := time.NewTicker(h.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		b, err := h.read(ctx, sizes)
		if err != nil && ctx.Err() == nil {
			h.c.cfg.Logger.Error("console: live tail", "error", err)
			// The store may come back; the streams get nothing new
			// meanwhile, but a sign-out still ends them.
		}
		h.mu.Lock()
		subs := make([]*tailSub, 0, len(h.subs))
		for s := range h.subs {
			subs = append(subs, s)
		}
		h.mu.Unlock()
		h.checkSessions(subs)
		if err == nil {
			sizes = b.to
		}
		for _, s := range subs {
			if err == nil && len(b.from) > 0 {
				s.put(b)
			}
			s.mu.Lock()
			ready := s.end != "" || !s.held && (len(s.pending) > 0 || s.arrived > 0)
			s.mu.Unlock()
			if ready {
				select {
				case s.wake <- struct{}{}:
				default: // a wake is already waiting
				}
			}
		}
	}
}

// checkSessions reads each cookie session of subs once: sign-out may happen
// on another instance, and the shared store says so, so a stream ends
// within one poll of it. A session that cannot be read holds its streams
// (fail closed) until it can.
func (h *tailHub) checkSessions(subs []*tailSub) {
	state := map[string]string{} // session id → "" ok, "held", or why it ended
	for _, s := range subs {
		if s.session == "" {
			continue
		}
		st, seen := state[s.session]
		if !seen {
			se, err := h.c.sessions.get(s.session, h.c.cfg.Now())
			switch {
			case err != nil:
				h.c.cfg.Logger.Error("console: session store", "error", err)
				st = "held"
			case se == nil:
				st = "Signed out."
			}
			state[s.session] = st
		}
		s.mu.Lock()
		s.held = st == "held"
		if st != "" && st != "held" {
			s.end = st
		}
		s.mu.Unlock()
	}
}

// read returns what the store holds beyond sizes: each log's new range and
// the newest (at most tailPerPoll) of those records.
func (h *tailHub) read(ctx context.Context, sizes map[string]uint64) (*tailBatch, error) {
	rs := h.c.cfg.Records
	now, err := rs.Sizes(ctx)
	if err != nil {
		return nil, err
	}
	b := &tailBatch{from: map[string]uint64{}, to: now}
	var got []recordstore.Stored
	for log, n := range now {
		if n <= sizes[log] {
			continue
		}
		b.from[log] = sizes[log]
		recs, err := rs.Range(ctx, log, sizes[log], n, tailPerPoll)
		if err != nil {
			return nil, err
		}
		got = append(got, recs...)
	}
	sort.Slice(got, func(i, j int) bool { return got[i].Record.Time.After(got[j].Record.Time) })
	if len(got) > tailPerPoll {
		got = got[:tailPerPoll]
	}
	b.recs = make([]tailRec, len(got))
	for i, st := range got {
		r := tailRec{log: st.Log, index: st.Index}
		if rec := st.Record; rec.Kind == "" || rec.Kind == decisionlog.KindDecision {
			r.ev = &tailEvent{ID: rec.DecisionID, Time: rec.Time.UTC().Format("2006-01-02 15:04:05Z"), Agent: rec.Agent.ID,
				Request: rec.Request.Method + " " + rec.Request.Path, Allowed: rec.Decision.Allowed, Reasons: rec.Decision.Reasons}
		}
		b.recs[len(got)-1-i] = r // oldest first
	}
	return b, nil
}
