// Package server owns the serve process: it assembles the decision path from
// the configuration, runs the gRPC and HTTP listeners and background loops as
// one group, and shuts them down in order.
package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/agentauthz/agentauthz/internal/config"
)

// ReadyCheck is one condition of readiness; it returns nil when satisfied.
type ReadyCheck struct {
	Name  string
	Check func() error
}

// Components are the assembled parts the server runs. Assemble builds them
// from a configuration; tests may build them by hand.
type Components struct {
	Authorization authv3.AuthorizationServer
	// ExternalProcessor signs responses (Envoy ext_proc); nil when
	// response signing is off.
	ExternalProcessor extprocv3.ExternalProcessorServer
	Registry          *prometheus.Registry
	Ready             []ReadyCheck
	// Handlers are extra HTTP handlers by pattern (e.g. the JWKS).
	Handlers map[string]http.Handler
	// Loops run in the background until their context ends, which happens
	// after the gRPC server has drained.
	Loops []func(ctx context.Context) error
	// Notes add lines to /readyz that do not make the server unready, e.g.
	// a lost control plane whose last state stays in force.
	Notes []func() []string
	// Reload is called on SIGHUP.
	Reload func() error
	// Closers run last, in order (e.g. flush and close the decision log).
	Closers []func() error
}

// Close runs the closers; for the error paths before Serve, which runs them
// itself.
func (c Components) Close() error {
	var errs []error
	for _, cl := range c.Closers {
		errs = append(errs, cl())
	}
	return errors.Join(errs...)
}

// Server runs Components on two listeners.
type Server struct {
	cfg    config.Config
	c      Components
	logger hclog.Logger
	grpc   *grpc.Server
	health *health.Server
	http   *http.Server
	certs  *serverCert // nil without grpc.tls
}

// New prepares the gRPC and HTTP servers.
func New(cfg config.Config, c Components, logger hclog.Logger) (*Server, error) {
	recvLimit, othersLimit := recvLimits(cfg, c.ExternalProcessor != nil)
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(recvLimit),
		grpc.MaxConcurrentStreams(cfg.GRPC.MaxConcurrentStreams),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		// Reused stream workers keep their grown stacks: without them stack
		// growth is a large share of a Check's CPU (docs/performance.md).
		grpc.NumStreamWorkers(64),
		// A CheckRequest with non-UTF-8 header bytes is decided (refused and
		// recorded), not failed by the codec (codec.go).
		grpc.ForceServerCodecV2(newCheckCodec()),
		// Receiving the request and deciding it must both fit in twice the
		// Check budget; a stream without its message is cut off.
		grpc.InTapHandle(receiveDeadline(2 * cfg.GRPC.CheckTimeout.D())),
	}
	if othersLimit > 0 {
		opts = append(opts, grpc.ChainUnaryInterceptor(limitUnary(othersLimit)), grpc.ChainStreamInterceptor(limitStreams(othersLimit)))
	}
	var certs *serverCert
	if cfg.GRPC.TLS.Enabled() {
		var err error
		if certs, err = newServerCert(cfg.GRPC.TLS, logger); err != nil {
			return nil, err
		}
		tc, err := serverTLS(cfg.GRPC.TLS, certs)
		if err != nil {
			return nil, err
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(tc)))
	}
	gs := grpc.NewServer(opts...)
	hs := health.NewServer()
	gs.RegisterService(authorizationDesc(othersLimit), c.Authorization)
	if c.ExternalProcessor != nil {
		extprocv3.RegisterExternalProcessorServer(gs, c.ExternalProcessor)
		hs.SetServingStatus(extprocv3.ExternalProcessor_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_NOT_SERVING)
	}
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs)
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	hs.SetServingStatus(authv3.Authorization_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_NOT_SERVING)

	s := &Server{cfg: cfg, c: c, logger: logger, grpc: gs, health: hs, certs: certs}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", s.serveReady)
	if c.Registry != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(c.Registry, promhttp.HandlerOpts{Registry: c.Registry}))
	}
	for pattern, h := range c.Handlers {
		mux.Handle(pattern, h)
	}
	s.http = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
	}
	return s, nil
}

// NewRegistry returns a registry with the Go and process collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// unauthenticatedCallers says why a Check caller on addr is not
// authenticated, or "" when it is. A record attests what the caller of Check
// reported, so anyone who reaches a listener without client certificates can
// obtain signed decisions for any agent whose certificate they hold. Loopback
// (a sidecar layout) and non-TCP listeners are not warned about.
func unauthenticatedCallers(addr net.Addr, t config.TLS) string {
	tcp, ok := addr.(*net.TCPAddr)
	if !ok || tcp.IP.IsLoopback() || t.ClientCAFile != "" {
		return ""
	}
	if !t.Enabled() {
		return "gRPC listener is plaintext on a non-loopback address: anyone who reaches it can obtain signed decisions"
	}
	return "gRPC listener takes no client certificates on a non-loopback address: anyone who reaches it can obtain signed decisions"
}

// serverTLS takes the listener's certificate from certs on every handshake,
// so a rotated certificate needs no restart.
func serverTLS(t config.TLS, certs *serverCert) (*tls.Config, error) {
	tc := &tls.Config{GetCertificate: certs.GetCertificate, MinVersion: tls.VersionTLS12}
	if t.ClientCAFile != "" {
		pemData, err := os.ReadFile(t.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("grpc.tls.client_ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemData) {
			return nil, fmt.Errorf("grpc.tls.client_ca_file: %s holds no PEM certificate", t.ClientCAFile)
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return tc, nil
}

// notReady lists the readiness checks that fail, sorted.
func (s *Server) notReady() []string {
	var out []string
	for _, rc := range s.c.Ready {
		if err := rc.Check(); err != nil {
			out = append(out, rc.Name+": "+err.Error())
		}
	}
	sort.Strings(out)
	return out
}

func (s *Server) serveReady(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if bad := s.notReady(); len(bad) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "not ready:\n"+strings.Join(bad, "\n"))
		s.writeNotes(w)
		return
	}
	fmt.Fprintln(w, "ready")
	s.writeNotes(w)
}

func (s *Server) writeNotes(w io.Writer) {
	for _, n := range s.c.Notes {
		for _, line := range n() {
			fmt.Fprintln(w, line)
		}
	}
}

// Serve runs until ctx ends or a component fails, then shuts down in order:
// health NOT_SERVING, gRPC drain, HTTP shutdown, background loops, closers.
func (s *Server) Serve(ctx context.Context, grpcLis, httpLis net.Listener, hup <-chan os.Signal) error {
	loopCtx, stopLoops := context.WithCancel(context.WithoutCancel(ctx))
	defer stopLoops()
	loops, loopCtx := errgroup.WithContext(loopCtx)
	for _, loop := range s.c.Loops {
		loops.Go(func() error { return guard(func() error { return loop(loopCtx) }) })
	}
	if s.certs != nil {
		loops.Go(func() error { return guard(func() error { return s.certs.Run(loopCtx) }) })
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := s.grpc.Serve(grpcLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("grpc: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if err := s.http.Serve(httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http: %w", err)
		}
		return nil
	})
	g.Go(func() error { return guard(func() error { return s.watchReady(gctx) }) })
	g.Go(func() error {
		select {
		case <-gctx.Done():
		case <-loopCtx.Done():
			// A background loop failed; take the process down with it.
		}
		s.shutdown()
		return nil
	})
	g.Go(func() error {
		for {
			select {
			case <-gctx.Done():
				return nil
			case <-hup:
				if s.certs != nil {
					if _, err := s.certs.reload(); err != nil {
						s.logger.Error("grpc.tls: certificate not reloaded; the last one stays in force", "error", err)
					}
				}
				if s.c.Reload == nil {
					continue
				}
				if err := s.c.Reload(); err != nil {
					s.logger.Error("reload failed; previous configuration keeps serving", "error", err)
				} else {
					s.logger.Info("reloaded")
				}
			}
		}
	})
	s.logger.Info("serving", "grpc", grpcLis.Addr().String(), "http", httpLis.Addr().String())
	if w := unauthenticatedCallers(grpcLis.Addr(), s.cfg.GRPC.TLS); w != "" {
		s.logger.Warn(w, "grpc", grpcLis.Addr().String(),
			"hint", "set grpc.tls.client_ca_file to a CA that issues only proxy certificates, or listen on 127.0.0.1 (docs/security.md, trust boundary)")
	}
	err := g.Wait()
	stopLoops()
	if lerr := loops.Wait(); lerr != nil && !errors.Is(lerr, context.Canceled) {
		err = errors.Join(err, lerr)
	}
	for _, c := range s.c.Closers {
		if cerr := c(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}
	if err != nil {
		s.logger.Error("stopped", "error", err)
	} else {
		s.logger.Info("stopped")
	}
	return err
}

// shutdown stops taking new work and drains what is in flight.
func (s *Server) shutdown() {
	s.logger.Info("shutting down: draining in-flight checks")
	s.health.Shutdown() // every service NOT_SERVING: Envoy health checks move away
	drained := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(15 * time.Second):
		s.logger.Warn("gRPC drain timed out; closing connections")
		s.grpc.Stop()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.http.Shutdown(ctx)
}

// watchReady keeps the gRPC health status in step with readiness.
func (s *Server) watchReady(ctx context.Context) error {
	last := healthpb.HealthCheckResponse_UNKNOWN
	update := func() {
		st := healthpb.HealthCheckResponse_SERVING
		bad := s.notReady()
		if len(bad) > 0 {
			st = healthpb.HealthCheckResponse_NOT_SERVING
		}
		if st != last {
			s.logger.Info("readiness changed", "serving", st == healthpb.HealthCheckResponse_SERVING, "not_ready", strings.Join(bad, "; "))
			last = st
		}
		s.health.SetServingStatus("", st)
		s.health.SetServingStatus(authv3.Authorization_ServiceDesc.ServiceName, st)
		if s.c.ExternalProcessor != nil {
			s.health.SetServingStatus(extprocv3.ExternalProcessor_ServiceDesc.ServiceName, st)
		}
	}
	update()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			update()
		}
	}
}

// guard turns a panic in a background task into an error.
func guard(f func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	return f()
}
