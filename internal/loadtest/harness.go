package loadtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options configure a harness run. Zero values take the defaults noted.
type Options struct {
	// Command returns a command that runs the agentauthz binary with args;
	// the harness uses it to start `bench server` and `ca serve` processes.
	Command func(ctx context.Context, args ...string) *exec.Cmd
	// PoliciesDir is the shipped policy directory (authz.rego, data.json).
	PoliciesDir string
	// WorkDir holds generated certificates, CRLs, policies and decision
	// logs; a temporary directory (removed afterwards) when empty.
	WorkDir string
	// Warmup precedes every measured window; default 2s.
	Warmup time.Duration
	// Duration of every measured window; default 10s.
	Duration time.Duration
	// Concurrency of the headline comparison; default 16.
	Concurrency int
	// Concurrencies of the scaling curve; default 1, 4, 16, 64.
	Concurrencies []int
	// RouteTables are the route-table sizes measured; default 10, 100, 1000.
	// The first is the size used by every other run.
	RouteTables []int
	// RevokedSerials are the CRL sizes measured (beyond the mix's own
	// revoked agents); default 0, 10000, 1000000. The first is used by
	// every other run.
	RevokedSerials []int
	// Mix is the request mix; default DefaultMix.
	Mix Mix
	// LogMode is the decision-log mode of the real server: sync (default,
	// the configuration) or async.
	LogMode string
	// Modes to measure; default real, noop and naive. The ratios need all
	// three; fewer is for quick comparisons while optimising.
	Modes []Mode
	// SkipRateLimited skips the run at half of the maximum throughput.
	SkipRateLimited bool
	// SkipNoCache skips the run of the real server with the policy
	// decision cache off.
	SkipNoCache bool
	// PropagationRounds is how many revocations are timed; 0 skips.
	PropagationRounds int
	// Connections is how many gRPC connections the client spreads its
	// workers over; default 1. Envoy opens one per worker thread.
	Connections int
	// PairedRounds is how many times (a) and (b) are measured back to back
	// at the headline concurrency, both servers running and the order
	// alternating, after the curves; 0 skips. The host's speed drifts over
	// minutes, and the curves measure (b) and (a) minutes apart: the
	// median of these pairs is the (a)/(b) figure to trust.
	PairedRounds int
	// PacedRounds is how many times (a) and (b) are measured back to back
	// paced at half of (a)'s maximum (open loop, 64 workers), both servers
	// running and the order alternating; 0 skips. The p99 at half load is a
	// tail that one stall of the host moves: the #24 target reads the
	// median of these rounds' p99 ratios.
	PacedRounds int
	// PacedRate, when > 0, runs only the paced rounds, at this rate instead
	// of half of a measured maximum: a short trial for comparing builds.
	PacedRate float64
	// ProfileDir, when set, receives a CPU profile of each mode at the
	// headline concurrency (from a separate, unreported run).
	ProfileDir string
	// Progress receives one line per step; nil is silent.
	Progress io.Writer
}

func (o *Options) defaults() error {
	if o.Command == nil {
		return errors.New("loadtest: Options.Command is required")
	}
	if o.PoliciesDir == "" {
		o.PoliciesDir = "policies"
	}
	if o.Warmup <= 0 {
		o.Warmup = 2 * time.Second
	}
	if o.Duration <= 0 {
		o.Duration = 10 * time.Second
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 16
	}
	if o.Connections <= 0 {
		o.Connections = 1
	}
	if len(o.Concurrencies) == 0 {
		o.Concurrencies = []int{1, 4, 16, 64}
	}
	if len(o.RouteTables) == 0 {
		o.RouteTables = []int{10, 100, 1000}
	}
	if len(o.RevokedSerials) == 0 {
		o.RevokedSerials = []int{0, 10_000, 1_000_000}
	}
	if o.LogMode == "" {
		o.LogMode = "sync"
	}
	if o.LogMode != "sync" && o.LogMode != "async" {
		return fmt.Errorf("log mode %q: want sync or async", o.LogMode)
	}
	if len(o.Modes) == 0 {
		o.Modes = []Mode{ModeNoop, ModeNaive, ModeReal}
	}
	if o.Mix == nil {
		o.Mix, _ = ParseMix(DefaultMix)
	}
	for _, c := range append([]int{o.Concurrency}, o.Concurrencies...) {
		if c < 1 || c > 4096 {
			return fmt.Errorf("concurrency %d: want 1..4096", c)
		}
	}
	return nil
}

func (o *Options) progress(format string, args ...any) {
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, "bench: "+format+"\n", args...)
	}
}

// harness holds what one Run shares between steps.
type harness struct {
	o      Options
	dir    string
	pki    *pki
	bundle string
	pool   []request
	serial []*big.Int
}

// Run executes the whole benchmark and returns the report.
func Run(ctx context.Context, o Options) (*Report, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	h := &harness{o: o, dir: o.WorkDir}
	if h.dir == "" {
		d, err := os.MkdirTemp("", "agentauthz-bench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		h.dir = d
	}
	if err := os.MkdirAll(h.dir, 0o755); err != nil {
		return nil, err
	}
	var err error
	if h.pki, err = newPKI(time.Now()); err != nil {
		return nil, err
	}
	h.bundle = filepath.Join(h.dir, "ca.pem")
	if err := os.WriteFile(h.bundle, h.pki.caPEM, 0o644); err != nil {
		return nil, err
	}
	if h.pool, h.serial, err = buildRequests(h.pki, o.Mix); err != nil {
		return nil, err
	}

	rep := &Report{Machine: readMachine(), Duration: o.Duration, Warmup: o.Warmup, Mix: o.Mix.String(),
		Concurrency: o.Concurrency, LogMode: o.LogMode, Profiles: map[Mode]string{}}
	baseRoutes, baseRevoked := o.RouteTables[0], o.RevokedSerials[0]
	rep.BaseRoutes, rep.BaseRevoked = baseRoutes, baseRevoked+len(h.serial)
	if o.PacedRate > 0 {
		if rep.Paced, err = h.pacedRounds(ctx, o.PacedRate, max(o.PacedRounds, 1), baseRoutes, baseRevoked); err != nil {
			return nil, fmt.Errorf("paced runs: %w", err)
		}
		rep.finish()
		return rep, nil
	}

	concs := uniqueInts(append(append([]int{}, o.Concurrencies...), o.Concurrency))
	for _, mode := range o.Modes {
		cfg, err := h.variant(string(mode), baseRoutes, baseRevoked, false)
		if err != nil {
			return nil, err
		}
		err = h.withServer(ctx, mode, cfg, func(sp *serverProc) error {
			for _, c := range concs {
				r, err := h.measure(ctx, sp, mode, loadSpec{Concurrency: c, Warmup: o.Warmup, Duration: o.Duration})
				if err != nil {
					return err
				}
				r.Routes, r.RevokedSerials = baseRoutes, baseRevoked+len(h.serial)
				rep.Curve = append(rep.Curve, r)
				if c == o.Concurrency {
					rep.Headline = append(rep.Headline, r)
				}
			}
			if mode == ModeReal && !o.SkipRateLimited {
				max := 0.0
				for _, r := range rep.Curve {
					if r.Mode == ModeReal && r.RPS > max {
						max = r.RPS
					}
				}
				spec := loadSpec{Concurrency: 64, Warmup: o.Warmup, Duration: o.Duration, Rate: max / 2}
				r, err := h.measure(ctx, sp, mode, spec)
				if err != nil {
					return err
				}
				r.Routes, r.RevokedSerials = baseRoutes, baseRevoked+len(h.serial)
				rep.RateLimited, rep.MaxRPS = &r, max
				if o.ProfileDir != "" {
					// The p99 at half load is a tail: the trace shows what stalls it.
					if _, err := h.profile(ctx, sp, mode, spec, string(mode)+"-paced"); err != nil {
						return err
					}
				}
			}
			if o.ProfileDir != "" {
				spec := loadSpec{Concurrency: o.Concurrency, Warmup: o.Warmup}
				path, err := h.profile(ctx, sp, mode, spec, string(mode))
				if err != nil {
					return err
				}
				rep.Profiles[mode] = path
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("%s server: %w", mode, err)
		}
	}
	if o.PairedRounds > 0 && rep.Result(ModeNoop) != nil && rep.Result(ModeReal) != nil {
		if rep.Paired, err = h.paired(ctx, baseRoutes, baseRevoked); err != nil {
			return nil, fmt.Errorf("paired runs: %w", err)
		}
	}
	if rl := rep.RateLimited; rl != nil && rep.Result(ModeNoop) != nil && o.PacedRounds > 0 {
		if rep.Paced, err = h.pacedRounds(ctx, rl.Rate, o.PacedRounds, baseRoutes, baseRevoked); err != nil {
			return nil, fmt.Errorf("paced runs: %w", err)
		}
	}
	if rl := rep.RateLimited; rl != nil && rep.Result(ModeNoop) != nil {
		cfg, err := h.variant("noop-paced", baseRoutes, baseRevoked, false)
		if err != nil {
			return nil, err
		}
		err = h.withServer(ctx, ModeNoop, cfg, func(sp *serverProc) error {
			r, err := h.measure(ctx, sp, ModeNoop, loadSpec{Concurrency: 64, Warmup: o.Warmup, Duration: o.Duration, Rate: rl.Rate})
			rep.RateLimitedNoop = &r
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("noop server, paced: %w", err)
		}
	}
	if base := rep.Result(ModeReal); base != nil && !o.SkipNoCache {
		r, err := h.single(ctx, "no-decision-cache", baseRoutes, baseRevoked, true)
		if err != nil {
			return nil, err
		}
		r.NoDecisionCache = true
		rep.NoCache = &r
	}
	// The base configuration was measured above at the headline
	// concurrency; reuse that run rather than measure it twice.
	base := rep.Result(ModeReal)
	for _, n := range o.RouteTables {
		if n == baseRoutes && base != nil {
			rep.Routes = append(rep.Routes, *base)
			continue
		}
		r, err := h.single(ctx, fmt.Sprintf("routes-%d", n), n, baseRevoked, false)
		if err != nil {
			return nil, err
		}
		rep.Routes = append(rep.Routes, r)
	}
	for _, n := range o.RevokedSerials {
		if n == baseRevoked && base != nil {
			rep.Revoked = append(rep.Revoked, *base)
			continue
		}
		r, err := h.single(ctx, fmt.Sprintf("revoked-%d", n), baseRoutes, n, false)
		if err != nil {
			return nil, err
		}
		rep.Revoked = append(rep.Revoked, r)
	}
	if o.PropagationRounds > 0 {
		p, err := h.propagation(ctx, o.PropagationRounds)
		if err != nil {
			return nil, fmt.Errorf("revocation propagation: %w", err)
		}
		rep.Propagation = p
	}
	rep.finish()
	return rep, nil
}

// paired measures (b) and (a) at the headline concurrency back to back,
// PairedRounds times; each round's ratio is (a)'s req/s over (b)'s.
func (h *harness) paired(ctx context.Context, routes, revoked int) ([]PairedRound, error) {
	spec := loadSpec{Concurrency: h.o.Concurrency, Warmup: h.o.Warmup, Duration: h.o.Duration}
	return h.alternating(ctx, "paired", spec, h.o.PairedRounds, routes, revoked, func(pr *PairedRound) {
		if pr.Noop.RPS > 0 {
			pr.Ratio = pr.Real.RPS / pr.Noop.RPS
		}
	})
}

// pacedRounds measures (a) and (b) open-loop at rate, back to back, rounds
// times; each round's p99 ratio is what the half-load target reads.
func (h *harness) pacedRounds(ctx context.Context, rate float64, rounds, routes, revoked int) ([]PairedRound, error) {
	spec := loadSpec{Concurrency: 64, Warmup: h.o.Warmup, Duration: h.o.Duration, Rate: rate}
	return h.alternating(ctx, "paced", spec, rounds, routes, revoked, func(pr *PairedRound) {
		if pr.Noop.P99 > 0 {
			pr.Ratio = float64(pr.Real.P99) / float64(pr.Noop.P99)
		}
		h.o.progress("paced round %d: p99 (a) %s, (b) %s: %.2f×", pr.Round, fmtDur(pr.Real.P99), fmtDur(pr.Noop.P99), pr.Ratio)
	})
}

// alternating measures (b) and (a) with spec back to back, rounds times,
// alternating which goes first so that a drift of the host's speed favours
// neither; ratio fills in each round's ratio.
func (h *harness) alternating(ctx context.Context, name string, spec loadSpec, rounds, routes, revoked int, ratio func(*PairedRound)) ([]PairedRound, error) {
	noopCfg, err := h.variant(name+"-noop", routes, revoked, false)
	if err != nil {
		return nil, err
	}
	realCfg, err := h.variant(name+"-real", routes, revoked, false)
	if err != nil {
		return nil, err
	}
	var out []PairedRound
	err = h.withServer(ctx, ModeNoop, noopCfg, func(noop *serverProc) error {
		return h.withServer(ctx, ModeReal, realCfg, func(real *serverProc) error {
			for i := range rounds {
				pr := PairedRound{Round: i + 1, RealFirst: i%2 == 1}
				type run struct {
					sp   *serverProc
					mode Mode
					res  *RunResult
				}
				order := [2]run{{noop, ModeNoop, &pr.Noop}, {real, ModeReal, &pr.Real}}
				if pr.RealFirst {
					order[0], order[1] = order[1], order[0]
				}
				for _, r := range order {
					var err error
					if *r.res, err = h.measure(ctx, r.sp, r.mode, spec); err != nil {
						return err
					}
				}
				ratio(&pr)
				out = append(out, pr)
			}
			return nil
		})
	})
	return out, err
}

// single measures the real service at the headline concurrency with one
// route-table size and CRL size.
func (h *harness) single(ctx context.Context, name string, routes, revoked int, noCache bool) (RunResult, error) {
	var out RunResult
	cfg, err := h.variant(name, routes, revoked, noCache)
	if err != nil {
		return out, err
	}
	err = h.withServer(ctx, ModeReal, cfg, func(sp *serverProc) error {
		r, err := h.measure(ctx, sp, ModeReal, loadSpec{Concurrency: h.o.Concurrency, Warmup: h.o.Warmup, Duration: h.o.Duration})
		r.Routes, r.RevokedSerials = routes, revoked+len(h.serial)
		out = r
		return err
	})
	if err != nil {
		return out, fmt.Errorf("%s: %w", name, err)
	}
	return out, nil
}

// variant writes a policy directory, CRL and configuration for one server.
func (h *harness) variant(name string, routes, revoked int, noCache bool) (string, error) {
	dir := filepath.Join(h.dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	policyDir := filepath.Join(dir, "policies")
	if err := writePolicyDir(policyDir, h.o.PoliciesDir, routes); err != nil {
		return "", err
	}
	crl := filepath.Join(dir, "ca.crl")
	start := time.Now()
	if err := h.pki.writeCRL(crl, h.serial, revoked); err != nil {
		return "", err
	}
	if revoked >= 100_000 {
		h.o.progress("signed a CRL of %d serials in %v", revoked+len(h.serial), time.Since(start).Round(time.Millisecond))
	}
	return writeServerConfig(dir, serverSpec{PolicyDir: policyDir, Bundle: h.bundle, CRLFiles: []string{crl},
		TrustDomain: TrustDomain, LogMode: h.o.LogMode, NoDecisionCache: noCache})
}

// serverProc is one running `bench server` process.
type serverProc struct {
	cmd      *exec.Cmd
	grpcAddr string
	httpAddr string
	stderr   *syncBuffer
	done     chan error
}

// syncBuffer collects a child's stderr for error messages.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b.Len() > 64<<10 {
		return len(p), nil // keep the beginning; it says what went wrong
	}
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.TrimSpace(s.b.String())
}

func (h *harness) withServer(ctx context.Context, mode Mode, configFile string, f func(*serverProc) error) error {
	h.o.progress("starting %s server (%s)", mode, filepath.Base(filepath.Dir(configFile)))
	sp, err := startProcess(ctx, h.o.Command, "ready ", "bench", "server", "--mode", string(mode), "--config", configFile)
	if err != nil {
		return err
	}
	defer sp.stop()
	for _, f := range strings.Fields(sp.firstLine) {
		if v, ok := strings.CutPrefix(f, "grpc="); ok {
			sp.grpcAddr = v
		}
		if v, ok := strings.CutPrefix(f, "http="); ok {
			sp.httpAddr = v
		}
	}
	if sp.grpcAddr == "" || sp.httpAddr == "" {
		return fmt.Errorf("unexpected ready line %q", sp.firstLine)
	}
	if err := waitReady(ctx, sp.httpAddr, 2*time.Minute); err != nil {
		return fmt.Errorf("%w (server stderr: %s)", err, sp.stderr.String())
	}
	if err := f(&sp.serverProc); err != nil {
		return fmt.Errorf("%w (server stderr: %s)", err, sp.stderr.String())
	}
	return nil
}

// process is a child started by startProcess.
type process struct {
	serverProc
	firstLine string
}

// startProcess starts the binary with args and waits for a stdout line
// starting with prefix (a `bench server` ready line or the `ca serve`
// listening line).
func startProcess(ctx context.Context, command func(context.Context, ...string) *exec.Cmd, prefix string, args ...string) (*process, error) {
	cmd := command(ctx, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	p := &process{serverProc: serverProc{cmd: cmd, stderr: &syncBuffer{}, done: make(chan error, 1)}}
	cmd.Stderr = p.stderr
	// Terminate gracefully so decision logs close cleanly.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", strings.Join(args, " "), err)
	}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		found := false
		for sc.Scan() {
			if !found && strings.HasPrefix(sc.Text(), prefix) {
				found = true
				lines <- sc.Text()
			}
		}
		close(lines)
	}()
	go func() { p.done <- cmd.Wait() }()
	select {
	case l, ok := <-lines:
		if !ok {
			p.stop()
			return nil, fmt.Errorf("%s exited before it was ready: %s", strings.Join(args[:2], " "), p.stderr.String())
		}
		p.firstLine = l
		return p, nil
	case <-time.After(2 * time.Minute):
		p.stop()
		return nil, fmt.Errorf("%s not ready after 2m: %s", strings.Join(args[:2], " "), p.stderr.String())
	case <-ctx.Done():
		p.stop()
		return nil, ctx.Err()
	}
}

// stop terminates the child with SIGTERM, then SIGKILL after 10 s.
func (s *serverProc) stop() {
	if s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

var httpClient = &http.Client{Timeout: 60 * time.Second}

func waitReady(ctx context.Context, httpAddr string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		resp, err := httpClient.Get("http://" + httpAddr + "/readyz")
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("readyz %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("server not ready: %w", err)
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

func fetchStats(httpAddr string, gc bool) (ServerStats, error) {
	var st ServerStats
	u := "http://" + httpAddr + statsPath
	if gc {
		u += "?gc=1"
	}
	resp, err := httpClient.Get(u)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("stats: %s", resp.Status)
	}
	return st, json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&st)
}

// measure runs one load spec against a server and combines what the client
// saw with what the server reports about itself.
func (h *harness) measure(ctx context.Context, sp *serverProc, mode Mode, spec loadSpec) (RunResult, error) {
	r := RunResult{Mode: mode, Concurrency: spec.Concurrency, Rate: spec.Rate}
	conns, err := dial(sp.grpcAddr, h.o.Connections)
	if err != nil {
		return r, err
	}
	defer closeAll(conns)
	var before, after ServerStats
	var cpu0, cpu1 cpuSnapshot
	res, err := drive(ctx, conns, mode, h.pool, spec, func(start bool) error {
		st, err := fetchStats(sp.httpAddr, false)
		if start {
			before, cpu0 = st, takeCPU()
		} else {
			after, cpu1 = st, takeCPU()
		}
		return err
	})
	if err != nil {
		return r, err
	}
	r.fill(res, before, after)
	r.fillHost(res, cpu0, cpu1)
	// After the window: what the server holds once garbage is collected.
	if st, err := fetchStats(sp.httpAddr, true); err == nil {
		r.HeapAfterGC, r.RSSAfterGC = st.HeapBytes, st.RSSBytes
	}
	label := fmt.Sprintf("c=%d", spec.Concurrency)
	if spec.Rate > 0 {
		label += fmt.Sprintf(" paced at %.0f/s", spec.Rate)
	}
	h.o.progress("%-5s %-6s %s", mode, label, r.summary())
	return r, nil
}

// profile takes a CPU profile and an execution trace of the server under
// the load spec describes (its duration is set here), from a run that is not
// reported. name goes into the file names.
func (h *harness) profile(ctx context.Context, sp *serverProc, mode Mode, spec loadSpec, name string) (string, error) {
	if err := os.MkdirAll(h.o.ProfileDir, 0o755); err != nil {
		return "", err
	}
	secs := int(h.o.Duration / time.Second)
	if secs < 1 {
		secs = 1
	}
	path := filepath.Join(h.o.ProfileDir, fmt.Sprintf("cpu-%s.pprof", name))
	conns, err := dial(sp.grpcAddr, h.o.Connections)
	if err != nil {
		return "", err
	}
	defer closeAll(conns)
	// An execution trace of the same window shows what the CPU profile
	// cannot: where a Check waits (fsync, scheduling, GC) rather than runs.
	tracePath := filepath.Join(h.o.ProfileDir, fmt.Sprintf("trace-%s.out", name))
	traceSecs := min(secs, 2)
	var data, trace []byte
	var perr, terr error
	fetch := func(url string, out *[]byte, errp *error) {
		resp, err := httpClient.Get(url)
		if err != nil {
			*errp = err
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			*errp = fmt.Errorf("%s: %s", url, resp.Status)
			return
		}
		*out, *errp = io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	}
	spec.Duration = time.Duration(secs)*time.Second + 500*time.Millisecond
	var wg sync.WaitGroup
	_, err = drive(ctx, conns, mode, h.pool, spec, func(start bool) error {
		if start {
			wg.Add(2)
			go func() {
				defer wg.Done()
				fetch(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", sp.httpAddr, secs), &data, &perr)
			}()
			go func() {
				defer wg.Done()
				fetch(fmt.Sprintf("http://%s/debug/pprof/trace?seconds=%d", sp.httpAddr, traceSecs), &trace, &terr)
			}()
		}
		return nil
	})
	wg.Wait()
	if err != nil {
		return "", err
	}
	if perr != nil {
		return "", fmt.Errorf("cpu profile: %w", perr)
	}
	if terr != nil {
		return "", fmt.Errorf("execution trace: %w", terr)
	}
	if err := os.WriteFile(tracePath, trace, 0o644); err != nil {
		return "", err
	}
	h.o.progress("wrote %s and %s", path, tracePath)
	return path, os.WriteFile(path, data, 0o644)
}

func uniqueInts(in []int) []int {
	seen := map[int]bool{}
	var out []int
	for _, v := range in {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	// Ascending, so the curve reads top to bottom.
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// runCommand runs one agentauthz command to completion; its output is kept
// for the error.
func runCommand(ctx context.Context, command func(context.Context, ...string) *exec.Cmd, args ...string) error {
	out, err := command(ctx, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}
