package loadtest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync/atomic"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"

	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/server"
)

// Mode selects what a bench server process runs.
type Mode string

const (
	// ModeReal is the real decision path (server.Assemble) with every
	// feature of the configuration on.
	ModeReal Mode = "real"
	// ModeNoop answers OK to every Check without looking at it: the
	// ceiling of the gRPC stack on this machine.
	ModeNoop Mode = "noop"
	// ModeNaive is the naive reference path: per-request certificate
	// decoding and chain verification without a cache, protobuf → map →
	// rego.EvalInput with the same policy, no revocation, no log.
	ModeNaive Mode = "naive"
)

// ParseMode accepts real, noop and naive.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeReal, ModeNoop, ModeNaive:
		return m, nil
	}
	return "", fmt.Errorf("mode %q: want real, noop or naive", s)
}

// statsPath is the server's stats endpoint on its HTTP listener.
const statsPath = "/bench/stats"

// ServerStats is what a bench server reports about its own process.
type ServerStats struct {
	Mode    Mode  `json:"mode"`
	Checks  int64 `json:"checks"`
	Allowed int64 `json:"allowed"`
	// CPUNanos is user+system CPU of the whole process (getrusage).
	CPUNanos int64 `json:"cpu_ns"`
	// Mallocs is the cumulative count of heap objects allocated.
	Mallocs uint64 `json:"mallocs"`
	// RSSBytes is the resident set size now; MaxRSSBytes the peak.
	RSSBytes    int64  `json:"rss_bytes"`
	MaxRSSBytes int64  `json:"max_rss_bytes"`
	HeapBytes   uint64 `json:"heap_bytes"`
	GCCycles    uint64 `json:"gc_cycles"`
	GOMAXPROCS  int    `json:"gomaxprocs"`
	// Decision-log segments started so far, by kind (real mode only): an
	// appended one means the background preparation fell behind, and its
	// flushes are the slower ones of a growing file.
	SegmentsPreallocated int64 `json:"segments_preallocated"`
	SegmentsAppended     int64 `json:"segments_appended"`
	// LogFlushes counts the decision log's group commits so far (real
	// mode only): records per flush is what a flush's cost is shared by.
	LogFlushes int64 `json:"log_flushes"`
}

// readSegments reads agentauthz_decisionlog_segments_total{kind} and the
// number of group commits (agentauthz_decisionlog_fsync_batch_records'
// count) from reg.
func readSegments(reg prometheus.Gatherer, st *ServerStats) {
	mfs, err := reg.Gather()
	if err != nil {
		return
	}
	for _, mf := range mfs {
		if mf.GetName() == "agentauthz_decisionlog_fsync_batch_records" && len(mf.GetMetric()) == 1 {
			st.LogFlushes = int64(mf.GetMetric()[0].GetHistogram().GetSampleCount())
		}
		if mf.GetName() != "agentauthz_decisionlog_segments_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() != "kind" {
					continue
				}
				n := int64(m.GetCounter().GetValue())
				switch l.GetValue() {
				case "preallocated":
					st.SegmentsPreallocated = n
				case "appended":
					st.SegmentsAppended = n
				}
			}
		}
	}
}

// counting wraps the Check server to count answers; two atomic adds are
// noise next to a Check.
type counting struct {
	authv3.UnimplementedAuthorizationServer
	inner   authv3.AuthorizationServer
	checks  atomic.Int64
	allowed atomic.Int64
}

func (c *counting) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	resp, err := c.inner.Check(ctx, req)
	c.checks.Add(1)
	if err == nil && resp.GetStatus().GetCode() == int32(codes.OK) {
		c.allowed.Add(1)
	}
	return resp, err
}

// noop allows everything.
type noop struct {
	authv3.UnimplementedAuthorizationServer
}

func (noop) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return &authv3.CheckResponse{
		Status:       &status.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}},
	}, nil
}

// ServerOptions configure RunServer.
type ServerOptions struct {
	Mode Mode
	// ConfigFile is the serve configuration (real and naive modes).
	ConfigFile string
	// Stdout receives one line "ready grpc=<addr> http=<addr>" once the
	// server listens.
	Stdout io.Writer
	// Stderr receives the server's log.
	Stderr io.Writer
}

// RunServer runs one bench server on loopback listeners until ctx ends. It
// is the hidden `agentauthz bench server` command; the harness starts it as a
// separate process so that its CPU and allocations are its own.
func RunServer(ctx context.Context, o ServerOptions) error {
	if o.Stderr == nil {
		o.Stderr = os.Stderr
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: "bench-server", Level: hclog.Error, Output: o.Stderr})
	var cfg config.Config
	if o.ConfigFile != "" {
		var err error
		cfg, err = config.Load(o.ConfigFile)
		if err != nil {
			return err
		}
	}
	cfg.GRPC.Addr, cfg.HTTP.Addr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.ApplyDefaults()

	var comps server.Components
	switch o.Mode {
	case ModeReal:
		if err := cfg.Validate(); err != nil {
			return err
		}
		var err error
		comps, err = server.Assemble(cfg, logger)
		if err != nil {
			return err
		}
	case ModeNoop:
		comps = server.Components{Authorization: noop{}, Handlers: map[string]http.Handler{}}
	case ModeNaive:
		n, err := newNaive(cfg)
		if err != nil {
			return err
		}
		comps = server.Components{Authorization: n, Handlers: map[string]http.Handler{}}
	default:
		return fmt.Errorf("mode %q: want real, noop or naive", o.Mode)
	}
	cnt := &counting{inner: comps.Authorization}
	comps.Authorization = cnt
	comps.Handlers["GET "+statsPath] = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("gc") == "1" {
			// Collect and return memory to the OS first: what is left is
			// what the server really holds. Only asked for after a
			// measured window.
			debug.FreeOSMemory()
		}
		st := readStats()
		st.Mode, st.Checks, st.Allowed = o.Mode, cnt.checks.Load(), cnt.allowed.Load()
		if comps.Registry != nil {
			readSegments(comps.Registry, &st)
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(st)
	})
	comps.Handlers["GET /debug/pprof/profile"] = http.HandlerFunc(pprof.Profile)
	comps.Handlers["GET /debug/pprof/trace"] = http.HandlerFunc(pprof.Trace)
	comps.Handlers["GET /debug/pprof/heap"] = pprof.Handler("heap")
	comps.Handlers["GET /debug/pprof/allocs"] = pprof.Handler("allocs")

	srv, err := server.New(cfg, comps, logger)
	if err != nil {
		comps.Close()
		return err
	}
	grpcLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	httpLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		grpcLis.Close()
		return err
	}
	if o.Stdout != nil {
		fmt.Fprintf(o.Stdout, "ready grpc=%s http=%s\n", grpcLis.Addr(), httpLis.Addr())
	}
	return srv.Serve(ctx, grpcLis, httpLis, nil)
}

// readStats reads the process's CPU, allocation and memory figures.
func readStats() ServerStats {
	var st ServerStats
	st.CPUNanos = procCPUNanos()
	samples := []metrics.Sample{
		{Name: "/gc/heap/allocs:objects"},
		{Name: "/gc/heap/tiny/allocs:objects"},
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/gc/cycles/total:gc-cycles"},
	}
	metrics.Read(samples)
	u := func(i int) uint64 {
		if samples[i].Value.Kind() == metrics.KindUint64 {
			return samples[i].Value.Uint64()
		}
		return 0
	}
	// MemStats.Mallocs counts tiny allocations too; so do we.
	st.Mallocs = u(0) + u(1)
	st.HeapBytes, st.GCCycles = u(2), u(3)
	st.RSSBytes = currentRSS()
	st.MaxRSSBytes = peakRSS()
	st.GOMAXPROCS = runtime.GOMAXPROCS(0)
	return st
}

// peakRSS reads this process's resident high-water mark (VmHWM in
// /proc/self/status). Not getrusage's ru_maxrss: Linux carries that over
// exec from the forked copy of the parent, so a server started by a harness
// that had just built a million-entry CRL reported the harness's 600 MiB.
func peakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	return parseVMHWM(string(b))
}

// parseVMHWM returns the "VmHWM:   1234 kB" value in bytes, 0 if absent.
func parseVMHWM(status string) int64 {
	for line := range strings.Lines(status) {
		rest, ok := strings.CutPrefix(line, "VmHWM:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || kb < 0 {
			return 0
		}
		return kb * 1024
	}
	return 0
}

// currentRSS reads the resident set from /proc/self/statm (pages).
func currentRSS() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return 0
	}
	return pages * int64(os.Getpagesize())
}
