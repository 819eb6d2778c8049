package process

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
)

// Load sends Checks from Workers goroutines, cycling through Requests,
// until its context ends. Every decision id that came back in an answer
// (allowed or denied) is acknowledged: the service promised it is on disk.
type Load struct {
	Client   authv3.AuthorizationClient
	Requests []*authv3.CheckRequest // read-only; shared by the workers
	Workers  int
	// Rate caps the total Checks per second; 0 means as fast as possible.
	Rate float64
	// CallTimeout bounds one Check; default 5 s.
	CallTimeout time.Duration
	// OnAnswer, when set, is called for every answered decision id (from
	// the worker goroutines, concurrently).
	OnAnswer func(decisionID string, allowed bool)
}

// LoadResult counts what happened.
type LoadResult struct {
	Acked []string // decision ids answered
	// Receipts holds the x-agent-receipt of every allowed answer, by
	// decision id.
	Receipts map[string]string
	Allowed  int
	Denied   int
	Errors   int // transport errors (e.g. the process died or stopped)
}

// Run drives the load until ctx ends and returns the tally.
func (l Load) Run(ctx context.Context) LoadResult {
	if l.CallTimeout <= 0 {
		l.CallTimeout = 5 * time.Second
	}
	var mu sync.Mutex
	res := LoadResult{Receipts: map[string]string{}}
	// Paced by a shared sequence: send n is due at start + n/Rate, so the
	// offered rate holds however the workers are scheduled.
	var seq atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < l.Workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; ctx.Err() == nil; i += l.Workers {
				if l.Rate > 0 {
					due := start.Add(time.Duration(float64(seq.Add(1)) / l.Rate * float64(time.Second)))
					t := time.NewTimer(time.Until(due))
					select {
					case <-t.C:
					case <-ctx.Done():
						t.Stop()
						return
					}
				}
				cctx, cancel := context.WithTimeout(context.Background(), l.CallTimeout)
				resp, err := l.Client.Check(cctx, l.Requests[i%len(l.Requests)])
				cancel()
				if err != nil {
					mu.Lock()
					res.Errors++
					mu.Unlock()
					if ctx.Err() == nil {
						time.Sleep(5 * time.Millisecond) // the process is gone or going; do not spin
					}
					continue
				}
				md := resp.GetDynamicMetadata().GetFields()
				id := md["decision_id"].GetStringValue()
				allowed := resp.GetOkResponse() != nil && resp.GetStatus().GetCode() == 0
				if l.OnAnswer != nil {
					l.OnAnswer(id, allowed)
				}
				receipt := ""
				for _, h := range resp.GetOkResponse().GetHeaders() {
					if h.GetHeader().GetKey() == "x-agent-receipt" {
						receipt = h.GetHeader().GetValue()
					}
				}
				mu.Lock()
				res.Acked = append(res.Acked, id)
				if receipt != "" {
					res.Receipts[id] = receipt
				}
				if allowed {
					res.Allowed++
				} else {
					res.Denied++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return res
}
