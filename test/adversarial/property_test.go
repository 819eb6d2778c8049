package adversarial

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/agentauthz/agentauthz/internal/checkreq"
	"github.com/agentauthz/agentauthz/internal/testca"
)

var (
	propN    = flag.Int("mutations", 600, "random requests in TestMutationsNeverEscalate")
	propSeed = flag.Uint64("mutation-seed", 0, "seed for TestMutationsNeverEscalate (0: time-based, logged)")
)

// policyData is the part of the shipped data.json the oracle needs.
type policyData struct {
	Agentauthz struct {
		Operations map[string]struct {
			MinTrust int    `json:"min_trust"`
			Scope    string `json:"scope"`
		} `json:"operations"`
		Routes []struct {
			Method, Path, Operation string
		} `json:"routes"`
	} `json:"agentauthz"`
}

func loadPolicyData(t testing.TB) policyData {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(shippedPolicies(), "data.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d policyData
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	return d
}

// ambiguousSegment matches a percent-decoded path segment that some upstream
// might read as something else than one opaque name: separators, escapes
// still present after one decoding, control characters.
var ambiguousSegment = regexp.MustCompile(`[/\\%#\x00-\x1f\x7f]`)

// unambiguous reports whether the decoded segment names one thing: not
// empty and not a dot segment, also once ";parameters" (which servlet
// containers strip) and trailing dots and spaces (which Windows file APIs
// strip) are removed, and not bytes a lax UTF-8 decoder or Unicode
// normalisation could read as dots (overlong "%C0%AE", fullwidth "．").
func unambiguous(seg string) bool {
	head, _, _ := strings.Cut(seg, ";")
	return utf8.ValidString(seg) && !ambiguousSegment.MatchString(seg) &&
		strings.TrimRight(head, ". \uff0e\u2024\u2025\u2026\ufe52") != ""
}

// oracleRoute is an independent, deliberately strict route matcher: it
// returns the operation only for canonical paths.
func (d policyData) oracleRoute(method, path string) string {
	// The segments are parsed_path's (opa-envoy-plugin): cut at the first
	// "?", leading slashes dropped.
	path, _, _ = strings.Cut(path, "?")
	if !strings.HasPrefix(path, "/") {
		return ""
	}
	segs := strings.Split(strings.TrimLeft(path, "/"), "/")
	for i, s := range segs {
		dec, err := url.PathUnescape(s)
		if err != nil || !unambiguous(dec) {
			return ""
		}
		segs[i] = dec
	}
	for _, r := range d.Agentauthz.Routes {
		if r.Method != method {
			continue
		}
		pat := strings.Split(r.Path[1:], "/")
		if len(pat) != len(segs) {
			continue
		}
		ok := true
		for i := range pat {
			if pat[i] != "*" && pat[i] != segs[i] {
				ok = false
				break
			}
		}
		if ok {
			return r.Operation
		}
	}
	return ""
}

func (d policyData) permits(a agentSpec, op string) bool {
	o, ok := d.Agentauthz.Operations[op]
	return ok && a.trust >= o.MinTrust && slices.Contains(a.scopes, o.Scope)
}

// mutant is one randomly mutated request and what the oracle knows about it.
type mutant struct {
	req    *authv3.CheckRequest
	agent  string // the agent whose certificate is authoritative, "" when none verifies
	method string
	path   string
	steps  []string
}

// TestMutationsNeverEscalate sends random mutations of valid requests
// (method, path, headers, identity placement, forged XFCC elements,
// corrupted or foreign certificates) and checks the property that matters:
// an allowed request is always decided as the agent whose verified
// certificate is authoritative, for an operation that agent's trust level
// and scopes permit, on a path that an independent strict matcher maps to
// that same operation.
func TestMutationsNeverEscalate(t *testing.T) {
	seed := *propSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (rerun with -mutation-seed=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))

	env := newCatalogueEnv(t)
	svc := startService(t, newConfig(t, env.trusted.WriteBundle(), nil))
	data := loadPolicyData(t)
	agents := catalogueAgents()
	foreign := issueSpec(env.other, agents["admin"])
	allowed := 0
	for i := 0; i < *propN; i++ {
		m := mutate(rng, env, foreign)
		var resp *authv3.CheckResponse
		var err error
		if i%8 == 0 {
			resp, err = svc.client.Check(context.Background(), m.req)
		} else {
			resp, err = svc.comps.Authorization.Check(context.Background(), m.req)
		}
		if err != nil {
			t.Fatalf("mutant %d %v: Check error %v", i, m.steps, err)
		}
		checkNoLeak(t, resp)
		v := reduce(resp)
		if !v.Allowed {
			continue
		}
		allowed++
		fail := func(format string, args ...any) {
			t.Errorf("mutant %d %v (%s %q as %q): %s", i, m.steps, m.method, m.path, m.agent, fmt.Sprintf(format, args...))
		}
		switch {
		case m.agent == "":
			fail("allowed without a valid authoritative certificate (agent %q)", v.AgentID)
		case v.AgentID != agents[m.agent].id || v.Upstream["x-agent-id"] != agents[m.agent].id:
			fail("decided as %q, upstream told %q", v.AgentID, v.Upstream["x-agent-id"])
		case !data.permits(agents[m.agent], v.Operation):
			fail("operation %q is beyond the agent's trust and scopes", v.Operation)
		case data.oracleRoute(m.method, m.path) != v.Operation:
			fail("operation %q, strict matcher says %q", v.Operation, data.oracleRoute(m.method, m.path))
		}
	}
	t.Logf("%d of %d mutants allowed", allowed, *propN)
	if allowed == 0 {
		t.Error("no mutant was allowed: the property was never exercised")
	}
}

func mutate(rng *rand.Rand, env *catalogueEnv, foreign *testca.Leaf) mutant {
	pick := func(xs ...string) string { return xs[rng.IntN(len(xs))] }
	names := []string{"reader", "payer", "noowner", "admin"}
	who := names[rng.IntN(len(names))]
	bases := [][2]string{
		{"GET", "/v1/payments"}, {"GET", "/v1/payments/p-" + fmt.Sprint(rng.IntN(100))}, {"POST", "/v1/payments"},
		{"POST", "/v1/merchants"}, {"POST", "/v1/loans/l-7/repayments"}, {"POST", "/v1/sanctions/screenings"},
	}
	b := bases[rng.IntN(len(bases))]
	m := mutant{agent: who, method: b[0], path: b[1]}
	hdr := map[string]string{}
	via := checkreq.ViaPeer
	if rng.IntN(2) == 0 {
		via = checkreq.ViaXFCC
	}
	certPEM := env.leaves[who].PEM()
	forgedXFCC := ""

	for n := 1 + rng.IntN(4); n > 0; n-- {
		switch rng.IntN(12) {
		case 0:
			m.method = pick("GET", "POST", "get", "post", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "Post")
			m.steps = append(m.steps, "method="+m.method)
		case 1, 2:
			segs := strings.Split(m.path[1:], "/")
			at := rng.IntN(len(segs) + 1)
			ins := pick("..", ".", "", "%2e%2e", "%2E.", "..;", ";", "...", "..%20", "%252e%252e", "..%2Fadmin", "%2F", "%5C", "admin", "%00", "p%0d%0a", "PAYMENTS", "payments.", "%70ayments", "x;y", "~", "%7e")
			segs = slices.Insert(segs, at, ins)
			m.path = "/" + strings.Join(segs, "/")
			m.steps = append(m.steps, "insert-seg="+ins)
		case 3:
			m.path = pick("/", "//", "/./", "/../")[0:] + strings.TrimPrefix(m.path, "/")
			m.steps = append(m.steps, "prefix")
		case 4:
			m.path += pick("/", ".", "?_method=POST", "#x", "?a=/../admin", "%20", ";jsessionid=1", "/..", "%2f")
			m.steps = append(m.steps, "suffix")
		case 5:
			i := rng.IntN(len(m.path))
			m.path = m.path[:i] + strings.ToUpper(m.path[i:i+1]) + m.path[i+1:]
			m.steps = append(m.steps, "upper")
		case 6:
			hdr[pick("x-http-method-override", "x-method-override", "x-http-method", "x-original-method")] = pick("POST", "GET", "DELETE")
			m.steps = append(m.steps, "override")
		case 7:
			hdr[pick("x-agent-id", "x-agent-trust-level", "x-agent-scopes", "x-agent-owner", "x-agent-spiffe-id", "x-decision-id", "x-agent-receipt")] =
				pick("admin", "L4", "payments:initiate loans:repay", "admin,root", "x\r\nx-agent-id: admin")
			m.steps = append(m.steps, "identity-header")
		case 8:
			a := env.leaves["admin"]
			forgedXFCC = checkreq.XFCCElement(a.Cert, a.PEM())
			if via == checkreq.ViaPeer {
				hdr["x-forwarded-client-cert"] = forgedXFCC // outranked by the peer certificate
			}
			m.steps = append(m.steps, "forged-xfcc")
		case 9:
			// Flip one base64 character in the middle of the body.
			body := string(certPEM)
			start := strings.Index(body, "\n") + 1
			i := start + 10 + rng.IntN(len(body)-start-80)
			c := body[i]
			if c == '\n' {
				i++
				c = body[i]
			}
			repl := byte('A')
			if c == 'A' {
				repl = 'B'
			}
			certPEM = []byte(body[:i] + string(repl) + body[i+1:])
			m.agent = ""
			m.steps = append(m.steps, "corrupt-cert")
		case 10:
			certPEM = foreign.PEM()
			m.agent = ""
			m.steps = append(m.steps, "foreign-ca")
		case 11:
			hdr["x-request-id"] = pick("r\r\n1", strings.Repeat("r", 5000), "\x00")
			m.steps = append(m.steps, "request-id")
		}
	}
	if !strings.HasPrefix(m.path, "/") {
		m.path = "/" + m.path
	}
	r := checkreq.Request{Method: m.method, Path: m.path, Headers: hdr, CertPEM: certPEM, Via: via, RequestID: "mut"}
	if via == checkreq.ViaXFCC && forgedXFCC != "" {
		r.ForgedXFCC = forgedXFCC
	}
	req, err := checkreq.Build(r)
	if err != nil {
		// A certificate corrupted so that it no longer decodes as PEM for
		// the builder: put it in place by hand.
		r.CertPEM = env.leaves[who].PEM()
		req, err = checkreq.Build(r)
		if err != nil {
			panic(err)
		}
		enc := url.QueryEscape(string(certPEM))
		if via == checkreq.ViaPeer {
			req.Attributes.Source.Certificate = enc
		} else {
			req.Attributes.Request.Http.Headers["x-forwarded-client-cert"] = element(enc, "")
		}
	}
	m.req = req
	return m
}
