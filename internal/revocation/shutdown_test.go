package revocation

import (
	"context"
	"crypto/x509"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/testca"
)

// TestRunLeavesNoIdleConnection: a fetch cancelled while its connection is
// being dialled leaves the dial running; http.Transport then parks the new
// connection in its idle pool, where it never sends a request. The server
// sees a connection in StateNew, which http.Server.Shutdown waits on for
// 5 s: `serve --dev` (publisher and watcher in one process, both stopping
// at once) exited 2 with "context deadline exceeded" now and then (the
// crash test's "clean stop after recovery: exit status 2"). Run must leave
// no connection of its own behind.
func TestRunLeavesNoIdleConnection(t *testing.T) {
	ca := testca.New(t)
	var mu sync.Mutex
	open := map[net.Conn]http.ConnState{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusServiceUnavailable) // no watch stream: the CRL fallback polls
	}))
	srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		mu.Lock()
		defer mu.Unlock()
		if s == http.StateClosed || s == http.StateHijacked {
			delete(open, c)
		} else {
			open[c] = s
		}
	}
	srv.Start()
	defer srv.Close()

	dialing := make(chan struct{}, 1)
	client := defaultHTTPClient()
	tr := client.Transport.(*http.Transport)
	dial := tr.DialContext
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		select {
		case dialing <- struct{}{}:
		default:
		}
		time.Sleep(200 * time.Millisecond) // a slow connect that outlives the cancel
		return dial(context.WithoutCancel(ctx), network, addr)
	}
	c, err := New(Config{Logger: testLogger(t), HTTPClient: client, Tenants: map[string]TenantConfig{td: {
		CAs: []*x509.Certificate{ca.Cert}, WatchURL: srv.URL + WatchPath, PollInterval: time.Hour,
	}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	<-dialing
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // the dial completes meanwhile
	mu.Lock()
	defer mu.Unlock()
	for conn, s := range open {
		t.Errorf("connection from %s left %s after Run returned", conn.RemoteAddr(), s)
	}
}
