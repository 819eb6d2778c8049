package control

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/recordstore"
	"github.com/agentauthz/agentauthz/internal/revocation"
)

// TestShipperUnderLoad: records appended by 8 writers as fast as the log
// takes them (sync mode, group commit) all reach the control plane, in
// order and verified, while they are written. AGENTAUTHZ_SHIP_RECORDS
// (default 3,000) sets how many; the throughput and the largest lag seen
// are logged, never asserted (docs/control-plane.md reports a run).
func TestShipperUnderLoad(t *testing.T) {
	n := 3000
	if s := os.Getenv("AGENTAUTHZ_SHIP_RECORDS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	dir := t.TempDir()
	auth, err := ca.Open(filepath.Join(dir, "control"))
	if err != nil {
		t.Fatal(err)
	}
	defer auth.Close()
	op, err := OpenOperatorCA(filepath.Join(dir, "control"), true)
	if err != nil {
		t.Fatal(err)
	}
	store, err := recordstore.Open(context.Background(), filepath.Join(dir, "control", "records.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	pub, err := revocation.NewPublisher(revocation.PublisherConfig{Store: auth})
	if err != nil {
		t.Fatal(err)
	}
	api, err := NewAPI(Config{Authority: auth, Publisher: pub, Auth: NewAuthenticator(op, nil, nil), Records: store})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(api.Handler())
	cert, err := op.ServerCertificate([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequestClientCert}
	srv.StartTLS()
	defer srv.Close()
	is, err := op.Issue("replica-1", RoleReplica, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	clientCert, err := tls.X509KeyPair(is.CertPEM, is.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: op.Pool(), Certificates: []tls.Certificate{clientCert}}}}

	logDir := filepath.Join(dir, "replica", "log")
	l, err := decisionlog.Open(decisionlog.Options{Dir: logDir, KeyDir: filepath.Join(dir, "replica", "keys"), Name: "replica-1"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	sh, err := NewShipper(ShipperConfig{LogDir: logDir, Name: "replica-1", Keys: l.PublicKeys, URL: srv.URL, Client: client,
		Registerer: prometheus.NewRegistry(), Poll: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sh.Run(ctx) }()

	start := time.Now()
	var maxLag uint64
	stopSampling := make(chan struct{})
	var sampled sync.WaitGroup
	sampled.Add(1)
	go func() {
		defer sampled.Done()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopSampling:
				return
			case <-tick.C:
				if seen, acked := sh.seen.Load(), sh.acked.Load(); seen > acked {
					maxLag = max(maxLag, seen-acked)
				}
			}
		}
	}()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				rec := &decisionlog.Record{DecisionID: fmt.Sprintf("d-%06d", i), Agent: decisionlog.Agent{ID: "bot", Tenant: "acme.test"},
					Request:  decisionlog.Request{Method: "GET", Path: "/v1/payments", Operation: "payments:read"},
					Decision: decisionlog.Decision{Allowed: true, HTTPStatus: 200, Reasons: []string{"allowed"}}}
				if _, err := l.Append(context.Background(), rec); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	written := time.Since(start)
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := store.LogCursor(context.Background(), "replica-1")
		if err != nil {
			t.Fatal(err)
		}
		if c.Size == uint64(n) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stored %d of %d records", c.Size, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	all := time.Since(start)
	close(stopSampling)
	sampled.Wait()
	cancel()
	<-done
	v, err := store.Verify(context.Background(), "replica-1", nil)
	if err != nil || v.Problem != nil || v.Records != uint64(n) {
		t.Fatalf("verify: %+v %v", v, err)
	}
	t.Logf("%d records: written in %v (%.0f/s), all stored %v after the first (%.0f/s), stored %v after the last was written; largest lag seen %d records",
		n, written.Round(time.Millisecond), float64(n)/written.Seconds(), all.Round(time.Millisecond), float64(n)/all.Seconds(),
		(all - written).Round(time.Millisecond), maxLag)
}
