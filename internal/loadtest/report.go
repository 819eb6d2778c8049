package loadtest

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Targets from issue 9.
const (
	TargetRPSRatio   = 0.5  // (a) ≥ 0.5 × (b) req/s at concurrency 16
	TargetCPURatio   = 0.75 // (a) ≤ 0.75 × (c) server CPU per Check
	TargetP99AtHalf  = 2 * time.Millisecond
	TargetP99Ratio   = 2.0 // #24: p99 of (a) at half load ≤ 2 × (b)'s paced alike
	TargetRSSBytes   = 150 << 20
	targetHeadlineCC = 16
)

// RunResult is one measured run.
type RunResult struct {
	Mode           Mode    `json:"mode"`
	Concurrency    int     `json:"concurrency"`
	Rate           float64 `json:"rate,omitempty"` // requested req/s of a paced run
	Routes         int     `json:"routes"`
	RevokedSerials int     `json:"revoked_serials"`
	// NoDecisionCache: the real server with the policy decision cache off.
	NoDecisionCache bool `json:"no_decision_cache,omitempty"`

	Requests   int64          `json:"requests"`
	Errors     int64          `json:"errors"`
	Mismatches int64          `json:"mismatches"`
	FirstError string         `json:"first_error,omitempty"`
	ByKind     map[Kind]int64 `json:"by_kind"`
	RPS        float64        `json:"rps"`
	P50        time.Duration  `json:"p50_ns"`
	P90        time.Duration  `json:"p90_ns"`
	P99        time.Duration  `json:"p99_ns"`
	P999       time.Duration  `json:"p999_ns"`
	Max        time.Duration  `json:"max_ns"`

	// Server-side figures over the measured window (server's own counts).
	ServerChecks   int64   `json:"server_checks"`
	ServerAllowed  int64   `json:"server_allowed"`
	CPUPerCheck    float64 `json:"cpu_ns_per_check"`
	AllocsPerCheck float64 `json:"allocs_per_check"`
	ServerCPUUtil  float64 `json:"server_cpu_cores"` // CPU seconds per wall second
	RSSBytes       int64   `json:"rss_bytes"`
	MaxRSSBytes    int64   `json:"max_rss_bytes"`
	HeapBytes      uint64  `json:"heap_bytes"` // live and not yet swept heap objects
	// After the window, once debug.FreeOSMemory has run in the server.
	HeapAfterGC uint64 `json:"heap_after_gc_bytes"`
	RSSAfterGC  int64  `json:"rss_after_gc_bytes"`
	GCCycles    uint64 `json:"gc_cycles"`

	// Decision-log segments the real server started during the window.
	SegmentsPreallocated int64 `json:"segments_preallocated"`
	SegmentsAppended     int64 `json:"segments_appended"`
	// LogFlushes the real server's decision log made during the window
	// (its group commits).
	LogFlushes int64 `json:"log_flushes"`

	// The client (this process) and the whole machine over the same window.
	ClientCPUPerCheck float64 `json:"client_cpu_ns_per_check"` // per answered request
	MachineIdle       float64 `json:"machine_idle"`            // idle+iowait share of all CPUs; -1 when unknown
	MachineSteal      float64 `json:"machine_steal"`           // steal share of all CPUs; -1 when unknown
}

func (r *RunResult) fillHost(res *loadResult, before, after cpuSnapshot) {
	if res.Requests > 0 {
		r.ClientCPUPerCheck = float64(after.procNanos-before.procNanos) / float64(res.Requests)
	}
	r.MachineIdle, r.MachineSteal = -1, -1
	if before.total > 0 && after.total > before.total {
		total := float64(after.total - before.total)
		r.MachineIdle = float64(after.idle-before.idle) / total
		r.MachineSteal = float64(after.steal-before.steal) / total
	}
}

func (r *RunResult) fill(res *loadResult, before, after ServerStats) {
	r.Requests, r.Errors, r.Mismatches, r.FirstError = res.Requests, res.Errors, res.Mismatches, res.FirstError
	r.ByKind = res.ByKind
	r.RPS = res.RPS()
	r.P50, r.P90, r.P99, r.P999 = res.Percentile(50), res.Percentile(90), res.Percentile(99), res.Percentile(99.9)
	if n := len(res.Latencies); n > 0 {
		r.Max = res.Latencies[n-1]
	}
	r.ServerChecks = after.Checks - before.Checks
	r.ServerAllowed = after.Allowed - before.Allowed
	if r.ServerChecks > 0 {
		r.CPUPerCheck = float64(after.CPUNanos-before.CPUNanos) / float64(r.ServerChecks)
		r.AllocsPerCheck = float64(after.Mallocs-before.Mallocs) / float64(r.ServerChecks)
	}
	if res.Elapsed > 0 {
		r.ServerCPUUtil = float64(after.CPUNanos-before.CPUNanos) / float64(res.Elapsed)
	}
	r.RSSBytes, r.MaxRSSBytes, r.GCCycles = after.RSSBytes, after.MaxRSSBytes, after.GCCycles-before.GCCycles
	r.HeapBytes = after.HeapBytes
	r.SegmentsPreallocated = after.SegmentsPreallocated - before.SegmentsPreallocated
	r.SegmentsAppended = after.SegmentsAppended - before.SegmentsAppended
	r.LogFlushes = after.LogFlushes - before.LogFlushes
}

// recordsPerFlush is the decision log's mean group-commit size over the
// window (one record per Check), or 0 without flushes.
func (r *RunResult) recordsPerFlush() float64 {
	if r.LogFlushes == 0 {
		return 0
	}
	return float64(r.ServerChecks) / float64(r.LogFlushes)
}

func (r *RunResult) summary() string {
	first := ""
	if r.FirstError != "" {
		first = "  first: " + r.FirstError
	}
	segs := ""
	if r.SegmentsPreallocated+r.SegmentsAppended > 0 {
		segs = fmt.Sprintf("  segments %d preallocated, %d appended", r.SegmentsPreallocated, r.SegmentsAppended)
	}
	if r.LogFlushes > 0 {
		segs += fmt.Sprintf("  records/flush %.1f", r.recordsPerFlush())
	}
	return fmt.Sprintf("%8.0f req/s  p50 %s  p99 %s  cpu/check %s  allocs/check %.0f  rss %s  errors %d  mismatches %d",
		r.RPS, fmtDur(r.P50), fmtDur(r.P99), fmtNanos(r.CPUPerCheck), r.AllocsPerCheck, fmtMiB(r.RSSBytes), r.Errors, r.Mismatches) + segs + first
}

// Machine describes where the numbers came from.
type Machine struct {
	CPUs      int    `json:"cpus"`
	Model     string `json:"model"`
	MemTotal  string `json:"mem_total"`
	GoVersion string `json:"go_version"`
	OSArch    string `json:"os_arch"`
	Kernel    string `json:"kernel"`
}

func readMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), OSArch: runtime.GOOS + "/" + runtime.GOARCH}
	m.Model = procField("/proc/cpuinfo", "model name")
	if kb := procField("/proc/meminfo", "MemTotal"); kb != "" {
		f := strings.Fields(kb)
		if n, err := strconv.ParseInt(f[0], 10, 64); err == nil {
			m.MemTotal = fmt.Sprintf("%.1f GiB", float64(n)/(1<<20))
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// Propagation is the revocation propagation measurement.
type Propagation struct {
	Rounds         int             `json:"rounds"`
	Samples        []time.Duration `json:"samples_ns"`
	P50            time.Duration   `json:"p50_ns"`
	P99            time.Duration   `json:"p99_ns"`
	Max            time.Duration   `json:"max_ns"`
	ControlChecks  int64           `json:"control_checks"`
	ControlDenials int64           `json:"control_denials"`
	GenerationPoll time.Duration   `json:"generation_poll_ns"`
	DeniedWith     map[string]int  `json:"denied_with"`
}

// Report is the whole benchmark.
type Report struct {
	Machine     Machine       `json:"machine"`
	Duration    time.Duration `json:"duration_ns"`
	Warmup      time.Duration `json:"warmup_ns"`
	Mix         string        `json:"mix"`
	Concurrency int           `json:"concurrency"`
	LogMode     string        `json:"log_mode"`
	BaseRoutes  int           `json:"base_routes"`
	BaseRevoked int           `json:"base_revoked"`

	Headline    []RunResult `json:"headline"`
	Curve       []RunResult `json:"curve"`
	Routes      []RunResult `json:"routes"`
	Revoked     []RunResult `json:"revoked"`
	RateLimited *RunResult  `json:"rate_limited,omitempty"`
	// RateLimitedNoop is (b) paced at the same rate: the latency floor of
	// this client on this machine.
	RateLimitedNoop *RunResult      `json:"rate_limited_noop,omitempty"`
	NoCache         *RunResult      `json:"no_decision_cache,omitempty"`
	MaxRPS          float64         `json:"max_rps"`
	Propagation     *Propagation    `json:"propagation,omitempty"`
	Profiles        map[Mode]string `json:"profiles,omitempty"`

	// Paired are (a) and (b) measured back to back at the headline
	// concurrency; the (a)/(b) target is read from their median.
	Paired []PairedRound `json:"paired,omitempty"`
	// Paced are (a) and (b) measured back to back, paced at half of (a)'s
	// maximum; their Ratio is p99 (a) / p99 (b).
	Paced []PairedRound `json:"paced,omitempty"`

	// Ratios at the headline concurrency: from the headline runs, and the
	// median of the paired rounds (0 without them).
	RatioRPS       float64 `json:"ratio_rps_a_over_b"`
	RatioRPSPaired float64 `json:"ratio_rps_a_over_b_paired_median"`
	RatioCPU       float64 `json:"ratio_cpu_a_over_c"`
	// RatioP99Paced is the median of the paced rounds' p99 (a) / p99 (b).
	RatioP99Paced float64 `json:"ratio_p99_a_over_b_paced_median"`
}

// PairedRound is one back-to-back measurement of (b) and (a); Ratio is
// their req/s ratio in Paired and their p99 ratio in Paced.
type PairedRound struct {
	Round     int       `json:"round"`
	RealFirst bool      `json:"real_first"`
	Noop      RunResult `json:"noop"`
	Real      RunResult `json:"real"`
	Ratio     float64   `json:"ratio_rps_a_over_b"`
}

// Result returns the headline run of mode, or nil.
func (r *Report) Result(mode Mode) *RunResult {
	for i := range r.Headline {
		if r.Headline[i].Mode == mode {
			return &r.Headline[i]
		}
	}
	return nil
}

func (r *Report) finish() {
	a, b, c := r.Result(ModeReal), r.Result(ModeNoop), r.Result(ModeNaive)
	if a != nil && b != nil && b.RPS > 0 {
		r.RatioRPS = a.RPS / b.RPS
	}
	if a != nil && c != nil && c.CPUPerCheck > 0 {
		r.RatioCPU = a.CPUPerCheck / c.CPUPerCheck
	}
	r.RatioRPSPaired = medianRatio(r.Paired)
	r.RatioP99Paced = medianRatio(r.Paced)
}

// medianRatio is the median of the rounds' ratios (0 without rounds).
func medianRatio(rounds []PairedRound) float64 {
	n := len(rounds)
	if n == 0 {
		return 0
	}
	ratios := make([]float64, n)
	for i, p := range rounds {
		ratios[i] = p.Ratio
	}
	slices.Sort(ratios)
	if n%2 == 0 {
		return (ratios[n/2-1] + ratios[n/2]) / 2
	}
	return ratios[n/2]
}

// ratioRange is the lowest and highest ratio of rounds.
func ratioRange(rounds []PairedRound) (lo, hi float64) {
	for i, p := range rounds {
		if i == 0 || p.Ratio < lo {
			lo = p.Ratio
		}
		if i == 0 || p.Ratio > hi {
			hi = p.Ratio
		}
	}
	return lo, hi
}

// idleSteal is the machine's idle and steal shares over the run.
func (r *RunResult) idleSteal() string {
	if r.MachineIdle < 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.0f %% / %.1f %%", 100*r.MachineIdle, 100*r.MachineSteal)
}

// Markdown writes the report as Markdown tables.
func (r *Report) Markdown(w io.Writer) error {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	m := r.Machine
	p("# agentauthz load benchmark\n\n")
	p("Machine: %d CPUs (`nproc`), %s, %s RAM, %s, %s, kernel %s.  \n", m.CPUs, orDash(m.Model), orDash(m.MemTotal), m.GoVersion, m.OSArch, orDash(m.Kernel))
	p("Each run: %s warm-up, then %s measured. Client and servers share the machine; servers run in their own processes. ", r.Warmup, r.Duration)
	p("Request mix: `%s`. Unless stated otherwise: %d routes in the policy data, %d revoked serials in the CRL, decision log in %s mode.\n\n", r.Mix, r.BaseRoutes, r.BaseRevoked, r.LogMode)
	p("(a) real = the full decision path (identity cache, revocation, prepared Rego with a direct `ast.Value` input, signed record durably appended). ")
	p("(b) noop = the same gRPC server answering OK without looking. ")
	p("(c) naive = certificate decoded and chain-verified per request (no cache), protobuf → map (opa-envoy-plugin's conversion) → `rego.EvalInput`, same policy, no revocation, no log.\n\n")

	p("## Headline (concurrency %d)\n\n", r.Concurrency)
	runTable(&b, r.Headline, false)
	p("\n")
	p("## Targets\n\n| target | measured | met |\n|---|---|---|\n")
	a := r.Result(ModeReal)
	switch {
	case r.RatioRPSPaired > 0:
		lo, hi := ratioRange(r.Paired)
		p("| (a) ≥ %.2f × (b) req/s at concurrency %d | %.2f, the median of %d back-to-back pairs (%.2f–%.2f); %.2f from the headline runs above | %s |\n",
			TargetRPSRatio, r.Concurrency, r.RatioRPSPaired, len(r.Paired), lo, hi, r.RatioRPS, yesNo(r.RatioRPSPaired >= TargetRPSRatio))
	case r.RatioRPS > 0:
		p("| (a) ≥ %.2f × (b) req/s at concurrency %d | %.2f | %s |\n", TargetRPSRatio, r.Concurrency, r.RatioRPS, yesNo(r.RatioRPS >= TargetRPSRatio))
	}
	if r.RatioCPU > 0 {
		p("| (a) server CPU per Check ≤ %.2f × (c) | %.2f (%s vs %s) | %s |\n", TargetCPURatio, r.RatioCPU,
			fmtNanos(a.CPUPerCheck), fmtNanos(r.Result(ModeNaive).CPUPerCheck), yesNo(r.RatioCPU <= TargetCPURatio))
	}
	if rl := r.RateLimited; rl != nil {
		p("| p99 of (a) ≤ %s at half of max throughput (%.0f of %.0f req/s) | %s | %s |\n", fmtDur(TargetP99AtHalf), rl.Rate, r.MaxRPS, fmtDur(rl.P99), yesNo(rl.P99 <= TargetP99AtHalf))
	}
	if n := len(r.Paced); n > 0 {
		lo, hi := ratioRange(r.Paced)
		p("| p99 of (a) ≤ %.0f × p99 of (b), paced alike at %.0f req/s | %.2f×, the median of %d back-to-back pairs (%.2f–%.2f) | %s |\n",
			TargetP99Ratio, r.Paced[0].Real.Rate, r.RatioP99Paced, n, lo, hi, yesNo(r.RatioP99Paced <= TargetP99Ratio))
	}
	if maxRSS := r.maxRealRSS(); maxRSS > 0 {
		p("| steady RSS of (a) under load ≤ %s (base configuration, all concurrencies) | %s | %s |\n", fmtMiB(TargetRSSBytes), fmtMiB(maxRSS), yesNo(maxRSS <= TargetRSSBytes))
	}
	if a != nil {
		p("| allocations per Check reported | %.0f (a), %.0f (c) | reported |\n", a.AllocsPerCheck, r.Result(ModeNaive).allocsOrZero())
	}
	p("\n")

	if len(r.Paired) > 0 {
		p("## (a) and (b) back to back (concurrency %d)\n\n", r.Concurrency)
		p("Both servers running; each round measures one after the other, the order alternating, so that a drift of the host's speed between the runs above does not decide the ratio.\n\n")
		p("| round | first | (b) req/s | (a) req/s | (a)/(b) | (b) server CPU/Check | (a) server CPU/Check | (b) client CPU/Check | (a) client CPU/Check | (b) idle / steal | (a) idle / steal |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, pr := range r.Paired {
			first := "(b)"
			if pr.RealFirst {
				first = "(a)"
			}
			p("| %d | %s | %.0f | %.0f | %.2f | %s | %s | %s | %s | %s | %s |\n", pr.Round, first, pr.Noop.RPS, pr.Real.RPS, pr.Ratio,
				fmtNanos(pr.Noop.CPUPerCheck), fmtNanos(pr.Real.CPUPerCheck), fmtNanos(pr.Noop.ClientCPUPerCheck), fmtNanos(pr.Real.ClientCPUPerCheck),
				pr.Noop.idleSteal(), pr.Real.idleSteal())
		}
		p("\n")
	}

	if len(r.Paced) > 0 {
		p("## (a) and (b) paced alike, back to back (%.0f req/s, 64 workers, open loop)\n\n", r.Paced[0].Real.Rate)
		p("Both servers running; each round measures one after the other, the order alternating. Latency counts from each request's scheduled start.\n\n")
		p("| round | first | (b) p50 | (b) p99 | (a) p50 | (a) p99 | p99 (a)/(b) | (a) server CPU/Check | (a) records per flush | (b) idle / steal | (a) idle / steal |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, pr := range r.Paced {
			first := "(b)"
			if pr.RealFirst {
				first = "(a)"
			}
			p("| %d | %s | %s | %s | %s | %s | %.2f | %s | %.1f | %s | %s |\n", pr.Round, first, fmtDur(pr.Noop.P50), fmtDur(pr.Noop.P99),
				fmtDur(pr.Real.P50), fmtDur(pr.Real.P99), pr.Ratio, fmtNanos(pr.Real.CPUPerCheck), pr.Real.recordsPerFlush(), pr.Noop.idleSteal(), pr.Real.idleSteal())
		}
		p("\n")
	}
	p("## Concurrency\n\n")
	runTable(&b, r.Curve, false)
	p("\n")
	if rl := r.RateLimited; rl != nil {
		p("## Half of maximum throughput\n\n")
		p("Open-loop run paced at %.0f req/s (half of the best (a) rate, %.0f req/s) with 64 workers; latency counts from each request's scheduled start.", rl.Rate, r.MaxRPS)
		runs := []RunResult{*rl}
		if n := r.RateLimitedNoop; n != nil {
			p(" (b) paced at the same rate is the floor that this client, sharing the machine, can measure.")
			runs = append(runs, *n)
		}
		p("\n\n")
		runTable(&b, runs, false)
		p("\n")
	}
	if nc, base := r.NoCache, r.Result(ModeReal); nc != nil && base != nil {
		p("## Policy decision cache (real, concurrency %d)\n\n", r.Concurrency)
		p("The same server with `policy.decision_cache.disabled: true`: every request evaluates the Rego policy. The mix's agents repeat, so with the cache on nearly every decision is a hit; real traffic with many distinct agents and operations lies between the two rows.\n\n")
		runTable(&b, []RunResult{*base, *nc}, false)
		p("\n")
	}
	if len(r.Routes) > 0 {
		p("## Route-table size (real, concurrency %d)\n\n", r.Concurrency)
		runTable(&b, r.Routes, true)
		p("\n")
	}
	if len(r.Revoked) > 0 {
		p("## Revoked serials in the CRL (real, concurrency %d)\n\n", r.Concurrency)
		runTable(&b, r.Revoked, true)
		p("\n")
	}
	if pr := r.Propagation; pr != nil {
		p("## Revocation propagation\n\n")
		p("`agentauthz ca serve` (generation poll %s) and one replica with `watch_url`, as separate processes. Each round issues a fresh agent, keeps Check calls flowing for it and for a control agent, runs `Revoke` on the CA inventory and times the first deny on the replica.\n\n", pr.GenerationPoll)
		p("| rounds | p50 | p99 | max | denied with | control agent checks | control agent denials |\n|---|---|---|---|---|---|---|\n")
		var with []string
		for k, v := range pr.DeniedWith {
			with = append(with, fmt.Sprintf("%s × %d", k, v))
		}
		p("| %d | %s | %s | %s | %s | %d | %d |\n\n", pr.Rounds, fmtDur(pr.P50), fmtDur(pr.P99), fmtDur(pr.Max), strings.Join(with, ", "), pr.ControlChecks, pr.ControlDenials)
	}
	if len(r.Profiles) > 0 {
		p("## CPU profiles\n\n")
		for _, mode := range []Mode{ModeReal, ModeNoop, ModeNaive} {
			if path := r.Profiles[mode]; path != "" {
				p("- %s: `%s` (`go tool pprof -top %s`)\n", mode, path, path)
			}
		}
		p("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func (r *RunResult) allocsOrZero() float64 {
	if r == nil {
		return 0
	}
	return r.AllocsPerCheck
}

func (r *Report) maxRealRSS() int64 {
	var max int64
	for _, x := range r.Curve {
		if x.Mode == ModeReal && x.RSSBytes > max {
			max = x.RSSBytes
		}
	}
	return max
}

func runTable(b *strings.Builder, runs []RunResult, variant bool) {
	if variant {
		b.WriteString("| routes | revoked serials ")
	} else {
		b.WriteString("| mode | concurrency ")
	}
	b.WriteString("| req/s | p50 | p90 | p99 | p99.9 | server CPU/Check | allocs/Check | server cores | client CPU/Check | machine idle / steal | GC cycles per 1k Checks | RSS / peak RSS | heap | live heap / RSS after GC | errors | wrong answers |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range runs {
		if variant {
			fmt.Fprintf(b, "| %d | %d ", r.Routes, r.RevokedSerials)
		} else {
			label := modeLabel(r.Mode)
			if r.NoDecisionCache {
				label += ", decision cache off"
			}
			fmt.Fprintf(b, "| %s | %d ", label, r.Concurrency)
		}
		gcs := 0.0
		if r.ServerChecks > 0 {
			gcs = float64(r.GCCycles) * 1000 / float64(r.ServerChecks)
		}
		idle := r.idleSteal()
		fmt.Fprintf(b, "| %.0f | %s | %s | %s | %s | %s | %.0f | %.2f | %s | %s | %.1f | %s / %s | %s | %s / %s | %d | %d |\n",
			r.RPS, fmtDur(r.P50), fmtDur(r.P90), fmtDur(r.P99), fmtDur(r.P999), fmtNanos(r.CPUPerCheck),
			r.AllocsPerCheck, r.ServerCPUUtil, fmtNanos(r.ClientCPUPerCheck), idle, gcs, fmtMiB(r.RSSBytes), fmtMiB(r.MaxRSSBytes), fmtMiB(int64(r.HeapBytes)),
			fmtMiB(int64(r.HeapAfterGC)), fmtMiB(r.RSSAfterGC), r.Errors, r.Mismatches)
	}
	for _, r := range runs {
		if r.SegmentsAppended > 0 {
			fmt.Fprintf(b, "\nDuring the %s run at concurrency %d the decision log started %d of %d segments without preallocation: the background preparation fell behind, and those segments' flushes are the slower ones of a growing file.\n",
				modeLabel(r.Mode), r.Concurrency, r.SegmentsAppended, r.SegmentsAppended+r.SegmentsPreallocated)
		}
	}
}

func modeLabel(m Mode) string {
	switch m {
	case ModeReal:
		return "(a) real"
	case ModeNoop:
		return "(b) noop"
	case ModeNaive:
		return "(c) naive"
	}
	return string(m)
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2f ms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.0f µs", float64(d)/1e3)
	}
}

func fmtNanos(ns float64) string {
	return fmt.Sprintf("%.1f µs", ns/1e3)
}

func fmtMiB(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
