package loadtest_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/agentauthz/agentauthz/internal/cli"
	"github.com/agentauthz/agentauthz/internal/loadtest"
)

// childEnv makes the test binary act as the agentauthz binary, so the
// harness can start `bench server` and `ca serve` as real processes.
const childEnv = "AGENTAUTHZ_LOADTEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(cli.Main())
	}
	os.Exit(m.Run())
}

func command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	return cmd
}

// TestHarnessShort runs the whole harness briefly at low concurrency and
// checks the report is complete and every answer was the right one. It
// asserts no timings.
func TestHarnessShort(t *testing.T) {
	if testing.Short() {
		t.Skip("starts several server processes")
	}
	mix, err := loadtest.ParseMix(loadtest.DefaultMix)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var progress strings.Builder
	rep, err := loadtest.Run(ctx, loadtest.Options{
		Command:           command,
		PoliciesDir:       "../../policies",
		WorkDir:           t.TempDir(),
		Warmup:            150 * time.Millisecond,
		Duration:          500 * time.Millisecond,
		Concurrency:       2,
		Concurrencies:     []int{2},
		RouteTables:       []int{10, 50},
		RevokedSerials:    []int{0},
		Mix:               mix,
		PropagationRounds: 2,
		PairedRounds:      2,
		PacedRounds:       2,
		Connections:       2, // one per worker at concurrency 2
		Progress:          &progress,
	})
	t.Log(progress.String())
	if err != nil {
		t.Fatal(err)
	}

	for _, mode := range []loadtest.Mode{loadtest.ModeReal, loadtest.ModeNoop, loadtest.ModeNaive} {
		r := rep.Result(mode)
		if r == nil {
			t.Fatalf("no headline result for %s", mode)
		}
		checkRun(t, string(mode), r)
	}
	if rep.RatioRPS <= 0 || rep.RatioCPU <= 0 {
		t.Errorf("ratios a/b=%v a/c=%v, want both > 0", rep.RatioRPS, rep.RatioCPU)
	}
	if len(rep.Paired) != 2 || rep.RatioRPSPaired <= 0 || rep.Paired[0].RealFirst || !rep.Paired[1].RealFirst {
		t.Errorf("paired rounds %+v, median ratio %v: want 2 rounds, (b) first then (a) first, ratio > 0", rep.Paired, rep.RatioRPSPaired)
	}
	for _, pr := range rep.Paired {
		checkRun(t, "paired noop", &pr.Noop)
		checkRun(t, "paired real", &pr.Real)
	}
	checkPaced(t, rep, 2)
	if len(rep.Curve) != 3 || len(rep.Routes) != 2 || len(rep.Revoked) != 1 {
		t.Errorf("curve/routes/revoked runs = %d/%d/%d, want 3/2/1", len(rep.Curve), len(rep.Routes), len(rep.Revoked))
	}
	for _, r := range rep.Routes {
		checkRun(t, "routes", &r)
	}
	if rep.Routes[1].Routes != 50 {
		t.Errorf("second route table has %d routes, want 50", rep.Routes[1].Routes)
	}
	if rl := rep.RateLimited; rl == nil {
		t.Error("no rate-limited run")
	} else {
		checkRun(t, "rate-limited", rl)
		if rl.Rate <= 0 {
			t.Errorf("rate-limited run has rate %v", rl.Rate)
		}
	}
	p := rep.Propagation
	if p == nil {
		t.Fatal("no revocation propagation result")
	}
	if len(p.Samples) != 2 || p.P50 <= 0 || p.P99 < p.P50 {
		t.Errorf("propagation samples %v p50 %v p99 %v", p.Samples, p.P50, p.P99)
	}
	for reason := range p.DeniedWith {
		if reason != "certificate_revoked" && reason != "agent_revoked" {
			t.Errorf("revoked agent denied with %q", reason)
		}
	}
	if p.ControlChecks == 0 || p.ControlDenials != 0 {
		t.Errorf("control agent: %d checks, %d denials; want some checks and no denial", p.ControlChecks, p.ControlDenials)
	}

	var md strings.Builder
	if err := rep.Markdown(&md); err != nil {
		t.Fatal(err)
	}
	out := md.String()
	for _, want := range []string{"## Headline", "| (a) real | 2 |", "| (b) noop | 2 |", "| (c) naive | 2 |",
		"## Targets", "the median of 2 back-to-back pairs", "## (a) and (b) back to back", "## (a) and (b) paced alike", "p99 of (a) ≤ 2 × p99 of (b)", "## Concurrency", "## Half of maximum throughput", "## Route-table size",
		"## Revoked serials", "## Revocation propagation", "nproc"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}

// With PacedRate the harness runs only the paced rounds, at that rate.
func TestHarnessPacedOnly(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two server processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := loadtest.Run(ctx, loadtest.Options{
		Command:     command,
		PoliciesDir: "../../policies",
		WorkDir:     t.TempDir(),
		Warmup:      150 * time.Millisecond,
		Duration:    500 * time.Millisecond,
		PacedRate:   300,
		PacedRounds: 3,
		Modes:       []loadtest.Mode{loadtest.ModeNoop, loadtest.ModeReal},
	})
	if err != nil {
		t.Fatal(err)
	}
	checkPaced(t, rep, 3)
	if len(rep.Headline) != 0 || len(rep.Curve) != 0 || rep.RateLimited != nil || len(rep.Paired) != 0 {
		t.Errorf("a paced-only run measured more: %d headline, %d curve, rate-limited %v, %d paired", len(rep.Headline), len(rep.Curve), rep.RateLimited != nil, len(rep.Paired))
	}
	for _, pr := range rep.Paced {
		if pr.Real.Rate != 300 || pr.Noop.Rate != 300 {
			t.Errorf("paced at %v and %v, want 300", pr.Real.Rate, pr.Noop.Rate)
		}
	}
}

// checkPaced checks the paced rounds: alternating order, both runs
// complete, and the median p99 ratio among the rounds' ratios.
func checkPaced(t *testing.T, rep *loadtest.Report, rounds int) {
	t.Helper()
	if len(rep.Paced) != rounds {
		t.Fatalf("%d paced rounds, want %d", len(rep.Paced), rounds)
	}
	lo, hi := rep.Paced[0].Ratio, rep.Paced[0].Ratio
	for i, pr := range rep.Paced {
		checkRun(t, "paced noop", &pr.Noop)
		checkRun(t, "paced real", &pr.Real)
		if pr.RealFirst != (i%2 == 1) {
			t.Errorf("paced round %d: real first = %v", i+1, pr.RealFirst)
		}
		if pr.Real.LogFlushes <= 0 || pr.Real.LogFlushes > pr.Real.ServerChecks || pr.Noop.LogFlushes != 0 {
			t.Errorf("paced round %d: log flushes (a) %d for %d Checks, (b) %d; want 1..Checks and 0", i+1, pr.Real.LogFlushes, pr.Real.ServerChecks, pr.Noop.LogFlushes)
		}
		if want := float64(pr.Real.P99) / float64(pr.Noop.P99); pr.Ratio != want {
			t.Errorf("paced round %d: ratio %v, want p99 (a)/(b) = %v", i+1, pr.Ratio, want)
		}
		lo, hi = min(lo, pr.Ratio), max(hi, pr.Ratio)
	}
	if rep.RatioP99Paced < lo || rep.RatioP99Paced > hi || rep.RatioP99Paced <= 0 {
		t.Errorf("median p99 ratio %v outside the rounds' %v..%v", rep.RatioP99Paced, lo, hi)
	}
}

func checkRun(t *testing.T, name string, r *loadtest.RunResult) {
	t.Helper()
	if r.Requests == 0 || r.RPS <= 0 || r.ServerChecks == 0 {
		t.Errorf("%s: requests %d rps %v server checks %d, want > 0", name, r.Requests, r.RPS, r.ServerChecks)
	}
	if r.Errors != 0 || r.Mismatches != 0 {
		t.Errorf("%s: %d errors, %d wrong answers (first: %s)", name, r.Errors, r.Mismatches, r.FirstError)
	}
	if r.P50 <= 0 || r.P99 < r.P50 || r.P999 < r.P99 {
		t.Errorf("%s: percentiles p50 %v p99 %v p99.9 %v not ordered", name, r.P50, r.P99, r.P999)
	}
	if r.CPUPerCheck <= 0 || r.AllocsPerCheck <= 0 || r.RSSBytes <= 0 {
		t.Errorf("%s: cpu/check %v allocs/check %v rss %d, want > 0", name, r.CPUPerCheck, r.AllocsPerCheck, r.RSSBytes)
	}
	if r.ClientCPUPerCheck <= 0 {
		t.Errorf("%s: client cpu/check %v, want > 0", name, r.ClientCPUPerCheck)
	}
	if runtime.GOOS == "linux" && (r.MachineIdle < 0 || r.MachineIdle > 1 || r.MachineSteal < 0 || r.MachineIdle+r.MachineSteal > 1) {
		t.Errorf("%s: machine idle %v, steal %v, want shares in [0, 1]", name, r.MachineIdle, r.MachineSteal)
	}
}

// The fleet curve, short: small fleets, few requests. Equal agents behind
// fresh pointers (the SPIFFE half of the fleet) must hit the decision
// cache, and a fleet far larger than the caches must still run.
func TestFleetCurveShort(t *testing.T) {
	pts, err := loadtest.RunFleet(context.Background(), loadtest.FleetOptions{
		PoliciesDir: filepath.Join("..", "..", "policies"), Agents: []int{50, 5000}, Requests: 3000,
		IdentityCache: 100, DecisionCache: 100,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(pts) != 2 {
		t.Fatalf("%d points", len(pts))
	}
	small, large := pts[0], pts[1]
	// 50 agents, 3 routes each, caches of 100: after the warm-up every
	// identity and every decision is cached.
	if small.IdentityHitRate != 1 || small.DecisionHitRate != 1 {
		t.Errorf("50 agents: identity hits %v, decision hits %v; want all", small.IdentityHitRate, small.DecisionHitRate)
	}
	if large.Distinct <= 100 || large.DecisionHitRate >= small.DecisionHitRate || large.DecisionHitRate == 0 {
		t.Errorf("5000 agents: %+v", large)
	}
	t.Log("\n" + loadtest.FleetTable(loadtest.FleetOptions{Agents: []int{50, 5000}, Requests: 3000, IdentityCache: 100, DecisionCache: 100}, pts))
}
