package loadtest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protowire"
)

const checkMethod = "/envoy.service.auth.v3.Authorization/Check"

// rawCodec sends pre-marshalled requests and keeps responses as bytes, so the
// client spends no CPU on protobuf (client and server share the cores). It
// names itself "proto" so the server decodes with its usual codec.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	b, ok := v.([]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: %T is not []byte", v)
	}
	return b, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	p, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: %T is not *[]byte", v)
	}
	*p = append((*p)[:0], data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

// statusCode reads CheckResponse.status.code (field 1, then field 1) without
// decoding the rest; -1 when there is no status or the bytes are malformed.
// It follows proto's merge rules: several status fields merge, the last code
// wins, and a status without a code field is 0 (OK).
func statusCode(b []byte) int32 {
	code, seen := int32(0), false
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return -1
		}
		b = b[n:]
		if num == 1 && typ == protowire.BytesType {
			st, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return -1
			}
			b = b[n:]
			seen = true
			for len(st) > 0 {
				num, typ, n := protowire.ConsumeTag(st)
				if n < 0 {
					return -1
				}
				st = st[n:]
				if num == 1 && typ == protowire.VarintType {
					v, n := protowire.ConsumeVarint(st)
					if n < 0 {
						return -1
					}
					code = int32(v)
					st = st[n:]
					continue
				}
				n = protowire.ConsumeFieldValue(num, typ, st)
				if n < 0 {
					return -1
				}
				st = st[n:]
			}
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return -1
		}
		b = b[n:]
	}
	if !seen {
		return -1
	}
	return code
}

// dial opens the n client connections a load run spreads its workers over
// (as Envoy opens one per worker thread to an ext_authz cluster).
func dial(addr string, n int) ([]*grpc.ClientConn, error) {
	conns := make([]*grpc.ClientConn, 0, n)
	for range n {
		c, err := grpc.NewClient("passthrough:///"+addr,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})),
		)
		if err != nil {
			closeAll(conns)
			return nil, err
		}
		conns = append(conns, c)
	}
	return conns, nil
}

func closeAll(conns []*grpc.ClientConn) {
	for _, c := range conns {
		c.Close()
	}
}

// loadSpec is one measured run.
type loadSpec struct {
	Concurrency int
	Warmup      time.Duration
	Duration    time.Duration
	// Rate, when > 0, paces requests open-loop at this many per second;
	// latency is then measured from each request's scheduled time, so
	// queueing behind a slow server counts (no coordinated omission).
	Rate float64
}

// loadResult is what the client saw in the measured window.
type loadResult struct {
	Requests   int64
	Errors     int64 // gRPC errors (transport, deadline)
	Mismatches int64 // answers whose code differs from the expected one
	Elapsed    time.Duration
	Latencies  []time.Duration // sorted
	ByKind     map[Kind]int64
	FirstError string
}

func (r *loadResult) RPS() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Elapsed.Seconds()
}

// Percentile returns the p-th percentile (0 < p < 100) latency.
func (r *loadResult) Percentile(p float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	// Nearest rank.
	i := int(math.Ceil(float64(len(r.Latencies))*p/100)) - 1
	i = max(0, min(i, len(r.Latencies)-1))
	return r.Latencies[i]
}

// phases of a run, shared by the workers through an atomic.
const (
	phaseWarmup = iota
	phaseMeasure
	phaseStop
)

type worker struct {
	lat        []time.Duration
	errors     int64
	mismatches int64
	byKind     map[Kind]int64
	firstErr   string
}

// drive runs spec against conn. onMeasure is called when the warmup ends and
// when the measured window ends (to snapshot server stats).
func drive(ctx context.Context, conns []*grpc.ClientConn, mode Mode, pool []request, spec loadSpec, onMeasure func(start bool) error) (*loadResult, error) {
	if spec.Concurrency < 1 {
		return nil, errors.New("concurrency must be at least 1")
	}
	var phase atomic.Int32
	var tokens chan time.Time
	if spec.Rate > 0 {
		tokens = make(chan time.Time, 1<<16)
	}
	workers := make([]*worker, spec.Concurrency)
	var wg sync.WaitGroup
	for w := range workers {
		wk := &worker{byKind: map[Kind]int64{}}
		workers[w] = wk
		wg.Add(1)
		conn := conns[w%len(conns)]
		go func() {
			defer wg.Done()
			var resp []byte
			i := w * 7919 // spread workers over the pool
			for {
				var sched time.Time
				if tokens != nil {
					t, ok := <-tokens
					if !ok {
						return
					}
					if phase.Load() == phaseStop {
						continue // drain what the pacer queued
					}
					sched = t
				} else if phase.Load() == phaseStop {
					return
				}
				r := pool[i%len(pool)]
				i++
				start := time.Now()
				if sched.IsZero() {
					sched = start
				}
				err := conn.Invoke(ctx, checkMethod, r.raw, &resp)
				lat := time.Since(sched)
				if phase.Load() != phaseMeasure {
					continue
				}
				if err != nil {
					if wk.errors == 0 {
						wk.firstErr = err.Error()
					}
					wk.errors++
					continue
				}
				if statusCode(resp) != expectedCode(mode, r.kind) {
					if wk.mismatches == 0 && wk.firstErr == "" {
						wk.firstErr = fmt.Sprintf("%s: got code %d, want %d", r.kind, statusCode(resp), expectedCode(mode, r.kind))
					}
					wk.mismatches++
				}
				wk.lat = append(wk.lat, lat)
				wk.byKind[r.kind]++
			}
		}()
	}
	pacerDone := make(chan struct{})
	if tokens != nil {
		go func() {
			defer close(pacerDone)
			defer close(tokens)
			precisePacing()
			interval := time.Duration(float64(time.Second) / spec.Rate)
			next := time.Now()
			for phase.Load() != phaseStop {
				now := time.Now()
				for !next.After(now) {
					select {
					case tokens <- next:
					default:
						// The backlog is full: the server cannot keep up;
						// drop the token rather than grow without bound.
					}
					next = next.Add(interval)
				}
				sleepUntil(next)
			}
		}()
	} else {
		close(pacerDone)
	}

	stop := func() {
		phase.Store(phaseStop)
		<-pacerDone
		wg.Wait()
	}
	if err := sleepCtx(ctx, spec.Warmup); err != nil {
		stop()
		return nil, err
	}
	if err := onMeasure(true); err != nil {
		stop()
		return nil, err
	}
	start := time.Now()
	phase.Store(phaseMeasure)
	sleepErr := sleepCtx(ctx, spec.Duration)
	phase.Store(phaseWarmup) // stop recording; workers keep the load on until the snapshot
	elapsed := time.Since(start)
	if sleepErr != nil {
		stop()
		return nil, sleepErr
	}
	err := onMeasure(false)
	stop()
	if err != nil {
		return nil, err
	}
	res := &loadResult{Elapsed: elapsed, ByKind: map[Kind]int64{}}
	for _, wk := range workers {
		res.Requests += int64(len(wk.lat))
		res.Errors += wk.errors
		res.Mismatches += wk.mismatches
		res.Latencies = append(res.Latencies, wk.lat...)
		for k, n := range wk.byKind {
			res.ByKind[k] += n
		}
		if res.FirstError == "" {
			res.FirstError = wk.firstErr
		}
	}
	slices.Sort(res.Latencies)
	return res, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
