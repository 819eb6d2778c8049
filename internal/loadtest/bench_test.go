package loadtest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/proto"

	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/server"
)

// benchSetup generates the harness fixtures and returns a configuration
// file and one decoded request per kind.
func benchSetup(tb testing.TB) (string, map[Kind]*authv3.CheckRequest) {
	tb.Helper()
	p, err := newPKI(time.Now())
	if err != nil {
		tb.Fatal(err)
	}
	mix := Mix{}
	for _, k := range allKinds {
		mix[k] = 1
	}
	pool, serials, err := buildRequests(p, mix)
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	bundle := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(bundle, p.caPEM, 0o644); err != nil {
		tb.Fatal(err)
	}
	policyDir := filepath.Join(dir, "policies")
	if err := writePolicyDir(policyDir, filepath.Join("..", "..", "policies"), 10); err != nil {
		tb.Fatal(err)
	}
	crl := filepath.Join(dir, "ca.crl")
	if err := p.writeCRL(crl, serials, 0); err != nil {
		tb.Fatal(err)
	}
	cfg, err := writeServerConfig(dir, serverSpec{PolicyDir: policyDir, Bundle: bundle, CRLFiles: []string{crl}, TrustDomain: TrustDomain, LogMode: "sync"})
	if err != nil {
		tb.Fatal(err)
	}
	reqs := map[Kind]*authv3.CheckRequest{}
	for _, r := range pool {
		if reqs[r.kind] != nil {
			continue
		}
		req := &authv3.CheckRequest{}
		if err := proto.Unmarshal(r.raw, req); err != nil {
			tb.Fatal(err)
		}
		reqs[r.kind] = req
	}
	return cfg, reqs
}

// assemble builds the real decision path in process and waits until it is
// ready (revocation data loaded).
func assemble(tb testing.TB, cfgPath, logMode string) authv3.AuthorizationServer {
	tb.Helper()
	cfg, err := config.Load(cfgPath)
	if err != nil {
		tb.Fatal(err)
	}
	cfg.DecisionLog.Mode = logMode
	cfg.DataDir, cfg.DecisionLog.Dir = tb.TempDir(), "" // one log per instance
	// A starved machine must not turn a slow evaluation into a denial that
	// fails the benchmark: it measures cost, not deadlines.
	cfg.Policy.EvalTimeout, cfg.GRPC.CheckTimeout = config.Duration(10*time.Second), config.Duration(10*time.Second)
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		tb.Fatal(err)
	}
	comps, err := server.Assemble(cfg, hclog.NewNullLogger())
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, len(comps.Loops))
	for _, loop := range comps.Loops {
		go func() { _ = loop(ctx); done <- struct{}{} }()
	}
	tb.Cleanup(func() {
		cancel()
		for range comps.Loops {
			<-done
		}
		for _, c := range comps.Closers {
			if err := c(); err != nil {
				tb.Error(err)
			}
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		ready := true
		for _, rc := range comps.Ready {
			if rc.Check() != nil {
				ready = false
			}
		}
		if ready {
			return comps.Authorization
		}
		if time.Now().After(deadline) {
			tb.Fatal("decision path not ready after 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// BenchmarkCheck is one Check through the whole decision path with real
// components (identity cache, revocation, policy, signed record), called
// directly without gRPC, per request kind, with the decision log in sync and
// in async mode. ns/op is wall time per Check over concurrent callers.
func BenchmarkCheck(b *testing.B) {
	cfg, reqs := benchSetup(b)
	for _, logMode := range []string{"sync", "async"} {
		svc := assemble(b, cfg, logMode)
		for _, k := range []Kind{PeerAllow, XFCCAllow, PolicyDeny, Revoked, NoIdentity, Untrusted, BadXFCC} {
			req := reqs[k]
			want := expectedCode(ModeReal, k)
			b.Run(logMode+"/"+string(k), func(b *testing.B) {
				b.ReportAllocs()
				if logMode == "sync" {
					// 16 goroutines per P: enough concurrent appends for
					// group commit to share fsyncs, as concurrent Envoy
					// calls do. (Async needs no more than one per P.)
					b.SetParallelism(16)
				}
				b.RunParallel(func(pb *testing.PB) {
					ctx := context.Background()
					for pb.Next() {
						resp, err := svc.Check(ctx, req)
						if err != nil || resp.GetStatus().GetCode() != want {
							b.Errorf("%s: code %d (%s) err %v, want code %d", k, resp.GetStatus().GetCode(), resp.GetDeniedResponse().GetBody(), err, want)
							return
						}
					}
				})
			})
		}
	}
}

// BenchmarkCheckNaive is the naive reference path on the same requests.
func BenchmarkCheckNaive(b *testing.B) {
	cfgPath, reqs := benchSetup(b)
	cfg, err := config.Load(cfgPath)
	if err != nil {
		b.Fatal(err)
	}
	cfg.ApplyDefaults()
	n, err := newNaive(cfg)
	if err != nil {
		b.Fatal(err)
	}
	for _, k := range []Kind{PeerAllow, XFCCAllow, PolicyDeny} {
		req := reqs[k]
		want := expectedCode(ModeNaive, k)
		b.Run(string(k), func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				ctx := context.Background()
				for pb.Next() {
					resp, err := n.Check(ctx, req)
					if err != nil || resp.GetStatus().GetCode() != want {
						b.Errorf("%s: code %d (%s) err %v, want code %d", k, resp.GetStatus().GetCode(), resp.GetDeniedResponse().GetBody(), err, want)
						return
					}
				}
			})
		})
	}
}
