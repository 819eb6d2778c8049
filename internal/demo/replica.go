package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/revocation"
	"github.com/agentauthz/agentauthz/internal/server"
)

// readyTimeout bounds the wait for a replica to load policy, revocation data
// and its log.
const readyTimeout = 15 * time.Second

// replica is one decision instance served on loopback.
type replica struct {
	Name     string
	GRPCAddr string
	HTTPAddr string
	LogDir   string
	KeyDir   string
	// JWKS is the log's public key set as served on /.well-known/jwks.json,
	// fetched the way an auditor or upstream would.
	JWKS []byte

	client  authv3.AuthorizationClient
	conn    *grpc.ClientConn
	http    *http.Client
	cancel  context.CancelFunc
	stopped chan struct{} // closed when Serve has returned
	err     error         // what Serve returned; read after stopped
	closed  bool
}

// startReplica assembles the decision path as `serve` does and serves it on
// 127.0.0.1:0 listeners until stop.
func startReplica(ctx context.Context, name, dir, policies, bundle, watchURL string, logger hclog.Logger) (*replica, error) {
	cfg := config.Config{DataDir: dir}
	cfg.GRPC.Addr, cfg.HTTP.Addr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Policy.Dir = policies
	cfg.DecisionLog.Name = name
	cfg.DecisionLog.Mode = "sync"
	cfg.TrustBundles = []config.TrustBundle{{
		TrustDomain: TrustDomain,
		File:        bundle,
		Revocation:  config.Revocation{WatchURL: watchURL},
	}}
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%s: config: %w", name, err)
	}
	comps, err := server.Assemble(cfg, logger)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	srv, err := server.New(cfg, comps, logger)
	if err != nil {
		closeAll(comps.Closers)
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	grpcLis, err := net.Listen("tcp", cfg.GRPC.Addr)
	if err != nil {
		closeAll(comps.Closers)
		return nil, fmt.Errorf("%s: listen: %w", name, err)
	}
	httpLis, err := net.Listen("tcp", cfg.HTTP.Addr)
	if err != nil {
		grpcLis.Close()
		closeAll(comps.Closers)
		return nil, fmt.Errorf("%s: listen: %w", name, err)
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r := &replica{
		Name:     name,
		GRPCAddr: grpcLis.Addr().String(),
		HTTPAddr: httpLis.Addr().String(),
		LogDir:   cfg.DecisionLog.Dir,
		KeyDir:   filepath.Join(dir, "keys"),
		http:     &http.Client{Timeout: 5 * time.Second},
		cancel:   cancel,
		stopped:  make(chan struct{}),
	}
	go func() {
		defer close(r.stopped)
		r.err = srv.Serve(sctx, grpcLis, httpLis, nil)
	}()

	conn, err := grpc.NewClient(r.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		_ = r.stop()
		return nil, fmt.Errorf("%s: dial: %w", name, err)
	}
	r.conn, r.client = conn, authv3.NewAuthorizationClient(conn)
	if err := r.waitReady(ctx); err != nil {
		_ = r.stop()
		return nil, err
	}
	if r.JWKS, err = r.get(ctx, "/.well-known/jwks.json"); err != nil {
		_ = r.stop()
		return nil, fmt.Errorf("%s: public keys: %w", name, err)
	}
	return r, nil
}

func closeAll(closers []func() error) {
	for _, c := range closers {
		_ = c()
	}
}

// waitReady polls /readyz: ready means policy compiled, revocation data
// loaded from the push channel, decision log open.
func (r *replica) waitReady(ctx context.Context) error {
	tctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		_, err := r.get(tctx, "/readyz")
		if err == nil {
			return nil
		}
		last = err
		select {
		case <-tctx.Done():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("%s: not ready after %s: %w", r.Name, readyTimeout, last)
		case <-tick.C:
		case <-r.stopped:
			return fmt.Errorf("%s: stopped before it was ready: %v", r.Name, r.err)
		}
	}
}

// get fetches a path from the replica's HTTP listener; a non-200 answer is an
// error carrying the body.
func (r *replica) get(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.HTTPAddr+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := r.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return body, fmt.Errorf("GET %s: %s: %s", path, resp.Status, body)
	}
	return body, nil
}

// stop shuts the replica down in the server's order (drain, close the log)
// and waits for it.
func (r *replica) stop() error {
	if r.closed {
		return nil
	}
	r.closed = true
	if r.conn != nil {
		r.conn.Close()
	}
	r.cancel()
	<-r.stopped
	if r.err != nil {
		return fmt.Errorf("%s: %w", r.Name, r.err)
	}
	return nil
}

// keys parses the JWKS the replica published.
func (r *replica) keys() (decisionlog.KeySet, error) {
	return decisionlog.ParseKeySet(r.JWKS)
}

// publisher is the revocation push channel over the CA inventory: what
// `agentauthz ca serve` runs.
type publisher struct {
	URL    string // http://127.0.0.1:port
	srv    *http.Server
	cancel context.CancelFunc
	done   chan error
	closed bool
}

func startPublisher(ctx context.Context, lis net.Listener, auth *ca.Authority, logger hclog.Logger) (*publisher, error) {
	pub, err := revocation.NewPublisher(revocation.PublisherConfig{
		Store:    auth,
		Logger:   logger,
		NotFound: ca.ErrNotFound,
	})
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	p := &publisher{
		URL:    "http://" + lis.Addr().String(),
		srv:    &http.Server{Handler: pub.Handler(), ReadHeaderTimeout: 5 * time.Second},
		cancel: cancel,
		done:   make(chan error, 2),
	}
	go func() { p.done <- pub.Run(pctx) }()
	go func() {
		if err := p.srv.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
			p.done <- err
			return
		}
		p.done <- nil
	}()
	return p, nil
}

// stop ends Run (which ends the watch streams) and then the HTTP server.
func (p *publisher) stop() error {
	if p.closed {
		return nil
	}
	p.closed = true
	p.cancel()
	first := <-p.done
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := p.srv.Shutdown(ctx)
	second := <-p.done
	return errors.Join(first, err, second)
}
