package cli

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	"golang.org/x/term"

	"github.com/agentauthz/agentauthz/internal/alerts"
	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/console"
	"github.com/agentauthz/agentauthz/internal/control"
	"github.com/agentauthz/agentauthz/internal/evidence"
	"github.com/agentauthz/agentauthz/internal/recordstore"
	"github.com/agentauthz/agentauthz/internal/revocation"
)

// newControlCmd is `agentauthz control`: the control plane of a fleet of
// replicas. `ca serve` is the same server under its older name.
func newControlCmd() *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   "control",
		Short: "Run the control plane: revocations and restrictions for every replica",
	}
	cmd.PersistentFlags().StringVar(&dataDir, "data-dir", caEnvDataDir(), "data directory (env AGENTAUTHZ_DATA_DIR)")
	cmd.AddCommand(newCAServeCmd(), newMigrateStoreCmd())
	return cmd
}

// newCAServeCmd is `agentauthz control serve` (and its alias `ca serve`): a
// thin wrapper that runs a revocation.Publisher over the CA inventory.
func newCAServeCmd() *cobra.Command {
	var (
		addr            string
		poll, heartbeat time.Duration
		opts            controlOptions
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the control plane: CRLs and a signed watch stream of revocations and restrictions",
		Long: `Serve GET /v1/crl/<trust-domain> (the current DER CRL, with ETag and
Last-Modified) and GET /v1/watch?tenant=<trust-domain> (a server-sent event
stream that pushes every revocation and restriction committed by "agentauthz
agent revoke|restrict|lift", from any process, within about --poll). Every
event is signed by the trust domain's CA, and replicas refuse one that is not.
Decision replicas point their revocation.watch_url at it. Listens on loopback
unless --addr says otherwise. "agentauthz ca serve" is the same command.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// --data-dir is the persistent flag of the parent "ca" command.
			dataDir, err := cmd.Flags().GetString("data-dir")
			if err != nil {
				dataDir = caEnvDataDir()
			}
			opts.noAnomaly = !opts.anomaly
			return runCAServe(cmd.Context(), cmd, dataDir, addr, poll, heartbeat, opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "addr", "127.0.0.1:9193", "listen address (host:port)")
	f.StringVar(&opts.store, "store", os.Getenv("AGENTAUTHZ_STORE"), "postgres://… for the CA inventory, change log and decision records (several instances on one database), or a SQLite file for the records (default <data-dir>/records.db and inventory.db; env AGENTAUTHZ_STORE)")
	f.BoolVar(&opts.plain, "plain-http", false, "serve plain HTTP: CRLs and the signed watch stream only, no authenticated API")
	f.StringVar(&opts.oidc, "oidc-config", "", "console sign-in through an OpenID Connect provider: a YAML file (issuer, client_id, client_secret_file, redirect_url, role mapping; docs/console.md)")
	f.StringArrayVar(&opts.hosts, "tls-host", nil, "extra DNS name or IP for the server certificate (repeatable; loopback and the --addr host are always in)")
	f.BoolVar(&opts.anomaly, "anomaly", true, "run the anomaly detector on the stored records (alerts, responses); --anomaly=false turns it off")
	f.StringArrayVar(&opts.responses, "respond", nil, "response of a detector rule: RULE=notify|propose|auto[:quarantine|max-trust=Ln|remove-scope=S,…][:DURATION] (repeatable; default notify)")
	f.StringVar(&opts.webhook, "anomaly-webhook", "", "POST each alert as JSON to this URL")
	f.DurationVar(&poll, "poll", revocation.DefaultGenerationPoll, "how often the inventory is checked for new revocations")
	f.DurationVar(&heartbeat, "heartbeat", revocation.DefaultHeartbeat, "interval of keep-alive comments on watch streams")
	return cmd
}

func runCAServe(ctx context.Context, cmd *cobra.Command, dataDir, addr string, poll, heartbeat time.Duration, opts controlOptions) error {
	log := hclog.New(&hclog.LoggerOptions{
		Name:       "agentauthz",
		Output:     cmd.ErrOrStderr(),
		JSONFormat: !caServeTTY(cmd.ErrOrStderr()),
	})
	reg := prometheus.NewRegistry()
	rs, err := newRevocationServer(dataDir, addr, log, reg, reg, poll, heartbeat, opts)
	if err != nil {
		return err
	}
	defer rs.Close()
	if opts.plain {
		log.Warn("plain HTTP: serving CRLs and the signed watch stream only; the API (restrict, revoke, records) is off")
		if !rs.Loopback() {
			log.Warn("listening beyond loopback over plain HTTP: every event is signed, but anyone on the path can read or drop the stream")
		}
	} else {
		log.Info("mTLS: clients present a certificate from the operator CA", "operator_ca", control.OperatorCAPath(dataDir))
	}
	fmt.Fprintf(cmd.OutOrStdout(), "agentauthz %s: listening on %s\n", cmd.CommandPath()[len(cmd.Root().Name())+1:], rs.URL())
	if err := rs.Run(ctx); err != nil {
		return err
	}
	log.Info("control plane stopped")
	return nil
}

// revocationServer is a revocation.Publisher over the CA inventory of a data
// directory, served over HTTP: the body of `ca serve`, which `serve --dev`
// also runs in-process for the dev tenant.
type revocationServer struct {
	auth    *ca.Authority
	pub     *revocation.Publisher
	ln      net.Listener
	srv     *http.Server
	op      *control.OperatorCA // nil with --plain-http
	plain   bool
	records *recordstore.Store
	alerts  *alerts.Service // nil when the anomaly detector is off
	con     *console.Console
	log     hclog.Logger
	unlock  func() // the data directory's shared lock (ca.LockDataDir)
}

// controlOptions are the transport settings of the control plane.
type controlOptions struct {
	// plain serves HTTP without TLS: CRLs and the signed watch stream only.
	plain bool
	// oidc is the console's OIDC configuration file ("": none).
	oidc string
	// hosts are extra names for the server certificate.
	hosts []string
	// store is the record store's DSN; default <data-dir>/records.db.
	store string
	// noAnomaly turns the anomaly detector off (anomaly is the flag);
	// responses are its --respond rules, webhook its alert webhook.
	noAnomaly, anomaly bool
	responses          []string
	webhook            string
}

// newRevocationServer opens the inventory of dataDir and listens on addr.
// reg, when not nil, receives the publisher metrics
// (agentauthz_revocation_publisher_*); metrics, when not nil, is served on
// /metrics. `ca serve` passes its own registry as both; `serve --dev` passes
// a lateRegisterer for serve's registry and serves no /metrics here. Run
// serves; Close releases the inventory (and the listener if Run never ran).
func newRevocationServer(dataDir, addr string, log hclog.Logger, reg prometheus.Registerer, metrics prometheus.Gatherer,
	poll, heartbeat time.Duration, opts controlOptions) (srv *revocationServer, err error) {
	invOpts := []ca.Option{ca.MustExist()}
	if ca.IsPostgres(opts.store) {
		invOpts = append(invOpts, ca.WithStore(opts.store)) // the inventory and change log too
	}
	auth, err := ca.Open(dataDir, invOpts...)
	if err != nil {
		if ca.IsPostgres(opts.store) {
			return nil, withHint(fmt.Errorf("open ca inventory: %w", err),
				"create a CA in that database first: AGENTAUTHZ_STORE=<the --store URL> agentauthz ca init --data-dir %s --trust-domain TD", dataDir)
		}
		return nil, withHint(fmt.Errorf("open ca inventory: %w", err), "create a CA first: agentauthz ca init --data-dir %s", dataDir)
	}
	// Held shared while the control plane runs: control migrate-store
	// refuses to copy stores that may still change.
	unlock, err := ca.LockDataDir(dataDir, false)
	if err != nil {
		auth.Close()
		return nil, withHint(err, "wait for agentauthz control migrate-store on %s to finish", dataDir)
	}
	defer func() {
		if srv == nil {
			unlock()
		}
	}()
	pub, err := revocation.NewPublisher(revocation.PublisherConfig{
		Store: auth, Logger: log, Registerer: reg,
		GenerationPoll: poll, Heartbeat: heartbeat, NotFound: ca.ErrNotFound,
	})
	if err != nil {
		auth.Close()
		return nil, err
	}
	rs := &revocationServer{auth: auth, pub: pub, plain: opts.plain, log: log, unlock: unlock}
	var authn *control.Authenticator
	if !opts.plain {
		if rs.op, err = control.OpenOperatorCA(dataDir, true); err != nil {
			auth.Close()
			return nil, fmt.Errorf("operator CA: %w", err)
		}
		authn = control.NewAuthenticator(rs.op, nil, nil)
	}
	dsn := opts.store
	if dsn == "" {
		dsn = filepath.Join(dataDir, "records.db")
	}
	if rs.records, err = recordstore.Open(context.Background(), dsn); err != nil {
		auth.Close()
		return nil, withHint(err, "--store takes postgres://user@host:5432/db or a SQLite file path")
	}
	if !opts.noAnomaly {
		responses, err := alerts.ParseResponses(opts.responses)
		if err == nil && opts.webhook != "" && !strings.HasPrefix(opts.webhook, "http://") && !strings.HasPrefix(opts.webhook, "https://") {
			err = fmt.Errorf("--anomaly-webhook %q: want an http(s) URL", opts.webhook)
		}
		if err == nil {
			rs.alerts, err = alerts.New(alerts.Config{Authority: auth, Records: rs.records, Store: opts.store, Responses: responses, Webhook: opts.webhook,
				Logger: log.Named("anomaly"), Registerer: reg})
		}
		if err != nil {
			rs.records.Close()
			auth.Close()
			return nil, withHint(err, "see agentauthz control serve --help for --respond")
		}
	}
	api, err := control.NewAPI(control.Config{Authority: auth, Publisher: pub, Auth: authn, Logger: log, Registerer: reg, Records: rs.records,
		Alerts: rs.alerts})
	if err != nil {
		_ = rs.closeStores() // the error being returned is the one to report
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		_ = rs.closeStores() // the error being returned is the one to report
		return nil, withHint(fmt.Errorf("listen: %w", err), "choose another address with --addr")
	}
	if rs.op != nil {
		hosts := append([]string{"127.0.0.1", "::1", "localhost"}, opts.hosts...)
		if h, _, err := net.SplitHostPort(ln.Addr().String()); err == nil {
			hosts = append(hosts, h)
		}
		if h, _, err := net.SplitHostPort(addr); err == nil && h != "" {
			hosts = append(hosts, h)
		}
		cert, err := rs.op.ServerCertificate(hosts)
		if err != nil {
			ln.Close()
			_ = rs.closeStores() // the error being returned is the one to report
			return nil, fmt.Errorf("server certificate: %w", err)
		}
		// Request, not require, a client certificate: CRLs stay public
		// (certificates point at them) and an expired or wrong
		// certificate gets a clear answer from the API, not an alert.
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequestClientCert,
			MinVersion: tls.VersionTLS13})
	}
	var oidcCfg *console.OIDCConfig
	if opts.oidc != "" {
		if opts.plain {
			err = withHint(errors.New("--oidc-config needs TLS: the console is off with --plain-http"), "drop --plain-http")
		} else {
			oidcCfg, err = console.LoadOIDCConfig(opts.oidc)
		}
	}
	// The key that signs the console's evidence packs: the one `audit
	// report --data-dir` (same directory) signs with.
	var packKey ed25519.PrivateKey
	if err == nil && !opts.plain {
		if packKey, err = evidence.LoadSigningKey(evidence.SigningKeyPath(dataDir)); err != nil {
			err = withHint(fmt.Errorf("evidence pack signing key: %w", err), "the key is made on first use; move a damaged one away to make a new one")
		}
	}
	if err != nil {
		ln.Close()
		rs.records.Close()
		auth.Close()
		return nil, err
	}
	con, err := console.New(console.Config{Authority: auth, Records: rs.records, Alerts: rs.alerts, Auth: authn, OIDC: oidcCfg,
		PackKey: packKey, Logger: log.Named("console")})
	if err != nil {
		ln.Close()
		_ = rs.closeStores() // the error being returned is the one to report
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/", api.Handler())
	mux.Handle(console.Prefix, con.Handler())
	if metrics != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(metrics, promhttp.HandlerOpts{}))
	}
	rs.ln, rs.srv = ln, &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: 16 << 10}
	rs.srv.RegisterOnShutdown(con.Stop) // the console's live tails end with the server
	rs.con = con
	return rs, nil
}

// URL is the base URL the server listens on: <URL>/v1/watch is the watch
// stream, <URL>/v1/crl/<trust-domain> a tenant's CRL.
func (r *revocationServer) URL() string {
	if r.plain {
		return "http://" + r.ln.Addr().String()
	}
	return "https://" + r.ln.Addr().String()
}

// Loopback reports whether the listener is on a loopback address.
func (r *revocationServer) Loopback() bool {
	tcp, ok := r.ln.Addr().(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}

// Run serves until ctx ends, then ends every watch stream and waits (at most
// 5 s) for other requests to finish before closing their connections.
func (r *revocationServer) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return r.pub.Run(gctx) })
	if r.alerts != nil {
		g.Go(func() error { return r.alerts.Run(gctx) })
	}
	if r.con != nil {
		g.Go(func() error { r.con.PrepareCompliance(gctx); return nil })
	}
	g.Go(func() error {
		if err := r.srv.Serve(r.ln); !errors.Is(err, http.ErrServerClosed) {
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
		err := r.srv.Shutdown(sctx)
		if !errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		// Cutting a request loses nothing: a change is one transaction and
		// a shipment is retried from the stored cursor by its replica.
		r.log.Warn("requests still running 5 s after shutdown began; closing their connections")
		return r.srv.Close()
	})
	return g.Wait()
}

// Close closes the listener (a no-op after Run) and the inventory.
func (r *revocationServer) Close() error {
	lerr := r.ln.Close()
	if errors.Is(lerr, net.ErrClosed) {
		lerr = nil
	}
	err := errors.Join(lerr, r.closeStores())
	r.unlock()
	return err
}

func (r *revocationServer) closeStores() error {
	var aerr error
	if r.alerts != nil {
		aerr = r.alerts.Close()
	}
	return errors.Join(aerr, r.records.Close(), r.auth.Close())
}

func caServeTTY(w any) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
