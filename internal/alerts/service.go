// Package alerts runs the anomaly detector inside the control plane: it
// follows the central decision store (records the control plane verified
// before storing them), raises explained alerts, writes each as a signed row
// of the change log, and applies each rule's response (notify, propose a
// restriction for a responder to approve, or restrict at once with an expiry
// and a required review) through the fleet-wide restrictions of the CA
// inventory. Its own store (<data>/alerts.db, or tables of the control
// plane's PostgreSQL database) keeps the alerts with their acknowledgements
// and responses, and the detector's state and per-log cursors, so a restart
// resumes where it left off; a lease in it lets one control-plane instance
// at a time detect.
package alerts

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentauthz/agentauthz/internal/anomaly"
	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/recordstore"
)

// Operator is how the change log names the detector.
const Operator = "anomaly-detector (system)"

// Change-log events written here (docs/anomaly.md, "In the control plane").
const (
	EventAlert    = "alert"          // an alert, explained (detail: its JSON)
	EventAck      = "alert_ack"      // a responder looked at it
	EventProposed = "alert_proposed" // a restriction proposed for a responder to approve
	EventApplied  = "alert_applied"  // a restriction applied at once, review required
	EventFailed   = "alert_failed"   // a response that could not be applied
	EventApprove  = "alert_approve"  // a responder approved a proposal (applied) or kept an automatic restriction
	EventDismiss  = "alert_dismiss"  // a responder refused a proposal or undid an automatic restriction
)

// Errors the API maps to answers.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict")
	ErrInvalid  = errors.New("invalid")
)

// Config configures the service.
type Config struct {
	Authority *ca.Authority
	Records   *recordstore.Store
	// Path is the alert store; default <Authority's data dir>/alerts.db.
	Path string
	// Store, when a postgres:// URL (the control plane's --store), keeps
	// the alert store in that database instead of Path, shared by every
	// control-plane instance on it.
	Store     string
	Responses Responses
	Detector  anomaly.Config
	// Poll is how often the store is read when no shipment wakes the
	// service (default 1 s); SaveEvery how often the detector state is
	// saved while records flow (default 10 s).
	Poll, SaveEvery time.Duration
	// Lease is how long the detector lease lasts without renewal: how
	// long a crashed instance blocks the others (default 3×Poll + 10 s; it
	// is renewed every step).
	Lease time.Duration
	// Webhook, when set, receives every alert as JSON.
	Webhook    string
	Logger     hclog.Logger
	Registerer prometheus.Registerer
	// Now is the wall clock (expiries; the lease on SQLite, whose instances
	// share a host; on PostgreSQL the lease runs on the database's clock);
	// default time.Now.
	Now func() time.Time
}

// Service is the detector in the control plane.
type Service struct {
	cfg    Config
	db     *db
	log    hclog.Logger
	m      *anomaly.Metrics
	hook   *anomaly.Webhook
	holder string
	wake   chan struct{}

	records   prometheus.Counter
	responses *prometheus.CounterVec

	// Owned by Run's goroutine.
	det      *anomaly.Detector
	cursors  map[string]uint64
	dirty    bool
	lastSave time.Time

	mu sync.Mutex // serialises the responders' decisions and the detector's responses
}

// perStep bounds the records read per log and in all per step.
const (
	perLog  = 1000
	perStep = 20000
)

// New opens the alert store.
func New(cfg Config) (*Service, error) {
	if cfg.Authority == nil || cfg.Records == nil {
		return nil, errors.New("alerts: an authority and a record store are required")
	}
	if cfg.Path == "" {
		cfg.Path = filepath.Join(cfg.Authority.DataDir(), "alerts.db")
	}
	if cfg.Poll <= 0 {
		cfg.Poll = time.Second
	}
	if cfg.SaveEvery <= 0 {
		cfg.SaveEvery = 10 * time.Second
	}
	if cfg.Lease <= 0 {
		cfg.Lease = 3*cfg.Poll + 10*time.Second
	}
	if cfg.Lease <= cfg.Poll {
		return nil, fmt.Errorf("alerts: lease %s must be longer than the poll interval %s", cfg.Lease, cfg.Poll)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Detector.KnownCertificate == nil {
		cfg.Detector.KnownCertificate = newIssued(cfg.Authority, cfg.Now, cfg.Logger).has
	}
	d, err := openDB(cfg.Path, cfg.Store)
	if err != nil {
		return nil, err
	}
	var id [8]byte
	_, _ = rand.Read(id[:]) // never fails (crypto/rand)
	s := &Service{cfg: cfg, db: d, log: cfg.Logger, holder: hex.EncodeToString(id[:]), wake: make(chan struct{}, 1),
		records: prometheus.NewCounter(prometheus.CounterOpts{Name: "agentauthz_anomaly_records_total",
			Help: "Stored decision records the control plane's anomaly detector has read."}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agentauthz_anomaly_responses_total",
			Help: "Responses to alerts, by mode (propose, auto) and state (pending, applied, failed, approved, reviewed, dismissed)."}, []string{"mode", "state"}),
	}
	reg := cfg.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	s.m = anomaly.NewMetrics(reg)
	if err := errors.Join(reg.Register(s.records), reg.Register(s.responses)); err != nil {
		d.sql.Close()
		return nil, err
	}
	if cfg.Webhook != "" {
		s.hook = anomaly.NewWebhook(cfg.Webhook, s.log, s.m)
	}
	return s, nil
}

// Close closes the alert store (after Run has returned).
func (s *Service) Close() error { return s.db.sql.Close() }

// Wake makes Run read the store now (the API calls it after storing a
// shipment); it never blocks.
func (s *Service) Wake() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Run follows the record store until ctx ends, then saves the detector's
// state. Only the instance holding the lease in the alert store detects;
// another waits and takes over when the lease runs out.
func (s *Service) Run(ctx context.Context) error {
	if s.hook != nil {
		hctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		go s.hook.Run(hctx)
		defer func() { cancel(); s.hook.Wait() }()
	}
	s.log.Info("anomaly detector: following the record store", "alert_store", s.db.path, "responses", s.describeResponses())
	t := time.NewTimer(0)
	defer t.Stop()
	backoff := s.cfg.Poll
	for {
		select {
		case <-ctx.Done():
			return s.stop()
		case <-t.C:
		case <-s.wake:
		}
		more, err := s.step(ctx)
		switch {
		case err != nil && ctx.Err() != nil:
			return s.stop()
		case err != nil:
			// Start again from the last saved state: the alerts raised
			// since are recognised by id, none is lost.
			s.log.Error("anomaly detector: resuming from the last saved state", "error", err)
			s.det = nil
			backoff = min(2*backoff, 30*time.Second)
			t.Reset(backoff)
		case more:
			backoff = s.cfg.Poll
			t.Reset(0)
		default:
			backoff = s.cfg.Poll
			t.Reset(s.cfg.Poll)
		}
	}
}

func (s *Service) describeResponses() string {
	var parts []string
	for _, r := range anomaly.Rules {
		x := s.cfg.Responses.For(r)
		if x.Mode != ModeNotify {
			parts = append(parts, r+"="+x.Mode+" "+x.Action.String())
		}
	}
	if len(parts) == 0 {
		return "notify only"
	}
	return strings.Join(parts, "; ")
}

// stop saves the state and releases the lease. A failure is logged, not
// returned: the next start reads the records since the last save again.
func (s *Service) stop() error {
	var err error
	if s.det != nil {
		err = s.save()
		s.det = nil
	}
	if err = errors.Join(err, s.db.release(s.holder)); err != nil {
		s.log.Error("anomaly detector: stopping", "error", err)
	}
	return nil
}

// step takes (or keeps) the lease, reads what was stored since the cursors,
// feeds it to the detector in record-time order and handles the alerts.
// more is true when a log had more records than one step reads.
func (s *Service) step(ctx context.Context) (more bool, err error) {
	now := s.cfg.Now()
	leader, err := s.db.lease(s.holder, now, s.cfg.Lease)
	if err != nil {
		return false, err
	}
	if !leader {
		if s.det != nil {
			s.log.Warn("anomaly detector: another control-plane instance holds the lease; standing by")
			s.det = nil
		}
		return false, nil
	}
	if s.det == nil {
		if err := s.resume(); err != nil {
			return false, err
		}
	}
	if err := s.logPending(ctx); err != nil {
		return false, err
	}
	logs, err := s.cfg.Records.Logs(ctx)
	if err != nil {
		return false, err
	}
	type item struct {
		log   string
		index uint64
		ev    anomaly.Event
		ok    bool
	}
	var batch []item
	for _, l := range logs {
		from := s.cursors[l.Log]
		if l.Stored <= from || len(batch) >= perStep {
			more = more || l.Stored > from
			continue
		}
		rs, err := s.cfg.Records.Since(ctx, l.Log, from, perLog)
		if err != nil {
			return false, err
		}
		more = more || from+uint64(len(rs)) < l.Stored
		for _, r := range rs {
			ev, ok, err := anomaly.FromLine([]byte(r.Line))
			if err != nil {
				// Stored records were verified on the way in.
				return false, fmt.Errorf("stored record %s/%d: %w", r.Log, r.Index, err)
			}
			batch = append(batch, item{r.Log, r.Index, ev, ok})
		}
	}
	// Replicas ship independently: merge their records by record time.
	sort.SliceStable(batch, func(i, j int) bool { return batch[i].ev.Time.Before(batch[j].ev.Time) })
	for i := range batch {
		it := &batch[i]
		if it.ok {
			for _, a := range s.det.Observe(it.ev) {
				if err := s.raise(a); err != nil {
					return false, err
				}
			}
		}
		// Within one log, record time and index order differ a little
		// (concurrent appenders): the cursor is past the highest index.
		s.cursors[it.log] = max(s.cursors[it.log], it.index+1)
		s.dirty = true
	}
	s.records.Add(float64(len(batch)))
	if s.dirty && now.Sub(s.lastSave) >= s.cfg.SaveEvery {
		if err := s.save(); err != nil {
			return false, err
		}
	}
	return more, nil
}

// resume loads the saved detector state and cursors (or starts afresh).
func (s *Service) resume() error {
	b, cursors, err := s.db.loadState()
	if err != nil {
		return err
	}
	var st *anomaly.State
	if b != nil {
		if st, err = anomaly.Load(bytes.NewReader(b)); err != nil {
			return err
		}
	}
	s.det, s.cursors, s.dirty, s.lastSave = anomaly.New(s.cfg.Detector, st), cursors, false, s.cfg.Now()
	return nil
}

func (s *Service) save() error {
	var buf bytes.Buffer
	if err := s.det.State().Save(&buf); err != nil {
		return err
	}
	if err := s.db.saveState(s.holder, buf.Bytes(), s.cursors, s.cfg.Now()); err != nil {
		return err
	}
	s.dirty, s.lastSave = false, s.cfg.Now()
	return nil
}

// raise stores a new alert, writes it to the change log and applies its
// rule's response. An alert already stored (the same records read again
// after a restart) is skipped.
func (s *Service) raise(al anomaly.Alert) error {
	a := &Alert{ID: al.ID(), Alert: al}
	rule := s.cfg.Responses.For(al.Rule)
	canRespond := al.Tenant != "" && al.AgentID != ""
	if rule.Mode != ModeNotify && canRespond {
		a.Response = &Response{Mode: rule.Mode, Action: rule.Action, State: StatePending}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	fresh, err := s.db.insert(a)
	if err != nil || !fresh {
		return err
	}
	s.m.Alerts.WithLabelValues(al.Rule).Inc()
	if s.hook != nil {
		s.hook.Send(al)
	}
	s.log.Warn("anomaly alert", "id", a.ID, "rule", al.Rule, "agent", al.Agent, "key", al.Key)
	if rule.Mode != ModeNotify && !canRespond {
		s.log.Warn("anomaly alert: no agent in the inventory to respond to; notify only", "id", a.ID, "rule", al.Rule)
	}
	return s.record(a, true)
}

// logPending writes the change-log rows of alerts stored but not yet
// logged (the change log was busy, or the process stopped in between).
func (s *Service) logPending(ctx context.Context) error {
	as, err := s.db.unlogged(ctx)
	if err != nil || len(as) == 0 {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range as {
		if err := s.record(&as[i], false); err != nil {
			return err
		}
	}
	return nil
}

// record writes an alert's change-log row unless it is there already (only
// possible for one stored earlier: fresh is false), then its response, then
// marks it logged.
func (s *Service) record(a *Alert, fresh bool) error {
	logged := false
	if !fresh {
		var err error
		if logged, err = s.inChangeLog(a); err != nil {
			return err
		}
	}
	if !logged {
		if err := s.cfg.Authority.RecordEvent(a.Alert.Tenant, a.Alert.AgentID, "", EventAlert, Operator, alertDetail(a)); err != nil {
			return fmt.Errorf("change log: %w", err)
		}
	}
	if r := a.Response; r != nil && r.State == StatePending {
		switch r.Mode {
		case ModePropose:
			if err := s.event(a, EventProposed, Operator, map[string]string{"action": r.Action.String()}); err != nil {
				return err
			}
			s.responses.WithLabelValues(r.Mode, r.State).Inc()
		case ModeAuto:
			reason := fmt.Sprintf("anomaly alert %s (%s): automatic response, review required", a.ID, a.Alert.Rule)
			if err := s.apply(a, Operator, reason); err != nil {
				r.State, r.Error = StateFailed, err.Error()
				s.log.Error("anomaly response failed", "id", a.ID, "rule", a.Alert.Rule, "error", err)
				if err := s.event(a, EventFailed, Operator, map[string]string{"action": r.Action.String(), "error": r.Error}); err != nil {
					return err
				}
			} else {
				r.State = StateApplied
				if err := s.event(a, EventApplied, Operator, map[string]string{"action": r.Action.String(), "until": untilText(r.Until)}); err != nil {
					return err
				}
			}
			s.responses.WithLabelValues(r.Mode, r.State).Inc()
		}
	}
	a.Logged = true
	return s.db.update(a)
}

// inChangeLog reports whether the alert's row was written before the
// process stopped (only alerts stored but not marked logged are checked).
func (s *Service) inChangeLog(a *Alert) (bool, error) {
	if a.Logged {
		return true, nil
	}
	evs, err := s.cfg.Authority.Events(a.Alert.Tenant, a.Alert.AgentID)
	if err != nil {
		return false, err
	}
	want := `"id":"` + a.ID + `"`
	for _, e := range slices.Backward(evs) {
		if e.Event == EventAlert && strings.Contains(e.Detail, want) {
			return true, nil
		}
	}
	return false, nil
}

// event writes a change-log row about alert a.
func (s *Service) event(a *Alert, event, operator string, fields map[string]string) error {
	m := map[string]string{"alert": a.ID, "rule": a.Alert.Rule}
	for k, v := range fields {
		m[k] = fit(v, 256)
	}
	b, _ := json.Marshal(m) // short strings: cannot fail, fits the detail
	if err := s.cfg.Authority.RecordEvent(a.Alert.Tenant, a.Alert.AgentID, "", event, operator, clean(string(b))); err != nil {
		return fmt.Errorf("change log: %w", err)
	}
	return nil
}

// maxDetail is the change log's bound on a row's detail.
const maxDetail = 1024

// alertDetail is an alert as its change-log row carries it: compact JSON,
// the explanation shortened if it would not fit.
func alertDetail(a *Alert) string {
	type row struct {
		ID        string   `json:"id"`
		Rule      string   `json:"rule"`
		Agent     string   `json:"agent"`
		Key       string   `json:"key,omitempty"`
		Time      string   `json:"time"`
		Since     string   `json:"since"`
		Baseline  string   `json:"baseline"`
		Observed  string   `json:"observed"`
		Deviation string   `json:"deviation"`
		Decisions []string `json:"decisions"`
		Count     int      `json:"count,omitempty"`
		Sample    []string `json:"sample,omitempty"`
	}
	al := &a.Alert
	r := row{ID: a.ID, Rule: al.Rule, Agent: al.Agent, Key: al.Key, Time: al.Time.UTC().Format(time.RFC3339Nano),
		Since: al.Since.UTC().Format(time.RFC3339Nano), Baseline: al.Baseline, Observed: al.Observed, Deviation: al.Deviation,
		Decisions: slices.Clone(al.DecisionIDs), Count: al.Count, Sample: slices.Clone(al.Sample)}
	for limit := 400; ; limit /= 2 {
		b, _ := json.Marshal(r) // strings: cannot fail
		if len(b) <= maxDetail {
			return clean(string(b))
		}
		if len(r.Sample) > 2 { // the count stays; the store keeps the whole sample
			r.Sample = r.Sample[:2]
		}
		for i := range r.Sample {
			r.Sample[i] = fit(r.Sample[i], limit/2)
		}
		r.Agent, r.Key = fit(r.Agent, limit), fit(r.Key, limit)
		r.Baseline, r.Observed, r.Deviation = fit(r.Baseline, limit), fit(r.Observed, limit), fit(r.Deviation, limit)
		if len(r.Decisions) > 3 {
			r.Decisions = r.Decisions[len(r.Decisions)-3:]
		}
		for i := range r.Decisions {
			r.Decisions[i] = fit(r.Decisions[i], limit)
		}
	}
}

// fit shortens s to at most n bytes on a rune boundary, marking the cut.
func fit(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := max(n-3, 0)
	for cut > 0 && !utf8Start(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

func utf8Start(b byte) bool { return b&0xc0 != 0x80 }

// clean drops DEL, which JSON leaves as is and the change log refuses.
func clean(s string) string { return strings.ReplaceAll(s, "\x7f", "") }
