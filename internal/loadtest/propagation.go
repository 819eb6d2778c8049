package loadtest

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/checkreq"
	"github.com/agentauthz/agentauthz/internal/revocation"
)

const propTrustDomain = "prop.bench.test"

// propagation measures how long one revocation takes to deny on a replica:
// `agentauthz ca serve` and a real `bench server` with watch_url run as
// separate processes; this process revokes through the CA inventory, as
// `agentauthz agent revoke` does.
func (h *harness) propagation(ctx context.Context, rounds int) (*Propagation, error) {
	dir := filepath.Join(h.dir, "propagation")
	caDir := filepath.Join(dir, "ca-data")
	if err := os.MkdirAll(caDir, 0o700); err != nil {
		return nil, err
	}
	auth, err := ca.Open(caDir)
	if err != nil {
		return nil, err
	}
	defer auth.Close()
	if _, err := auth.Init(ca.InitRequest{TrustDomain: propTrustDomain, Operator: "bench"}); err != nil {
		return nil, fmt.Errorf("ca init: %w", err)
	}

	h.o.progress("starting ca serve and a replica with watch_url")
	pub, err := startProcess(ctx, h.o.Command, "agentauthz ca serve: listening on ",
		"ca", "serve", "--data-dir", caDir, "--addr", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer pub.stop()
	pubURL := strings.TrimPrefix(pub.firstLine, "agentauthz ca serve: listening on ")
	policyDir := filepath.Join(dir, "policies")
	if err := writePolicyDir(policyDir, h.o.PoliciesDir, 0); err != nil {
		return nil, err
	}
	// The replica authenticates to the control plane with its own
	// certificate, as a deployed one does.
	certDir := filepath.Join(dir, "replica")
	if err := runCommand(ctx, h.o.Command, "operator", "issue", "bench-replica", "--role", "replica",
		"--data-dir", caDir, "--out-dir", certDir); err != nil {
		return nil, fmt.Errorf("operator issue: %w", err)
	}
	cfg, err := writeServerConfig(dir, serverSpec{PolicyDir: policyDir, Bundle: auth.CertPath(propTrustDomain),
		WatchURL: pubURL + "/v1/watch?tenant=" + propTrustDomain, TrustDomain: propTrustDomain, LogMode: h.o.LogMode,
		ControlPlane: &controlPlaneConfig{CAFile: filepath.Join(caDir, "operator", "ca.pem"),
			CertFile: filepath.Join(certDir, "bench-replica.pem"), KeyFile: filepath.Join(certDir, "bench-replica.key")}})
	if err != nil {
		return nil, err
	}

	out := &Propagation{Rounds: rounds, GenerationPoll: revocation.DefaultGenerationPoll, DeniedWith: map[string]int{}}
	err = h.withServer(ctx, ModeReal, cfg, func(sp *serverProc) error {
		conn, err := grpc.NewClient("passthrough:///"+sp.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer conn.Close()
		client := authv3.NewAuthorizationClient(conn)
		issue := func(id string) (*authv3.CheckRequest, error) {
			iss, err := auth.Issue(ca.IssueRequest{TrustDomain: propTrustDomain, AgentID: id, Trust: 3,
				Scopes: []string{"payments:initiate"}, TTL: 24 * time.Hour, Operator: "bench"})
			if err != nil {
				return nil, fmt.Errorf("issue %s: %w", id, err)
			}
			return checkreq.Build(checkreq.Request{Method: "POST", Path: "/v1/payments", Via: checkreq.ViaPeer, CertPEM: iss.CertPEM})
		}
		control, err := issue(fmt.Sprintf("control-%d", time.Now().UnixNano()%1e9))
		if err != nil {
			return err
		}
		if err := expectAllowed(ctx, client, control); err != nil {
			return fmt.Errorf("control agent: %w", err)
		}
		// The control agent is checked throughout: no other agent may see a
		// single denial while revocations happen (issue 4).
		var controlChecks, controlDenials atomic.Int64
		cctx, stopControl := context.WithCancel(ctx)
		var cwg sync.WaitGroup
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			for cctx.Err() == nil {
				resp, err := client.Check(cctx, control)
				if cctx.Err() != nil {
					return
				}
				controlChecks.Add(1)
				if err != nil || resp.GetStatus().GetCode() != int32(codes.OK) {
					controlDenials.Add(1)
				}
				time.Sleep(time.Millisecond)
			}
		}()
		defer func() { stopControl(); cwg.Wait() }()

		base := time.Now().UnixNano() % 1e9
		for i := range rounds {
			id := fmt.Sprintf("prop-%d-%d", base, i)
			req, err := issue(id)
			if err != nil {
				return err
			}
			if err := expectAllowed(ctx, client, req); err != nil {
				return fmt.Errorf("%s before revocation: %w", id, err)
			}
			type denial struct {
				at     time.Time
				reason string
				err    error
			}
			denied := make(chan denial, 1)
			pctx, stopProbe := context.WithTimeout(ctx, 30*time.Second)
			go func() {
				for {
					resp, err := client.Check(pctx, req)
					if err != nil {
						denied <- denial{err: err}
						return
					}
					if resp.GetStatus().GetCode() != int32(codes.OK) {
						denied <- denial{at: time.Now(), reason: denyReason(resp)}
						return
					}
				}
			}()
			start := time.Now()
			if _, err := auth.Revoke(propTrustDomain, id, ca.ReasonKeyCompromise, "bench"); err != nil {
				stopProbe()
				return fmt.Errorf("revoke %s: %w", id, err)
			}
			d := <-denied
			stopProbe()
			if d.err != nil {
				return fmt.Errorf("%s never denied: %w", id, d.err)
			}
			out.Samples = append(out.Samples, d.at.Sub(start))
			out.DeniedWith[d.reason]++
		}
		stopControl()
		cwg.Wait()
		out.ControlChecks, out.ControlDenials = controlChecks.Load(), controlDenials.Load()
		return nil
	})
	if err != nil {
		return nil, err
	}
	s := slices.Clone(out.Samples)
	slices.Sort(s)
	pct := func(p float64) time.Duration {
		i := int(math.Ceil(float64(len(s))*p/100)) - 1 // nearest rank
		i = max(0, min(i, len(s)-1))
		return s[i]
	}
	out.P50, out.P99, out.Max = pct(50), pct(99), s[len(s)-1]
	h.o.progress("revocation propagation over %d rounds: p50 %s p99 %s max %s", rounds, fmtDur(out.P50), fmtDur(out.P99), fmtDur(out.Max))
	return out, nil
}

func expectAllowed(ctx context.Context, client authv3.AuthorizationClient, req *authv3.CheckRequest) error {
	resp, err := client.Check(ctx, req)
	if err != nil {
		return err
	}
	if resp.GetStatus().GetCode() != int32(codes.OK) {
		return fmt.Errorf("denied: %s", denyReason(resp))
	}
	return nil
}

// denyReason reads the reason from the denial body {"error","reason","decision_id"}.
func denyReason(resp *authv3.CheckResponse) string {
	var body struct {
		Reason string `json:"reason"`
	}
	if err := json.Unmarshal([]byte(resp.GetDeniedResponse().GetBody()), &body); err != nil || body.Reason == "" {
		return fmt.Sprintf("code %d", resp.GetStatus().GetCode())
	}
	return body.Reason
}
