//go:build unix

package alerts

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/anomaly"
	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/recordstore"
	"github.com/agentauthz/agentauthz/internal/testenv"
)

// BenchmarkFollow: the control plane's detector reading a record store
// that holds AGENTAUTHZ_BENCH_RECORDS (default 20,000) real signed records
// of the generated 50-agent history (two replicas' logs): stored records
// read, decoded and run through every rule per CPU-second of this process
// (the wall clock would count the neighbours on a shared machine).
//
//	AGENTAUTHZ_BENCH_RECORDS=100000 go test -run '^$' -bench Follow -benchtime 1x ./internal/alerts
func BenchmarkFollow(b *testing.B) {
	n := 20000
	if s := os.Getenv("AGENTAUTHZ_BENCH_RECORDS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	dir := b.TempDir()
	auth, err := ca.Open(filepath.Join(dir, "control"))
	if err != nil {
		b.Fatal(err)
	}
	defer auth.Close()
	store, err := recordstore.Open(context.Background(), filepath.Join(dir, "control", "records.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	evs := anomaly.Generate(anomaly.TrafficConfig{Seed: 1}).Events
	if n > len(evs) {
		n = len(evs)
	}
	for r := range 2 {
		var part []anomaly.Event
		for i := r; i < n; i += 2 {
			part = append(part, evs[i])
		}
		shipEvents(b, store, filepath.Join(dir, "replica"+strconv.Itoa(r)), "replica-"+strconv.Itoa(r), part)
	}
	runtime.GC() // the setup's garbage is not the detector's
	b.ResetTimer()
	for range b.N {
		os.Remove(filepath.Join(dir, "alerts.db"))
		s, err := New(Config{Authority: auth, Records: store, Path: filepath.Join(dir, "alerts.db"), SaveEvery: time.Hour})
		if err != nil {
			b.Fatal(err)
		}
		cpu0, t0 := testenv.CPUTime(), time.Now()
		for {
			more, err := s.step(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			if !more {
				break
			}
		}
		cpu, wall := testenv.CPUTime()-cpu0, time.Since(t0)
		if got := s.cursors["replica-0"] + s.cursors["replica-1"]; got != uint64(n) {
			ls, _ := store.Logs(context.Background())
			b.Fatalf("read %d records, want %d; the store holds %+v", got, n, ls)
		}
		b.ReportMetric(float64(n)/cpu.Seconds(), "records/CPU-s")
		b.ReportMetric(float64(n)/wall.Seconds(), "records/s")
		s.Close()
	}
}

// shipEvents writes events as decision records to a log named name and
// stores them as its replica would ship them.
func shipEvents(b *testing.B, store *recordstore.Store, dir, name string, evs []anomaly.Event) {
	b.Helper()
	l, err := decisionlog.Open(decisionlog.Options{Dir: filepath.Join(dir, "log"), KeyDir: filepath.Join(dir, "keys"), Name: name, Mode: decisionlog.Async})
	if err != nil {
		b.Fatal(err)
	}
	keys := l.PublicKeys()
	var wg sync.WaitGroup
	work := make(chan anomaly.Event)
	for range 8 {
		wg.Go(func() {
			for e := range work {
				method, path, _ := strings.Cut(e.Route, " ")
				rec := &decisionlog.Record{DecisionID: e.DecisionID, Time: e.Time,
					Agent:    decisionlog.Agent{ID: e.AgentID, SPIFFEID: e.Agent, Tenant: e.Tenant, CertSHA256: e.CertSHA256},
					Request:  decisionlog.Request{Method: method, Path: path, Operation: e.Operation, Source: strings.TrimSuffix(e.Network, "/24")},
					Decision: decisionlog.Decision{Allowed: e.Allowed, HTTPStatus: 200, Reasons: []string{e.Reason}}}
				if _, err := l.Append(context.Background(), rec); err != nil {
					b.Error(err)
				}
			}
		})
	}
	for _, e := range evs {
		work <- e
	}
	close(work)
	wg.Wait()
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
	r := decisionlog.NewReader(filepath.Join(dir, "log"))
	defer r.Close()
	var sh recordstore.Shipment
	var g recordstore.Group
	recs := 0
	flush := func() {
		if len(sh.Groups) == 0 {
			return
		}
		sh.Log, sh.Keys = name, keys
		if res, err := store.Append(context.Background(), sh); err != nil || res.Refused != nil {
			b.Fatalf("ship: %v %+v", err, res)
		}
		sh, recs = recordstore.Shipment{}, 0
	}
	for {
		e, cp, err := r.NextOrCheckpoint()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
		if cp != nil {
			g.Checkpoint = string(cp)
			sh.Groups, g = append(sh.Groups, g), recordstore.Group{}
			if recs >= 1000 {
				flush()
			}
			continue
		}
		g.Records = append(g.Records, e.Raw)
		recs++
	}
	flush()
}
