package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/filewatch"
	"github.com/agentauthz/agentauthz/internal/identity"
	"github.com/agentauthz/agentauthz/internal/revocation"
)

// trustReloader keeps the verifier's trust bundles in step with their files.
// A bundle file that is deleted or corrupted at runtime does not take trust
// away: the last valid bundles stay in force, and the failure is logged at
// error level and counted until the file is fixed.
type trustReloader struct {
	cfg      config.Config
	verifier *identity.Verifier
	revoked  *revocation.Checker
	logger   hclog.Logger
	interval time.Duration
	errors   prometheus.Counter
	failing  prometheus.Gauge

	mu   sync.Mutex
	last [32]byte // digest of the files last applied
}

func newTrustReloader(cfg config.Config, v *identity.Verifier, rc *revocation.Checker, logger hclog.Logger, reg prometheus.Registerer) *trustReloader {
	r := &trustReloader{
		cfg: cfg, verifier: v, revoked: rc, logger: logger, interval: 2 * time.Second,
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "agentauthz_trust_bundle_reload_errors_total",
			Help: "Trust bundle reloads refused because a file was missing or invalid; the last valid bundles stay.",
		}),
		failing: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "agentauthz_trust_bundle_stale",
			Help: "1 while a trust bundle file cannot be loaded and the last valid bundles are in force.",
		}),
	}
	reg.MustRegister(r.errors, r.failing)
	r.last, _ = r.digest()
	return r
}

// digest hashes the contents of every bundle file.
func (r *trustReloader) digest() ([32]byte, error) {
	h := sha256.New()
	var errs []error
	for _, tb := range r.cfg.TrustBundles {
		if tb.File == "" {
			continue
		}
		data, err := os.ReadFile(tb.File)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		h.Write([]byte(tb.TrustDomain))
		h.Write(data)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum, errors.Join(errs...)
}

// Reload loads the bundle files and, if they all load, swaps them into the
// verifier and the revocation checker's CAs together: both are checked
// before either changes, so a refusal leaves both on the last valid bundles.
func (r *trustReloader) Reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	sum, _ := r.digest()
	bundles, _, err := loadTrust(r.cfg)
	var apply func()
	if err == nil {
		apply, err = r.verifier.PrepareBundles(bundles)
	}
	if err == nil {
		// CRLs of a rotated CA must verify against the new roots.
		cas := make(map[string][]*x509.Certificate, len(bundles))
		for _, b := range bundles {
			cas[b.TrustDomain] = b.Roots
		}
		// All or nothing; the last step that can fail.
		err = r.revoked.SetCAs(cas)
	}
	if err != nil {
		r.errors.Inc()
		r.failing.Set(1)
		r.logger.Error("trust bundles not reloaded; the last valid bundles stay in force", "error", err)
		return err
	}
	apply()
	r.failing.Set(0)
	if !bytes.Equal(sum[:], r.last[:]) {
		r.logger.Info("trust bundles reloaded", "bundles", len(bundles))
	}
	r.last = sum
	return nil
}

// Run reloads when the files' contents change (a notification, or every
// interval), and keeps retrying (loudly) while they are broken.
func (r *trustReloader) Run(ctx context.Context) error {
	var files []string
	for _, tb := range r.cfg.TrustBundles {
		if tb.File != "" {
			files = append(files, tb.File)
		}
	}
	if len(files) == 0 {
		return nil
	}
	filewatch.Run(ctx, files, filewatch.Options{Interval: r.interval, Logger: r.logger}, func() {
		sum, err := r.digest()
		r.mu.Lock()
		changed := err != nil || !bytes.Equal(sum[:], r.last[:])
		r.mu.Unlock()
		if changed {
			_ = r.Reload()
		}
	})
	return nil
}
