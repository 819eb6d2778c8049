package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	"golang.org/x/term"

	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/revocation"
)

// newCAServeCmd is `agentauthz ca serve`: a thin wrapper that runs a
// revocation.Publisher over the CA inventory. It is registered by ca.go.
func newCAServeCmd() *cobra.Command {
	var (
		addr            string
		poll, heartbeat time.Duration
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Publish each tenant's CRL and a revocation watch stream over HTTP",
		Long: `Serve GET /v1/crl/<trust-domain> (the current DER CRL, with ETag and
Last-Modified) and GET /v1/watch?tenant=<trust-domain> (a server-sent event
stream that pushes every revocation committed by "agentauthz agent revoke",
from any process, within about --poll). Decision replicas point their
revocation.watch_url at it. Listens on loopback unless --addr says otherwise.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// --data-dir is the persistent flag of the parent "ca" command.
			dataDir, err := cmd.Flags().GetString("data-dir")
			if err != nil {
				dataDir = caEnvDataDir()
			}
			return runCAServe(cmd.Context(), cmd, dataDir, addr, poll, heartbeat)
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "addr", "127.0.0.1:9193", "listen address (host:port)")
	f.DurationVar(&poll, "poll", revocation.DefaultGenerationPoll, "how often the inventory is checked for new revocations")
	f.DurationVar(&heartbeat, "heartbeat", revocation.DefaultHeartbeat, "interval of keep-alive comments on watch streams")
	return cmd
}

func runCAServe(ctx context.Context, cmd *cobra.Command, dataDir, addr string, poll, heartbeat time.Duration) error {
	log := hclog.New(&hclog.LoggerOptions{
		Name:       "agentauthz",
		Output:     cmd.ErrOrStderr(),
		JSONFormat: !caServeTTY(cmd.ErrOrStderr()),
	})
	auth, err := ca.Open(dataDir, ca.MustExist())
	if err != nil {
		return withHint(fmt.Errorf("open ca inventory: %w", err), "create a CA first: agentauthz ca init --data-dir %s", dataDir)
	}
	defer auth.Close()
	var store revocation.Store = auth
	reg := prometheus.NewRegistry()
	pub, err := revocation.NewPublisher(revocation.PublisherConfig{
		Store: store, Logger: log, Registerer: reg,
		GenerationPoll: poll, Heartbeat: heartbeat, NotFound: ca.ErrNotFound,
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return withHint(fmt.Errorf("listen: %w", err), "choose another address with --addr")
	}
	if tcp, ok := ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
		log.Warn("listening beyond loopback over plain HTTP: CRLs are signed, the revoked-agent list is not; put TLS in front")
	}
	mux := http.NewServeMux()
	mux.Handle("/", pub.Handler())
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(cmd.OutOrStdout(), "agentauthz ca serve: listening on http://%s\n", ln.Addr())

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return pub.Run(gctx) })
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		// Run has returned (or is returning): watch streams end by
		// themselves, so Shutdown only waits for short requests.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	})
	if err := g.Wait(); err != nil {
		return err
	}
	log.Info("ca serve stopped")
	return nil
}

func caServeTTY(w any) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
