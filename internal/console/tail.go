package console

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/recordstore"
)

// The live tail: /ui/decisions/live shows the newest decisions and
// /ui/static/tail.js adds each new one from the server-sent events of
// /ui/decisions/stream. The stream polls the store for what each log
// stored since the last poll (the logs' sizes, then those index ranges by
// primary key), so it sees every shipped record once, whichever control
// plane instance stored it. When more arrive in one poll than a page can
// take in, it sends the newest and says how many it skipped.

// Tail limits.
const (
	// TailPoll is how often a stream looks for new records.
	TailPoll = time.Second
	// tailPerPoll is the most records one poll sends; more is sampled.
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
	sizes, err := c.cfg.Records.Sizes(ctx)
	if err != nil {
		c.cfg.Logger.Error("console: record store", "error", err)
		http.Error(w, "the record store is unavailable", http.StatusServiceUnavailable)
		return
	}
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{}) // a stream outlives any per-request write timeout
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	send := func(event, data string) bool {
		if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, data); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if _, err := fmt.Fprintf(w, "retry: 3000\n\n"); err != nil || rc.Flush() != nil {
		return
	}
	var sessionEnd <-chan time.Time
	if v.Session {
		se, err := c.sessions.get(v.sessionID, c.cfg.Now())
		if se == nil {
			if err != nil {
				c.cfg.Logger.Error("console: session store", "error", err)
			}
			send("end", "The session ended: sign in again.")
			return
		}
		t := time.NewTimer(se.expires.Sub(c.cfg.Now()))
		defer t.Stop()
		sessionEnd = t.C
	}
	poll, beat := time.NewTicker(TailPoll), time.NewTicker(tailHeartbeat)
	defer poll.Stop()
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
		case <-poll.C:
			// Sign-out may happen on another instance: the shared store
			// says, so a stream ends within TailPoll of it.
			if v.Session {
				se, err := c.sessions.get(v.sessionID, c.cfg.Now())
				if err != nil {
					c.cfg.Logger.Error("console: session store", "error", err)
					continue // fail closed on new records; the store may come back
				}
				if se == nil {
					send("end", "Signed out.")
					return
				}
			}
			evs, arrived, next, err := c.newRecords(ctx, sizes)
			if err != nil {
				c.cfg.Logger.Error("console: live tail", "error", err)
				continue // the store may come back; the stream says nothing new meanwhile
			}
			sizes = next
			if arrived > len(evs) {
				if !send("sampled", fmt.Sprintf(`{"arrived":%d,"shown":%d}`, arrived, len(evs))) {
					return
				}
			}
			// Oldest first, so the page, which adds each at the top,
			// ends with the newest at the top.
			for i := len(evs) - 1; i >= 0; i-- {
				b, _ := json.Marshal(evs[i])
				if !send("decision", string(b)) {
					return
				}
			}
		}
	}
}

// newRecords returns the newest (at most tailPerPoll) decisions stored since
// sizes, newest first, how many arrived in all, and the new sizes.
func (c *Console) newRecords(ctx context.Context, sizes map[string]uint64) ([]tailEvent, int, map[string]uint64, error) {
	now, err := c.cfg.Records.Sizes(ctx)
	if err != nil {
		return nil, 0, sizes, err
	}
	arrived := 0
	var got []recordstore.Stored
	for log, n := range now {
		if n <= sizes[log] {
			continue
		}
		arrived += int(n - sizes[log])
		rs, err := c.cfg.Records.Range(ctx, log, sizes[log], n, tailPerPoll)
		if err != nil {
			return nil, 0, sizes, err
		}
		got = append(got, rs...)
	}
	sort.Slice(got, func(i, j int) bool { return got[i].Record.Time.After(got[j].Record.Time) })
	if len(got) > tailPerPoll {
		got = got[:tailPerPoll]
	}
	evs := make([]tailEvent, 0, len(got))
	for _, st := range got {
		rec := st.Record
		if rec.Kind != "" && rec.Kind != decisionlog.KindDecision { // a key rotation
			arrived--
			continue
		}
		evs = append(evs, tailEvent{ID: rec.DecisionID, Time: rec.Time.UTC().Format("2006-01-02 15:04:05Z"), Agent: rec.Agent.ID,
			Request: rec.Request.Method + " " + rec.Request.Path, Allowed: rec.Decision.Allowed, Reasons: rec.Decision.Reasons})
	}
	return evs, arrived, now, nil
}
