package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/recordstore"
)

// Shipper defaults.
const (
	DefaultShipBatch        = 500
	DefaultShipBatchBytes   = 4 << 20
	DefaultShipPoll         = 200 * time.Millisecond
	DefaultShipDrainTimeout = 10 * time.Second
	shipBackoffMax          = 30 * time.Second
)

// ShipperConfig configures a Shipper.
type ShipperConfig struct {
	// LogDir is the replica's decision log; Name its log name, which must
	// be the name of the replica certificate.
	LogDir, Name string
	// Keys returns the log's public keys (decisionlog.Log.PublicKeys).
	Keys func() decisionlog.KeySet
	// URL is the control plane's base URL; Client carries the replica's
	// mTLS certificate.
	URL    string
	Client *http.Client
	Logger hclog.Logger
	// Registerer receives agentauthz_shipper_* metrics; nil registers none.
	Registerer prometheus.Registerer
	// Batch and BatchBytes bound one shipment (and so the memory used).
	Batch, BatchBytes int
	// Poll is how often the log is looked at for new records once shipped
	// up to its end.
	Poll time.Duration
	// DrainTimeout bounds shipping what is left when the replica stops.
	DrainTimeout time.Duration
}

// Shipper sends the replica's signed records to the control plane in the
// background: at least once (the control plane drops identical
// duplicates), resuming from what the control plane says it holds, in
// batches of bounded size, never on the decision path. The local log stays
// the source of truth.
type Shipper struct {
	cfg                  ShipperConfig
	log                  hclog.Logger
	acked, seen, refused atomic.Uint64
	oldestUnacked        atomic.Int64 // Unix µs of the oldest record read but not acked; 0 when caught up
	shipped              prometheus.Counter
	errs                 *prometheus.CounterVec
}

// NewShipper checks cfg and registers the metrics.
func NewShipper(cfg ShipperConfig) (*Shipper, error) {
	if cfg.LogDir == "" || cfg.Name == "" || cfg.URL == "" || cfg.Client == nil || cfg.Keys == nil {
		return nil, errors.New("shipper: log dir, name, keys, url and client are required")
	}
	if cfg.Batch <= 0 || cfg.Batch > MaxShipRecords {
		cfg.Batch = DefaultShipBatch
	}
	if cfg.BatchBytes <= 0 || cfg.BatchBytes > MaxShipBytes/2 {
		cfg.BatchBytes = DefaultShipBatchBytes
	}
	if cfg.Poll <= 0 {
		cfg.Poll = DefaultShipPoll
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = DefaultShipDrainTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	s := &Shipper{cfg: cfg, log: cfg.Logger,
		shipped: prometheus.NewCounter(prometheus.CounterOpts{Name: "agentauthz_shipper_records_total", Help: "Records the control plane acknowledged."}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agentauthz_shipper_errors_total",
			Help: "Failed shipments, by kind (transport, refused)."}, []string{"kind"}),
	}
	if cfg.Registerer != nil {
		lagRecords := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "agentauthz_shipper_lag_records",
			Help: "Records in the local log the control plane has not acknowledged yet."},
			func() float64 { return float64(s.seen.Load() - min(s.acked.Load(), s.seen.Load())) })
		lagSeconds := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "agentauthz_shipper_lag_seconds",
			Help: "Age of the oldest record not yet acknowledged by the control plane (0 when caught up)."},
			func() float64 {
				if t := s.oldestUnacked.Load(); t != 0 {
					return time.Since(time.UnixMicro(t)).Seconds()
				}
				return 0
			})
		for _, c := range []prometheus.Collector{s.shipped, s.errs, lagRecords, lagSeconds} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return s, nil
}

// Run ships until ctx ends, then ships what is left (at most DrainTimeout),
// so that a replica stopped with SIGTERM leaves nothing behind that it could
// reach the control plane with.
func (s *Shipper) Run(ctx context.Context) error {
	backoff := time.Second
	for ctx.Err() == nil {
		err := s.session(ctx, false)
		if ctx.Err() != nil {
			break
		}
		s.log.Warn("shipper: shipping interrupted; retrying", "error", err, "in", backoff)
		t := time.NewTimer(backoff/2 + rand.N(backoff/2)) //nolint:gosec // jitter, not a secret
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
		backoff = min(2*backoff, shipBackoffMax)
	}
	// A request abandoned when ctx ended can leave a dialled connection
	// that never carries a request; the control plane's graceful shutdown
	// would wait seconds on it. Close it, and the drain's, on the way out.
	s.cfg.Client.CloseIdleConnections()
	defer s.cfg.Client.CloseIdleConnections()
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.DrainTimeout)
	defer cancel()
	if err := s.session(dctx, true); err != nil {
		s.log.Error("shipper: records left unshipped at stop; the next start ships them from the local log",
			"acked_seq", s.acked.Load(), "local_seq", s.seen.Load(), "error", err)
		return nil
	}
	s.log.Info("shipper: every record shipped before stopping", "seq", s.acked.Load())
	return nil
}

// session asks the control plane how far the log is stored and ships from
// there, whole group-commit batches (records and the checkpoint that signs
// them); with drain it returns once the end of the local log is shipped.
func (s *Shipper) session(ctx context.Context, drain bool) error {
	var cur recordstore.Cursor
	if err := s.call(ctx, http.MethodGet, "/v1/records/cursor?log="+url.QueryEscape(s.cfg.Name), nil, &cur); err != nil {
		return err
	}
	s.acked.Store(cur.Size)
	r := decisionlog.NewReader(s.cfg.LogDir)
	defer r.Close()
	var (
		groups  []recordstore.Group
		g       recordstore.Group
		n, size int
		gFirst  uint64
	)
	flush := func() error {
		if len(groups) == 0 {
			return nil
		}
		var res recordstore.Result
		err := s.call(ctx, http.MethodPost, "/v1/records", ShipBody{Log: s.cfg.Name, Keys: s.cfg.Keys().JWKS(), Head: s.seen.Load(), Groups: groups}, &res)
		if err != nil {
			return err
		}
		s.shipped.Add(float64(res.Stored))
		s.acked.Store(res.Size)
		groups, n, size = groups[:0], 0, 0
		s.oldestUnacked.Store(0)
		return nil
	}
	for {
		e, cp, err := r.NextOrCheckpoint()
		switch {
		case errors.Is(err, io.EOF):
			// Records after the last checkpoint wait for it: a batch is
			// shipped whole, with the signature that covers it.
			if err := flush(); err != nil {
				return err
			}
			if drain {
				return nil
			}
			t := time.NewTimer(s.cfg.Poll)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
			continue
		case err != nil:
			return fmt.Errorf("read local log: %w", err)
		}
		if cp == nil {
			if len(g.Records) == 0 {
				gFirst = e.Record.Index
			}
			g.Records = append(g.Records, e.Raw)
			s.seen.Store(max(s.seen.Load(), e.Record.Index+1))
			continue
		}
		g.Checkpoint = string(cp)
		if gFirst < cur.Size || len(g.Records) == 0 {
			g = recordstore.Group{} // stored already (the control plane holds whole batches)
			continue
		}
		if n == 0 {
			if rec, err := decisionlog.DecodeRecordLine([]byte(g.Records[0])); err == nil {
				s.oldestUnacked.Store(rec.Time.UnixMicro())
			}
		}
		groups = append(groups, g)
		n += len(g.Records)
		for _, l := range g.Records {
			size += len(l)
		}
		g = recordstore.Group{}
		if n >= s.cfg.Batch || size >= s.cfg.BatchBytes {
			if err := flush(); err != nil {
				return err
			}
		}
	}
}

// call sends one JSON request to the control plane.
func (s *Shipper) call(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(s.cfg.URL, "/")+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.cfg.Client.Do(req)
	if err != nil {
		s.errs.WithLabelValues("transport").Inc()
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		s.errs.WithLabelValues("transport").Inc()
		return err
	}
	if resp.StatusCode == http.StatusUnprocessableEntity {
		var res recordstore.Result
		if json.Unmarshal(data, &res) == nil && res.Refused != nil {
			s.acked.Store(res.Size)
			s.errs.WithLabelValues("refused").Inc()
			s.refused.Add(1)
			return fmt.Errorf("control plane refused a record: %w", res.Refused)
		}
	}
	if resp.StatusCode != http.StatusOK {
		s.errs.WithLabelValues("refused").Inc()
		var e apiError
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return fmt.Errorf("control plane: %s (%s)", e.Error, e.Reason)
		}
		return fmt.Errorf("control plane: %s", resp.Status)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(data, out)
}
