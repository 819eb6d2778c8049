package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/testca"
)

// stubAuthz answers OK, optionally blocking until released.
type stubAuthz struct {
	authv3.UnimplementedAuthorizationServer
	entered chan struct{}
	release chan struct{}
}

func (s *stubAuthz) Check(ctx context.Context, _ *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	if s.entered != nil {
		s.entered <- struct{}{}
		<-s.release
	}
	return &authv3.CheckResponse{}, nil
}

type running struct {
	grpcAddr, httpAddr string
	cancel             func()
	done               chan error
}

func start(t *testing.T, cfg config.Config, c Components) *running {
	t.Helper()
	cfg.ApplyDefaults()
	srv, err := New(cfg, c, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{grpcAddr: gl.Addr().String(), httpAddr: hl.Addr().String(), cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- srv.Serve(ctx, gl, hl, nil) }()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	return r
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestHTTPEndpointsAndHealth(t *testing.T) {
	var ready atomic.Bool
	reg := NewRegistry()
	r := start(t, config.Config{DataDir: t.TempDir()}, Components{
		Authorization: &stubAuthz{},
		Registry:      reg,
		Ready: []ReadyCheck{{Name: "policy", Check: func() error {
			if !ready.Load() {
				return errors.New("no policy compiled yet")
			}
			return nil
		}}},
	})
	if code, _ := get(t, "http://"+r.httpAddr+"/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	if code, body := get(t, "http://"+r.httpAddr+"/readyz"); code != 503 || !strings.Contains(body, "policy: no policy compiled yet") {
		t.Errorf("/readyz = %d %q, want 503 naming the policy", code, body)
	}
	conn, err := grpc.NewClient(r.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	status := func() healthpb.HealthCheckResponse_ServingStatus {
		resp, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: authv3.Authorization_ServiceDesc.ServiceName})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetStatus()
	}
	if s := status(); s != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health before ready = %v", s)
	}
	ready.Store(true)
	if code, _ := get(t, "http://"+r.httpAddr+"/readyz"); code != 200 {
		t.Errorf("/readyz after ready = %d", code)
	}
	deadline := time.Now().Add(5 * time.Second)
	for status() != healthpb.HealthCheckResponse_SERVING {
		if time.Now().After(deadline) {
			t.Fatal("gRPC health never became SERVING")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, body := get(t, "http://"+r.httpAddr+"/metrics"); code != 200 || !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics = %d", code)
	}
}

// TestGracefulDrain: a Check in flight when shutdown starts still completes.
func TestGracefulDrain(t *testing.T) {
	stub := &stubAuthz{entered: make(chan struct{}), release: make(chan struct{})}
	r := start(t, config.Config{DataDir: t.TempDir()}, Components{Authorization: stub})
	conn, err := grpc.NewClient(r.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	result := make(chan error, 1)
	go func() {
		_, err := authv3.NewAuthorizationClient(conn).Check(context.Background(), &authv3.CheckRequest{})
		result <- err
	}()
	<-stub.entered
	r.cancel()
	select {
	case err := <-r.done:
		t.Fatalf("server stopped (%v) with a Check in flight", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(stub.release)
	if err := <-result; err != nil {
		t.Errorf("in-flight Check failed during drain: %v", err)
	}
	if err := <-r.done; err != nil {
		t.Errorf("serve: %v", err)
	}
	r.done <- nil // for the cleanup
}

func TestTLSAndMutualTLS(t *testing.T) {
	ca := testca.New(t)
	dir := t.TempDir()
	srvLeaf := ca.Issue("agentauthz", testca.EKU(x509.ExtKeyUsageServerAuth), testca.Template(func(c *x509.Certificate) {
		c.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}))
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	certFile, keyFile, caFile := write("srv.pem", srvLeaf.PEM()), write("srv.key", srvLeaf.KeyPEM()), write("ca.pem", ca.PEM())
	client := ca.Issue("envoy")
	clientCert, err := tls.X509KeyPair(client.PEM(), client.KeyPEM())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)

	call := func(addr string, tc *tls.Config) error {
		creds := insecure.NewCredentials()
		if tc != nil {
			creds = credentials.NewTLS(tc)
		}
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = authv3.NewAuthorizationClient(conn).Check(ctx, &authv3.CheckRequest{})
		return err
	}

	t.Run("tls", func(t *testing.T) {
		cfg := config.Config{DataDir: dir, GRPC: config.GRPC{TLS: config.TLS{CertFile: certFile, KeyFile: keyFile}}}
		r := start(t, cfg, Components{Authorization: &stubAuthz{}})
		if err := call(r.grpcAddr, &tls.Config{RootCAs: pool}); err != nil {
			t.Errorf("TLS client: %v", err)
		}
		if err := call(r.grpcAddr, nil); err == nil {
			t.Error("plaintext client accepted by a TLS listener")
		}
	})
	t.Run("mtls", func(t *testing.T) {
		cfg := config.Config{DataDir: dir, GRPC: config.GRPC{TLS: config.TLS{CertFile: certFile, KeyFile: keyFile, ClientCAFile: caFile}}}
		r := start(t, cfg, Components{Authorization: &stubAuthz{}})
		if err := call(r.grpcAddr, &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{clientCert}}); err != nil {
			t.Errorf("mTLS client: %v", err)
		}
		if err := call(r.grpcAddr, &tls.Config{RootCAs: pool}); err == nil {
			t.Error("client without certificate accepted by an mTLS listener")
		}
	})
}

func TestUnauthenticatedCallersWarning(t *testing.T) {
	mtls := config.TLS{CertFile: "c", KeyFile: "k", ClientCAFile: "ca"}
	serverOnly := config.TLS{CertFile: "c", KeyFile: "k"}
	for _, c := range []struct {
		addr net.Addr
		tls  config.TLS
		want string // substring; "" for no warning
	}{
		{&net.TCPAddr{IP: net.IPv6unspecified, Port: 9191}, config.TLS{}, "plaintext"},
		{&net.TCPAddr{IP: net.IPv4zero, Port: 9191}, config.TLS{}, "plaintext"},
		{&net.TCPAddr{IP: net.ParseIP("10.1.2.3"), Port: 9191}, serverOnly, "no client certificates"},
		{&net.TCPAddr{IP: net.IPv4zero, Port: 9191}, mtls, ""},
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 9191}, config.TLS{}, ""},
		{&net.TCPAddr{IP: net.IPv6loopback, Port: 9191}, config.TLS{}, ""},
		{&net.UnixAddr{Name: "/run/agentauthz.sock", Net: "unix"}, config.TLS{}, ""},
	} {
		got := unauthenticatedCallers(c.addr, c.tls)
		if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("%v, tls %+v: %q, want %q", c.addr, c.tls, got, c.want)
		}
	}
}

// TestServeWarnsAboutPlaintextOnAllInterfaces: the warning reaches the log
// when serve starts on a wildcard address without client certificates.
func TestServeWarnsAboutPlaintextOnAllInterfaces(t *testing.T) {
	var buf syncBuffer
	cfg := config.Config{DataDir: t.TempDir()}
	cfg.ApplyDefaults()
	srv, err := New(cfg, Components{Authorization: &stubAuthz{}}, hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Info}))
	if err != nil {
		t.Fatal(err)
	}
	gl, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, gl, hl, nil) }()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(buf.String(), "gRPC listener is plaintext") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if out := buf.String(); !strings.Contains(out, "[WARN]") || !strings.Contains(out, "gRPC listener is plaintext") ||
		!strings.Contains(out, "grpc.tls.client_ca_file") {
		t.Fatalf("no plaintext warning in the log:\n%s", out)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
