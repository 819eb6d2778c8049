package console

import (
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
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
//
// The page and its stream meet exactly: the page carries the position it
// was rendered at (each log's size, tailPos), and the stream it opens first
// sends what was stored between that position and its own opening (the
// backfill), then what the poller finds after. Each batch a stream sends
// ends with its new position as the event id, so a browser that reconnects
// (Last-Event-ID) resumes where it was.

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
	// tailMaxPos bounds a position token. The browser sends it twice when
	// it reconnects (the URL and Last-Event-ID), within the server's 16 KiB
	// of request headers; about 300 logs fit.
	tailMaxPos = 6 << 10
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
	} else if recs, sizes, err := c.firstRows(r.Context()); err != nil {
		c.cfg.Logger.Error("console: record store", "error", err)
		data["RecordsErr"] = true
	} else {
		data["Records"] = recs
		data["After"] = c.positionToken(v, sizes)
	}
	c.render(w, r, http.StatusOK, "live", v, data)
}

// firstRows returns the live page's rows and the position (each log's
// size) they are the newest of.
func (c *Console) firstRows(ctx context.Context) ([]recordstore.Stored, map[string]uint64, error) {
	sizes, err := c.cfg.Records.Sizes(ctx)
	if err != nil {
		return nil, nil, err
	}
	recs, err := c.rowsBelow(ctx, sizes)
	return recs, sizes, err
}

// rowsBelow is the newest (at most tailFirst) records below sizes. The
// sizes are read first, and a record stored after them (while the rows are
// read) is left to the stream's backfill: the page and its stream never
// show one decision twice.
func (c *Console) rowsBelow(ctx context.Context, sizes map[string]uint64) ([]recordstore.Stored, error) {
	p, err := c.cfg.Records.Find(ctx, recordstore.Query{Limit: tailFirst, Newest: true})
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(p.Records, func(st recordstore.Stored) bool { return st.Index >= sizes[st.Log] }), nil
}

// tailPos is a position in the record store: each log's size, by logKey.
type tailPos map[string]uint64

// logKey names a log in a position: 12 characters (72 bits of SHA-256)
// whatever the log's name, so a position stays short.
func logKey(name string) string {
	h := sha256.Sum256([]byte(name))
	return base64.RawURLEncoding.EncodeToString(h[:9])
}

// tailMACLen is the length of a position token's MAC (16 bytes, base64url).
const tailMACLen = 22

// positionToken is sizes as a token for v: a MAC (the console's key, bound
// to v's CSRF token, so a position works only for the viewer it was made
// for, on any instance), then each log's key and size. "" when it would be
// longer than tailMaxPos.
func (c *Console) positionToken(v *viewer, sizes map[string]uint64) string {
	p := make(tailPos, len(sizes))
	for log, n := range sizes {
		p[logKey(log)] = n
	}
	entries := encodePos(p)
	if tailMACLen+len(entries) > tailMaxPos {
		return ""
	}
	return c.positionMAC(v, entries) + entries
}

func (c *Console) positionMAC(v *viewer, entries string) string {
	m := hmac.New(sha256.New, c.csrfKey)
	m.Write([]byte("agentauthz console tail position\x00"))
	m.Write([]byte(v.CSRF))
	m.Write([]byte{0})
	m.Write([]byte(entries))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil)[:16])
}

// errBadPosition refuses a stream's position.
var errBadPosition = errors.New("the live page's position is not valid here: reload the page")

// parsePosition checks a token from the page or Last-Event-ID: bounded,
// made by this console for v, and well formed.
func (c *Console) parsePosition(v *viewer, tok string) (tailPos, error) {
	if len(tok) < tailMACLen || len(tok) > tailMaxPos {
		return nil, errBadPosition
	}
	mac, entries := tok[:tailMACLen], tok[tailMACLen:]
	if !hmac.Equal([]byte(mac), []byte(c.positionMAC(v, entries))) {
		return nil, errBadPosition
	}
	return decodePos(entries)
}

// encodePos writes "~KEY.SIZE" per log, in key order.
func encodePos(p tailPos) string {
	keys := slices.Sorted(maps.Keys(p))
	var b strings.Builder
	for _, k := range keys {
		b.WriteByte('~')
		b.WriteString(k)
		b.WriteByte('.')
		b.WriteString(strconv.FormatUint(p[k], 10))
	}
	return b.String()
}

// decodePos reads what encodePos wrote, and only that: keys in strictly
// increasing order, sizes in canonical decimal up to 2^63-1.
func decodePos(s string) (tailPos, error) {
	p := tailPos{}
	if s == "" {
		return p, nil
	}
	if len(s) > tailMaxPos || s[0] != '~' {
		return nil, errBadPosition
	}
	last := ""
	for _, e := range strings.Split(s[1:], "~") {
		k, n, ok := strings.Cut(e, ".")
		if !ok || len(k) != 12 || k <= last || len(n) == 0 || len(n) > 19 || (n[0] == '0' && len(n) > 1) {
			return nil, errBadPosition
		}
		if b, err := base64.RawURLEncoding.DecodeString(k); err != nil || len(b) != 9 {
			return nil, errBadPosition
		}
		size, err := strconv.ParseUint(n, 10, 63)
		if err != nil {
			return nil, errBadPosition
		}
		p[k], last = size, k
	}
	return p, nil
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
	// The browser's Last-Event-ID (a reconnection) is newer than the
	// page's position.
	var after tailPos
	if tok := cmp.Or(r.Header.Get("Last-Event-ID"), r.URL.Query().Get("after")); tok != "" {
		var err error
		if after, err = c.parsePosition(v, tok); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	}
	sub, err := c.hub.subscribe(ctx, v.sessionID, after)
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
	send := func(event, id, data string) bool {
		if id != "" {
			event += "\nid: " + id
		}
		//nolint:gosec // G705: text/event-stream, not HTML; the event names are constants, the id is base64url, '~' and '.', and data is JSON or fixed text
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
			send("end", "", "The control plane is stopping.")
			return
		case <-sessionEnd:
			send("end", "", "The session ended: sign in again.")
			return
		case <-maxAge.C:
			return // the browser reconnects
		case <-beat.C:
			if _, err := fmt.Fprint(w, ": heartbeat\n\n"); err != nil || rc.Flush() != nil {
				return
			}
		case <-sub.wake:
			evs, arrived, pos, end := sub.take()
			if end != "" {
				send("end", "", end)
				return
			}
			if arrived > len(evs) {
				if !send("sampled", "", fmt.Sprintf(`{"arrived":%d,"shown":%d}`, arrived, len(evs))) {
					return
				}
			}
			// Oldest first, so the page, which adds each at the top,
			// ends with the newest at the top. The last carries the
			// position the batch reaches.
			for i, ev := range evs {
				b, _ := json.Marshal(ev)
				id := ""
				if i == len(evs)-1 {
					id = c.positionToken(v, pos)
				}
				if !send("decision", id, string(b)) {
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
	// pos is each log's size up to which every record is pending, sent,
	// or counted in arrived.
	pos  map[string]uint64
	held bool   // the session could not be checked: send nothing
	end  string // the stream must end, saying this
}

// take returns what the stream has to send (oldest first), how many
// decisions arrived since the last take, the position that reaches, and
// why to end, if it must.
func (s *tailSub) take() ([]tailEvent, int, map[string]uint64, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.end != "" || s.held {
		return nil, 0, nil, s.end
	}
	evs, arrived := s.pending, s.arrived
	s.pending, s.arrived = nil, 0
	return evs, arrived, maps.Clone(s.pos), ""
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
	s.trim()
	for log, to := range b.to {
		s.pos[log] = max(s.pos[log], to)
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

// backfill adds b, what was stored between the page's position and the
// stream's floor: older than anything the poller puts.
func (s *tailSub) backfill(b *tailBatch) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var evs []tailEvent
	for log, from := range b.from {
		s.arrived += int(b.to[log] - from)
	}
	for _, r := range b.recs {
		if r.ev == nil {
			s.arrived-- // counted above, not a decision
			continue
		}
		evs = append(evs, *r.ev)
	}
	s.pending = append(evs, s.pending...)
	s.trim()
}

// trim keeps the newest tailPerPoll pending decisions.
func (s *tailSub) trim() {
	if n := len(s.pending) - tailPerPoll; n > 0 {
		s.pending = append(s.pending[:0], s.pending[n:]...)
	}
}

// wakeUp tells the stream there is something to take.
func (s *tailSub) wakeUp() {
	select {
	case s.wake <- struct{}{}:
	default: // a wake is already waiting
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
// The stream is sent what is stored after the store's sizes it reads here
// (its floor); reading them under h.mu, which the poller takes after each
// read, makes that exact: a poll that read before them delivers to this
// stream (what is above them), one that read after them is the next. With
// after (the page's position), the stream is first sent what was stored
// between after and its floor: the newest tailPerPoll of that, and how
// many there were.
func (h *tailHub) subscribe(ctx context.Context, session string, after tailPos) (*tailSub, error) {
	s, sizes, err := h.register(ctx, session)
	if err != nil || after == nil {
		return s, err
	}
	from := map[string]uint64{}
	for log, n := range sizes {
		from[log] = min(after[logKey(log)], n) // a log not in after is new since
	}
	b, err := h.read(ctx, from, sizes)
	if err != nil {
		h.unsubscribe(s)
		return nil, err
	}
	s.backfill(b)
	if len(b.from) > 0 {
		s.wakeUp()
	}
	return s, nil
}

// register is subscribe's part under h.mu: the floor and the poller.
func (h *tailHub) register(ctx context.Context, session string) (*tailSub, map[string]uint64, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	sizes, err := h.c.cfg.Records.Sizes(ctx)
	if err != nil {
		return nil, nil, err
	}
	s := &tailSub{session: session, wake: make(chan struct{}, 1), floor: sizes, pos: maps.Clone(sizes)}
	if h.subs == nil {
		h.subs = map[*tailSub]struct{}{}
	}
	h.subs[s] = struct{}{}
	if h.run == nil {
		h.run = &tailRun{quit: make(chan struct{}), done: make(chan struct{})}
		//nolint:gosec // G118: the poller serves every stream and outlives the request that started it; quit and c.stop end it
		go h.poll(h.run, maps.Clone(sizes))
	}
	return s, sizes, nil
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
		var b *tailBatch
		now, err := h.c.cfg.Records.Sizes(ctx)
		if err == nil {
			b, err = h.read(ctx, sizes, now)
		}
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
				s.wakeUp()
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

// read returns what the store holds between sizes and now: each log's new
// range and the newest (at most tailPerPoll) of those records.
func (h *tailHub) read(ctx context.Context, sizes, now map[string]uint64) (*tailBatch, error) {
	rs := h.c.cfg.Records
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
