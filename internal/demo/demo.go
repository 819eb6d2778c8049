package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/checkreq"
	"github.com/agentauthz/agentauthz/internal/extauthz"
	"github.com/agentauthz/agentauthz/internal/reason"
)

// Defaults.
const (
	DefaultReplicas = 2
	// revocationTimeout bounds the wait for a revocation to reach a replica.
	revocationTimeout = 15 * time.Second
	// revocationProbe is the interval between probe requests while waiting.
	revocationProbe = 20 * time.Millisecond
)

// ErrNoPolicies means the policies directory was not found.
var ErrNoPolicies = errors.New("no policies")

// ErrDataDirInUse means the given data directory already holds a CA
// inventory.
var ErrDataDirInUse = errors.New("data directory in use")

// ErrUnexpected means a decision or an answer differed from the scenario.
var ErrUnexpected = errors.New("the demo did not go as expected")

// Options configure Run.
type Options struct {
	// DataDir is where the CA, agents and logs go. Empty means a new
	// temporary directory, removed at the end unless Keep is set. A given
	// directory is always kept and must not hold an inventory yet.
	DataDir string
	Keep    bool
	// PoliciesDir holds the shipped policies (authz.rego, data.json).
	PoliciesDir string
	// Replicas is the number of decision instances; default DefaultReplicas.
	Replicas int
	// Logger receives the services' logs; default none.
	Logger hclog.Logger
}

// Outcome is what happened, for tests and --json.
type Outcome struct {
	DataDir     string         `json:"data_dir"`
	Kept        bool           `json:"kept"`
	TrustDomain string         `json:"trust_domain"`
	Agents      []AgentInfo    `json:"agents"`
	Replicas    []ReplicaInfo  `json:"replicas"`
	Publisher   string         `json:"revocation_publisher"`
	Decisions   []Decision     `json:"decisions"`
	Revocation  *Revocation    `json:"revocation"`
	After       []Decision     `json:"after_revocation"`
	Verify      []VerifyResult `json:"verify"`
	Answers     Answers        `json:"answers"`
	// Response is one allowed request's response, signed and verified.
	Response *SignedResponse `json:"signed_response"`
	// MCP is the MCP act: tool calls decided one by one.
	MCP *MCPAct `json:"mcp"`
	// Unexpected lists every decision or answer that differed from the
	// scenario; Run returns ErrUnexpected when it is not empty.
	Unexpected []string      `json:"unexpected"`
	Duration   time.Duration `json:"duration_ns"`
}

// AgentInfo is one issued agent.
type AgentInfo struct {
	ID       string   `json:"id"`
	Role     string   `json:"role"`
	SPIFFEID string   `json:"spiffe_id"`
	Trust    string   `json:"trust"`
	Scopes   []string `json:"scopes"`
	Owner    string   `json:"owner"`
	Serial   string   `json:"serial"`
	CertPath string   `json:"cert_path"`

	certPEM []byte
	keyPEM  []byte // in memory only: the MCP act's agents hold their keys
}

// ReplicaInfo describes one decision instance.
type ReplicaInfo struct {
	Name     string `json:"name"`
	GRPCAddr string `json:"grpc_addr"`
	HTTPAddr string `json:"http_addr"`
	LogDir   string `json:"log_dir"`
	KeyDir   string `json:"key_dir"`
}

// Decision is one request and how the service answered it.
type Decision struct {
	Agent     string `json:"agent"`
	Via       string `json:"via"`
	Replica   string `json:"replica"`
	Method    string `json:"method"`
	Path      string `json:"path"`
	Note      string `json:"note"`
	Operation string `json:"operation"`
	Allowed   bool   `json:"allowed"`
	Status    int    `json:"http_status"`
	Reason    string `json:"reason"`
	// AgentSeen is the agent id the service decided for (dynamic metadata).
	AgentSeen  string `json:"agent_seen"`
	DecisionID string `json:"decision_id"`
	// Receipt is x-agent-receipt, passed upstream on an allowed request.
	Receipt string `json:"receipt,omitempty"`
	// Expected says whether the decision is the one the scenario expects.
	Expected bool   `json:"expected"`
	Want     string `json:"want"`
}

// Revocation is the rogue agent's revocation and how long it took to bite.
type Revocation struct {
	Agent     string          `json:"agent"`
	Serials   []string        `json:"serials"`
	RevokedAt time.Time       `json:"revoked_at"`
	Replicas  []FirstDenyTime `json:"replicas"`
}

// FirstDenyTime is when one replica first refused the revoked agent,
// measured from the moment the revocation was committed.
type FirstDenyTime struct {
	Replica       string        `json:"replica"`
	After         time.Duration `json:"after_ns"`
	DecisionID    string        `json:"decision_id"`
	Reason        string        `json:"reason"`
	AllowedBefore int           `json:"allowed_while_propagating"`
}

// Run plays the scenario, writing a readable account to w.
func Run(ctx context.Context, w io.Writer, opts Options) (out *Outcome, err error) {
	start := time.Now()
	if opts.Replicas <= 0 {
		opts.Replicas = DefaultReplicas
	}
	if opts.Replicas > 8 {
		return nil, errors.New("at most 8 replicas")
	}
	logger := opts.Logger
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	policies, err := findPolicies(opts.PoliciesDir)
	if err != nil {
		return nil, err
	}
	dataDir, cleanup, err := prepareDataDir(opts.DataDir, opts.Keep)
	if err != nil {
		return nil, err
	}
	out = &Outcome{DataDir: dataDir, Kept: opts.DataDir != "" || opts.Keep, TrustDomain: TrustDomain, Unexpected: []string{}}
	defer func() {
		if cerr := cleanup(); cerr != nil && err == nil {
			err = cerr
		}
		if err != nil && ctx.Err() != nil {
			// Whatever failed, it failed because the run was cut short.
			err = fmt.Errorf("interrupted: %w", ctx.Err())
		}
	}()
	p := &printer{w: w}
	p.title("agentauthz demo: Acme Payments and five AI agents")
	if out.Kept {
		p.line("data dir: %s (kept)", dataDir)
	} else {
		p.line("data dir: %s (removed at the end; --keep keeps it)", dataDir)
	}

	// 1. The CA and the agents.
	auth, err := ca.Open(dataDir)
	if err != nil {
		return out, fmt.Errorf("open ca inventory: %w", err)
	}
	defer auth.Close()
	pubLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return out, fmt.Errorf("listen: %w", err)
	}
	pubURL := "http://" + pubLis.Addr().String()
	info, err := auth.Init(ca.InitRequest{
		TrustDomain: TrustDomain, Org: Org, Operator: operator,
		CRLURL: pubURL + "/v1/crl/" + TrustDomain,
	})
	if err != nil {
		pubLis.Close()
		return out, fmt.Errorf("create CA: %w", err)
	}
	agents, err := issueAgents(auth, dataDir)
	if err != nil {
		pubLis.Close()
		return out, err
	}
	out.Agents = agents
	p.section("1. A CA for %s and one certificate per agent", Org)
	p.line("CA      %s  (%s)", info.Subject, info.CertPath)
	p.agents(agents)

	// 2. The revocation push channel and the decision replicas.
	pub, err := startPublisher(ctx, pubLis, auth, logger.Named("ca-serve"))
	if err != nil {
		pubLis.Close()
		return out, err
	}
	defer func() {
		if perr := pub.stop(); perr != nil && err == nil {
			err = fmt.Errorf("revocation publisher: %w", perr)
		}
	}()
	out.Publisher = pub.URL
	reps := make([]*replica, opts.Replicas)
	defer func() {
		for _, r := range reps {
			if r != nil {
				if rerr := r.stop(); rerr != nil && err == nil {
					err = rerr
				}
			}
		}
	}()
	var wg sync.WaitGroup
	errs := make([]error, opts.Replicas)
	for i := range reps {
		wg.Go(func() {
			name := fmt.Sprintf("replica-%c", 'a'+i)
			reps[i], errs[i] = startReplica(ctx, name, filepath.Join(dataDir, "replicas", name), policies,
				info.CertPath, pub.URL+"/v1/watch", logger.Named(name))
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return out, err
	}
	p.section("2. Decision service: %d replicas on loopback, revocations pushed to both", opts.Replicas)
	p.line("revocation push  %s/v1/watch?tenant=%s   (what `agentauthz ca serve` runs)", pub.URL, TrustDomain)
	for _, r := range reps {
		out.Replicas = append(out.Replicas, ReplicaInfo{Name: r.Name, GRPCAddr: r.GRPCAddr, HTTPAddr: r.HTTPAddr, LogDir: r.LogDir, KeyDir: r.KeyDir})
		p.line("%-16s ext_authz grpc://%s  http://%s  log %s (sync)", r.Name, r.GRPCAddr, r.HTTPAddr, rel(dataDir, r.LogDir))
	}
	p.line("policies         %s", policies)

	// 3. Agents at work.
	byID := map[string]AgentInfo{}
	for _, a := range agents {
		byID[a.ID] = a
	}
	p.section("3. Agents at work: requests as Envoy sends them (peer certificate or XFCC), over gRPC")
	for i, s := range scenarioSteps() {
		d, err := send(ctx, reps[i%len(reps)], byID, s)
		if err != nil {
			return out, err
		}
		out.Decisions = append(out.Decisions, d)
	}
	p.decisions(out.Decisions)
	sr, err := signDemoResponse(ctx, reps, out.Decisions)
	if err != nil {
		return out, err
	}
	out.Response = sr
	p.signedResponse(sr)
	if out.MCP, err = runMCPAct(ctx, reps[0], byID); err != nil {
		return out, err
	}
	p.mcpAct(out.MCP)

	// 4. Revoke the rogue agent.
	p.section("4. Revoking %s (agent-level revocation in the CA)", RogueAgent)
	rev, err := revoke(ctx, auth, reps, byID)
	if err != nil {
		return out, err
	}
	out.Revocation = rev
	p.revocation(rev)
	for i, s := range afterRevocationSteps() {
		d, err := send(ctx, reps[i%len(reps)], byID, s)
		if err != nil {
			return out, err
		}
		out.After = append(out.After, d)
	}
	p.line("")
	p.decisions(out.After)

	// Stop the replicas: the logs are final, as an auditor receives them.
	for _, r := range reps {
		if err := r.stop(); err != nil {
			return out, err
		}
	}

	// 5 and 6. Verify the logs and answer the auditor from them.
	if err := audit(out, reps, auth); err != nil {
		return out, err
	}
	p.verify(out.Verify)
	p.answers(out)

	for _, d := range append(slices.Clone(out.Decisions), out.After...) {
		if !d.Expected {
			out.Unexpected = append(out.Unexpected, fmt.Sprintf("%s %s %s via %s: got %s, want %s", d.Agent, d.Method, d.Path, d.Via, d.Reason, d.Want))
		}
	}
	out.Unexpected = append(out.Unexpected, out.Answers.problems()...)
	if out.Response != nil {
		out.Unexpected = append(out.Unexpected, out.Response.problems()...)
	}
	out.Unexpected = append(out.Unexpected, out.MCP.problems()...)
	out.Duration = time.Since(start)
	p.section("Done in %.1fs", out.Duration.Seconds())
	if len(out.Unexpected) > 0 {
		for _, u := range out.Unexpected {
			p.line("UNEXPECTED: %s", u)
		}
		return out, fmt.Errorf("%w: %s", ErrUnexpected, strings.Join(out.Unexpected, "; "))
	}
	p.line("every decision was the expected one; the logs verify; all four questions answered from the logs")
	if out.Kept {
		p.line("look around: ls %s; openssl x509 -in %s -noout -subject", dataDir, agents[1].CertPath)
	}
	return out, nil
}

// findPolicies checks that dir holds Rego files.
func findPolicies(dir string) (string, error) {
	if dir == "" {
		dir = "policies"
	}
	matches, err := filepath.Glob(filepath.Join(dir, "*.rego"))
	if err != nil || len(matches) == 0 {
		return "", fmt.Errorf("%w: %s holds no .rego files", ErrNoPolicies, dir)
	}
	return dir, nil
}

// prepareDataDir returns the data directory and how to clean it up.
func prepareDataDir(dir string, keep bool) (string, func() error, error) {
	if dir == "" {
		tmp, err := os.MkdirTemp("", "agentauthz-demo-")
		if err != nil {
			return "", nil, err
		}
		if keep {
			return tmp, func() error { return nil }, nil
		}
		return tmp, func() error { return os.RemoveAll(tmp) }, nil
	}
	if _, err := os.Stat(filepath.Join(dir, "inventory.db")); err == nil {
		return "", nil, fmt.Errorf("%w: %s already holds a CA inventory", ErrDataDirInUse, dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", nil, err
	}
	return dir, func() error { return nil }, nil
}

// issueAgents issues the scenario's certificates. Only the certificates are
// written (under <data>/demo/agents), for a look with openssl afterwards:
// Envoy forwards certificates, never keys, so the demo needs no key.
func issueAgents(auth *ca.Authority, dataDir string) ([]AgentInfo, error) {
	dir := filepath.Join(dataDir, "demo", "agents")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	var out []AgentInfo
	for _, s := range scenarioAgents() {
		iss, err := auth.Issue(ca.IssueRequest{
			TrustDomain: TrustDomain, AgentID: s.ID, Trust: s.Trust, Scopes: s.Scopes,
			Owner: s.Owner, TTL: 24 * time.Hour, Operator: operator,
		})
		if err != nil {
			return nil, fmt.Errorf("issue %s: %w", s.ID, err)
		}
		path := filepath.Join(dir, s.ID+".pem")
		if err := os.WriteFile(path, iss.CertPEM, 0o600); err != nil {
			return nil, err
		}
		out = append(out, AgentInfo{
			ID: s.ID, Role: s.Role, SPIFFEID: iss.Record.SPIFFEID, Trust: iss.Record.Trust,
			Scopes: iss.Record.Scopes, Owner: iss.Record.Owner, Serial: iss.Record.Serial,
			CertPath: path, certPEM: iss.CertPEM, keyPEM: iss.KeyPEM,
		})
	}
	return out, nil
}

// send makes one request of s through r and records the answer.
func send(ctx context.Context, r *replica, agents map[string]AgentInfo, s step) (Decision, error) {
	ag, ok := agents[s.Agent]
	if !ok {
		return Decision{}, fmt.Errorf("scenario: unknown agent %q", s.Agent)
	}
	cr := checkreq.Request{
		Method: s.Method, Path: s.Path, Host: apiHost, CertPEM: ag.certPEM, Via: s.Via,
		RequestID: newRequestID(), SourceAddr: scenarioSource(s.Agent),
		Headers: map[string]string{"user-agent": "acme-agent/" + s.Agent},
	}
	if s.ForgeAs != "" {
		victim := agents[s.ForgeAs]
		leaf, err := parseCert(victim.certPEM)
		if err != nil {
			return Decision{}, err
		}
		cr.ForgedXFCC = checkreq.XFCCElement(leaf, victim.certPEM)
	}
	req, err := checkreq.Build(cr)
	if err != nil {
		return Decision{}, fmt.Errorf("build request: %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := r.client.Check(cctx, req)
	if err != nil {
		return Decision{}, fmt.Errorf("%s: Check: %w", r.Name, err)
	}
	meta := resp.GetDynamicMetadata().GetFields()
	d := Decision{
		Agent: s.Agent, Via: string(s.Via), Replica: r.Name, Method: s.Method, Path: s.Path, Note: s.Note,
		Operation:  meta["operation"].GetStringValue(),
		Reason:     meta["reason"].GetStringValue(),
		AgentSeen:  meta["agent_id"].GetStringValue(),
		DecisionID: meta["decision_id"].GetStringValue(),
	}
	if ok := resp.GetOkResponse(); ok != nil && resp.GetStatus().GetCode() == 0 {
		d.Allowed, d.Status = true, 200
		for _, h := range ok.GetHeaders() {
			if strings.EqualFold(h.GetHeader().GetKey(), extauthz.HeaderReceipt) {
				d.Receipt = h.GetHeader().GetValue()
			}
		}
	} else {
		d.Status = int(resp.GetDeniedResponse().GetStatus().GetCode())
	}
	d.Want = wantText(s)
	d.Expected = d.Allowed == s.Allowed && slices.Contains(s.Reasons, reason.Code(d.Reason)) &&
		d.AgentSeen == s.Agent && d.DecisionID != "" && (!d.Allowed || d.Receipt != "")
	return d, nil
}

func wantText(s step) string {
	names := make([]string, len(s.Reasons))
	for i, r := range s.Reasons {
		names[i] = string(r)
	}
	verb := "deny"
	if s.Allowed {
		verb = "allow"
	}
	return verb + " " + strings.Join(names, " or ") + " for " + s.Agent
}

func scenarioSource(id string) string {
	for _, a := range scenarioAgents() {
		if a.ID == id {
			return a.Source
		}
	}
	return ""
}

// revoke revokes the rogue agent and measures, on every replica, the time
// from the committed revocation to the first request refused because of it.
// The probe is the rogue agent's own allowed request (GET /v1/payments), so
// the first denial is visible in the log.
func revoke(ctx context.Context, auth *ca.Authority, reps []*replica, agents map[string]AgentInfo) (*Revocation, error) {
	serials, err := auth.Revoke(TrustDomain, RogueAgent, ca.ReasonKeyCompromise, operator)
	committed := time.Now()
	if err != nil {
		return nil, fmt.Errorf("revoke %s: %w", RogueAgent, err)
	}
	rev := &Revocation{Agent: RogueAgent, Serials: serials, Replicas: make([]FirstDenyTime, len(reps))}
	ev, err := revokeEvent(auth)
	if err != nil {
		return nil, err
	}
	rev.RevokedAt = ev.At
	probe := step{Agent: RogueAgent, Via: checkreq.ViaPeer, Method: "GET", Path: "/v1/payments", Note: "probe", Reasons: revokedReasons()}
	errs := make([]error, len(reps))
	var wg sync.WaitGroup
	for i, r := range reps {
		wg.Go(func() {
			pctx, cancel := context.WithTimeout(ctx, revocationTimeout)
			defer cancel()
			tick := time.NewTicker(revocationProbe)
			defer tick.Stop()
			fd := FirstDenyTime{Replica: r.Name}
			for {
				d, err := send(pctx, r, agents, probe)
				if err != nil {
					errs[i] = err
					return
				}
				if d.Expected {
					fd.After, fd.DecisionID, fd.Reason = time.Since(committed), d.DecisionID, d.Reason
					rev.Replicas[i] = fd
					return
				}
				if !d.Allowed {
					errs[i] = fmt.Errorf("%s: revocation probe denied with %s, want %s", r.Name, d.Reason, d.Want)
					return
				}
				fd.AllowedBefore++
				select {
				case <-pctx.Done():
					errs[i] = fmt.Errorf("%s: revocation of %s not in effect after %s", r.Name, RogueAgent, revocationTimeout)
					return
				case <-tick.C:
				}
			}
		})
	}
	wg.Wait()
	return rev, errors.Join(errs...)
}

// revokeEvent is the rogue agent's revocation in the inventory's event log,
// which has it to the microsecond.
func revokeEvent(auth *ca.Authority) (ca.Event, error) {
	events, err := auth.Events(TrustDomain, RogueAgent)
	if err != nil {
		return ca.Event{}, fmt.Errorf("inventory events: %w", err)
	}
	for _, e := range slices.Backward(events) {
		if e.Event == "agent_revoke" {
			return e, nil
		}
	}
	return ca.Event{}, fmt.Errorf("inventory has no revocation event for %s", RogueAgent)
}

func rel(base, path string) string {
	if r, err := filepath.Rel(base, path); err == nil {
		return r
	}
	return path
}
