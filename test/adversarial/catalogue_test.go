package adversarial

import (
	"context"
	"encoding/json"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/agentauthz/agentauthz/internal/checkreq"
	"github.com/agentauthz/agentauthz/internal/config"
	"github.com/agentauthz/agentauthz/internal/identity"
	"github.com/agentauthz/agentauthz/internal/testca"
)

// catalogueCase is one hostile request and the decision it must get. The
// request is described declaratively (agent, how its certificate arrives,
// method, path, headers); inputs that cannot be written as JSON (a 64 KiB
// header, a certificate with a 21-byte serial, a cross-signed loop) are made
// by the named generator, which edits the built request.
type catalogueCase struct {
	Name     string            `json:"name"`
	Category string            `json:"category"`
	Why      string            `json:"why"`
	Agent    string            `json:"agent"` // key of catalogueAgents; "" with via none
	Via      string            `json:"via"`   // peer, xfcc, none
	Method   string            `json:"method"`
	Path     string            `json:"path"`
	Headers  map[string]string `json:"headers"` // {{XFCC}} and {{FORGED_XFCC}} are replaced
	Gen      string            `json:"gen"`
	// Config is "" (native tenant example.test, sources peer_certificate
	// and xfcc) or "spiffe" (also SPIFFE-only identities for the trust
	// domain dev.agentauthz.local, attributes from the shipped registry).
	Config string `json:"config"`
	// Principal, when set, replaces attributes.source.principal.
	Principal *string `json:"principal"`
	Expect    struct {
		Allowed   bool              `json:"allowed"`
		Status    int               `json:"status"`
		Reason    string            `json:"reason"`
		Operation *string           `json:"operation"` // nil: not asserted
		AgentID   string            `json:"agent_id"`  // metadata agent_id, when set
		Upstream  map[string]string `json:"upstream"`  // headers the upstream must receive
		Removed   []string          `json:"removed"`   // headers that must be removed upstream
	} `json:"expect"`
}

// catalogueEnv is the trusted CA, an untrusted one, and the issued agents.
type catalogueEnv struct {
	t       *testing.T
	trusted *testca.CA
	other   *testca.CA
	leaves  map[string]*testca.Leaf
}

func newCatalogueEnv(t *testing.T) *catalogueEnv {
	e := &catalogueEnv{t: t, trusted: testca.New(t), other: testca.New(t), leaves: map[string]*testca.Leaf{}}
	for k, a := range catalogueAgents() {
		e.leaves[k] = issueSpec(e.trusted, a)
	}
	return e
}

func loadCatalogue(t *testing.T) []*catalogueCase {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "catalogue.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cases []*catalogueCase
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cases); err != nil {
		t.Fatalf("catalogue.json: %v", err)
	}
	seen := map[string]bool{}
	for _, c := range cases {
		if c.Name == "" || seen[c.Name] || c.Category == "" || c.Why == "" || c.Expect.Reason == "" {
			t.Fatalf("catalogue case %q: needs a unique name, a category, a why and an expected reason", c.Name)
		}
		seen[c.Name] = true
	}
	return cases
}

// build makes the CheckRequest of c.
func (e *catalogueEnv) build(c *catalogueCase) *authv3.CheckRequest {
	t := e.t
	r := checkreq.Request{Method: c.Method, Path: c.Path, RequestID: "adv-" + c.Name, Headers: map[string]string{}}
	if r.Path == "" {
		r.Path = "/"
	}
	var leaf *testca.Leaf
	switch c.Via {
	case "none":
		r.Via = checkreq.ViaNone
	case "peer", "xfcc":
		leaf = e.leaves[c.Agent]
		if leaf == nil {
			t.Fatalf("%s: unknown agent %q", c.Name, c.Agent)
		}
		r.CertPEM = leaf.PEM()
		r.Via = checkreq.Via(c.Via)
	default:
		t.Fatalf("%s: via %q", c.Name, c.Via)
	}
	admin := e.leaves["admin"]
	repl := strings.NewReplacer("{{FORGED_XFCC}}", checkreq.XFCCElement(admin.Cert, admin.PEM()))
	if leaf != nil {
		repl = strings.NewReplacer(
			"{{FORGED_XFCC}}", checkreq.XFCCElement(admin.Cert, admin.PEM()),
			"{{XFCC}}", checkreq.XFCCElement(leaf.Cert, leaf.PEM()))
	}
	for k, v := range c.Headers {
		r.Headers[k] = repl.Replace(v)
	}
	req, err := checkreq.Build(r)
	if err != nil {
		t.Fatalf("%s: %v", c.Name, err)
	}
	if c.Principal != nil {
		req.Attributes.Source.Principal = *c.Principal
	}
	if c.Gen != "" {
		gen := generators()[c.Gen]
		if gen == nil {
			t.Fatalf("%s: unknown generator %q", c.Name, c.Gen)
		}
		gen(e, req, leaf)
	}
	return req
}

// generator edits a built request into a hostile one.
type generator func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf)

func headers(req *authv3.CheckRequest) map[string]string {
	return req.GetAttributes().GetRequest().GetHttp().GetHeaders()
}

func setXFCC(req *authv3.CheckRequest, v string) { headers(req)["x-forwarded-client-cert"] = v }

// element is an XFCC element for an arbitrary Cert= value.
func element(certValue string, extra string) string {
	return `By=spiffe://example.internal/ns/edge/sa/envoy;Cert="` + certValue + `"` + extra
}

func setPeer(req *authv3.CheckRequest, pemData []byte) {
	req.Attributes.Source.Certificate = url.QueryEscape(string(pemData))
}

func generators() map[string]generator {
	forged := func(e *catalogueEnv) string {
		a := e.leaves["admin"]
		return checkreq.XFCCElement(a.Cert, a.PEM())
	}
	real := func(leaf *testca.Leaf) string { return checkreq.XFCCElement(leaf.Cert, leaf.PEM()) }
	// padTo returns a forged element whose By= pads the whole header
	// (padding + "," + rightmost) to exactly n bytes.
	padTo := func(rightmost string, n int) string {
		head := "By=spiffe://attacker.example/"
		pad := n - len(head) - 1 - len(rightmost)
		return head + strings.Repeat("a", pad) + "," + rightmost
	}
	issueWith := func(e *catalogueEnv, opts ...testca.Option) *testca.Leaf {
		return issueSpec(e.trusted, catalogueAgents()["reader"], opts...)
	}
	return map[string]generator{
		"xfcc_100_elements": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			// Short forged elements, so that the size limit is not what trips.
			els := slices.Repeat([]string{"By=spiffe://attacker.example/x;URI=spiffe://example.test/agent/admin"}, 99)
			setXFCC(req, strings.Join(append(els, real(leaf)), ","))
		},
		"xfcc_32_elements": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			els := slices.Repeat([]string{"By=spiffe://attacker.example/x;URI=spiffe://example.test/agent/admin"}, identity.MaxXFCCElements-1)
			setXFCC(req, strings.Join(append(els, real(leaf)), ","))
		},
		"xfcc_64k_exact": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			setXFCC(req, padTo(real(leaf), identity.MaxXFCCBytes))
		},
		"xfcc_over_64k": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			setXFCC(req, padTo(real(leaf), identity.MaxXFCCBytes+1))
		},
		"xfcc_bad_url_encoding": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			setXFCC(req, element("%ZZ"+url.QueryEscape(string(leaf.PEM())), ""))
		},
		"xfcc_truncated_url_encoding": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			enc := url.QueryEscape(string(leaf.PEM()))
			setXFCC(req, element(enc[:strings.LastIndexByte(enc, '%')+2], ""))
		},
		"xfcc_two_certs_admin_first": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			setXFCC(req, element(url.QueryEscape(string(e.leaves["admin"].PEM())+string(leaf.PEM())), ""))
		},
		"xfcc_two_certs_agent_first": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			setXFCC(req, element(url.QueryEscape(string(leaf.PEM())+string(e.leaves["admin"].PEM())), ""))
		},
		"peer_two_certs_agent_first": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			setPeer(req, append(leaf.PEM(), e.leaves["admin"].PEM()...))
		},
		"xfcc_uri_claims_admin": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			setXFCC(req, element(url.QueryEscape(string(leaf.PEM())), ";URI=spiffe://example.test/agent/admin"))
		},
		"xfcc_hash_of_admin": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			a := forged(e)
			hash := a[strings.Index(a, "Hash=")+5 : strings.Index(a, ";Cert=")]
			setXFCC(req, "Hash="+hash+";"+element(url.QueryEscape(string(leaf.PEM())), ""))
		},
		"xfcc_unknown_key": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			setXFCC(req, real(leaf)+";Admin=true")
		},
		"xfcc_crlf_in_subject": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			setXFCC(req, element(url.QueryEscape(string(leaf.PEM())), ";Subject=\"CN=reader\r\nx-agent-id: admin\""))
		},
		"xfcc_crlf_between_elements": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			setXFCC(req, forged(e)+"\r\n,"+real(leaf))
		},
		"xfcc_crlf_forged_after_real": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			// A proxy that splices a client-sent header after its own.
			setXFCC(req, real(leaf)+",\r\n"+forged(e))
		},
		"xfcc_header_map_duplicates": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			h := req.Attributes.Request.Http
			delete(h.Headers, "x-forwarded-client-cert")
			h.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
				{Key: "x-forwarded-client-cert", RawValue: []byte(forged(e))},
				{Key: "X-Forwarded-Client-Cert", RawValue: []byte(real(leaf))},
			}}
		},
		"xfcc_unterminated_quote": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			setXFCC(req, `By=spiffe://x/y;Cert="`+url.QueryEscape(string(leaf.PEM())))
		},
		"xfcc_uri_only_admin": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			setXFCC(req, "By=spiffe://example.internal/ns/edge/sa/envoy;URI=spiffe://example.test/agent/admin")
		},
		"chain_loop_untrusted": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			b, c := testca.New(e.t), testca.New(e.t)
			bc, cb := crossSign(e.t, b, c), crossSign(e.t, c, b)
			l := issueSpec(b, catalogueAgents()["admin"])
			chain := append(append(l.PEM(), pemOf(bc.Raw)...), pemOf(cb.Raw)...)
			setXFCC(req, element(url.QueryEscape(string(l.PEM())), `;Chain="`+url.QueryEscape(string(chain))+`"`))
		},
		"chain_loop_beside_trusted_leaf": func(e *catalogueEnv, req *authv3.CheckRequest, _ *testca.Leaf) {
			// A fresh leaf, so that the chain is what this case exercises
			// even if a cache keyed on the leaf alone came back.
			leaf := issueWith(e)
			b, c := testca.New(e.t), testca.New(e.t)
			chain := append(append(leaf.PEM(), pemOf(crossSign(e.t, b, c).Raw)...), pemOf(crossSign(e.t, c, b).Raw)...)
			setXFCC(req, element(url.QueryEscape(string(leaf.PEM())), `;Chain="`+url.QueryEscape(string(chain))+`"`))
		},
		"chain_trusted_root_cross_signed_by_attacker": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			// The attacker's CA cross-signs the trusted root and vice versa
			// is impossible (no trusted key); the attacker's leaf presents
			// the trusted root re-issued by the attacker as its chain.
			att := testca.New(e.t)
			l := issueSpec(att, catalogueAgents()["admin"])
			chain := append(l.PEM(), pemOf(crossSign(e.t, e.trusted, att).Raw)...)
			setXFCC(req, element(url.QueryEscape(string(l.PEM())), `;Chain="`+url.QueryEscape(string(chain))+`"`))
		},
		"chain_too_long": func(e *catalogueEnv, req *authv3.CheckRequest, _ *testca.Leaf) {
			leaf := issueWith(e) // fresh: see chain_loop_beside_trusted_leaf
			chain := slices.Repeat(e.trusted.PEM(), identity.MaxChainCerts+1)
			setXFCC(req, element(url.QueryEscape(string(leaf.PEM())), `;Chain="`+url.QueryEscape(string(chain))+`"`))
		},
		"scopes_10000": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			setPeer(req, issueWith(e, testca.Scopes(manyScopes(10000)...)).PEM())
		},
		"scopes_over_limit": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			setPeer(req, issueWith(e, testca.Scopes(manyScopes(identity.MaxScopes)...)).PEM())
		},
		"serial_21_bytes": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			setPeer(req, pemOf(withSerial(e.t, e.trusted, leaf.Cert, append([]byte{0x01}, make([]byte, 20)...))))
		},
		"serial_20_bytes": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			s := new(big.Int).Lsh(big.NewInt(1), 158) // 20 octets, high bit clear
			setPeer(req, pemOf(withSerial(e.t, e.trusted, leaf.Cert, s.Bytes())))
		},
		"serial_negative": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			setPeer(req, pemOf(withSerial(e.t, e.trusted, leaf.Cert, []byte{0xff, 0x01})))
		},
		"serial_1000_bytes": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			setPeer(req, pemOf(withSerial(e.t, e.trusted, leaf.Cert, append([]byte{0x7f}, make([]byte, 999)...))))
		},
		"cn_homoglyph": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			setPeer(req, issueWith(e, testca.CN("r\u0435ader")).PEM()) // Cyrillic ie
		},
		"cn_nul": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			setPeer(req, issueWith(e, testca.CN("reader\x00admin")).PEM())
		},
		"cn_crlf": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			setPeer(req, issueWith(e, testca.CN("reader\r\nx-agent-id: admin")).PEM())
		},
		"owner_crlf": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			setPeer(req, issueWith(e, testca.Owner("team\r\nx-agent-id: admin")).PEM())
		},
		"scope_unicode": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			setPeer(req, issueWith(e, testca.Scopes("p\u0430yments:initiate")).PEM())
		},
		"other_ca_admin": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			setPeer(req, issueSpec(e.other, catalogueAgents()["admin"]).PEM())
		},
		"path_overlong": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			p := "/v1/payments/" + strings.Repeat("a", 5000)
			req.Attributes.Request.Http.Path = p
			headers(req)[":path"] = p
		},
		"path_absolute_uri": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			p := "https://api.example.internal/v1/payments"
			req.Attributes.Request.Http.Path = p
			headers(req)[":path"] = p
		},
		"identity_header_map_duplicates": func(e *catalogueEnv, req *authv3.CheckRequest, leaf *testca.Leaf) {
			h := req.Attributes.Request.Http
			h.HeaderMap = &corev3.HeaderMap{}
			for k, v := range h.Headers {
				h.HeaderMap.Headers = append(h.HeaderMap.Headers, &corev3.HeaderValue{Key: k, RawValue: []byte(v)})
			}
			h.HeaderMap.Headers = append(h.HeaderMap.Headers,
				&corev3.HeaderValue{Key: "x-agent-id", RawValue: []byte("admin")},
				&corev3.HeaderValue{Key: "x-agent-id", RawValue: []byte("root")},
				&corev3.HeaderValue{Key: "x-agent-trust-level", RawValue: []byte("L4")})
			h.Headers = nil
		},
	}
}

// TestCatalogue runs every catalogue case against the assembled service,
// calling Check directly and over gRPC. Each must give the expected
// decision, and no answer may leak internals. Afterwards every decision is
// in the log, which verifies.
func TestCatalogue(t *testing.T) {
	e := newCatalogueEnv(t)
	bundle := e.trusted.WriteBundle()
	services := map[string]*service{
		"": startService(t, newConfig(t, bundle, nil)),
		"spiffe": startService(t, newConfig(t, bundle, func(c *config.Config) {
			c.Identity.Sources = []string{"peer_certificate", "xfcc", "spiffe_id"}
			c.TrustBundles = append(c.TrustBundles, config.TrustBundle{TrustDomain: "dev.agentauthz.local", Profile: "spiffe", Revocation: config.Revocation{Disabled: true}})
		})),
	}
	cases := loadCatalogue(t)
	ids := map[string]map[string]string{}
	for _, c := range cases {
		svc := services[c.Config]
		if svc == nil {
			t.Fatalf("%s: unknown config %q", c.Name, c.Config)
		}
		if ids[c.Config] == nil {
			ids[c.Config] = map[string]string{}
		}
		for _, via := range []string{"direct", "grpc"} {
			t.Run(c.Category+"/"+c.Name+"/"+via, func(t *testing.T) {
				e.t = t
				req := e.build(c)
				var resp *authv3.CheckResponse
				var err error
				if via == "direct" {
					resp, err = svc.comps.Authorization.Check(context.Background(), req)
				} else {
					resp, err = svc.client.Check(context.Background(), req)
				}
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				checkNoLeak(t, resp)
				v := reduce(resp)
				ids[c.Config][v.DecisionID] = c.Name
				assertExpect(t, c, v)
			})
		}
	}
	e.t = t
	for cfg, svc := range services {
		logged := svc.verifyLog(t)
		for id, name := range ids[cfg] {
			rec := logged[id]
			if rec == nil {
				t.Errorf("%s: decision %s is not in the log", name, id)
				continue
			}
			if strings.ContainsAny(rec.Request.Path+rec.Request.ID+rec.Agent.ID, "\r\n") && !json.Valid(mustJSON(t, rec)) {
				t.Errorf("%s: record with control characters does not encode", name)
			}
		}
		if len(logged) != len(ids[cfg]) {
			t.Errorf("config %q: %d records for %d decisions", cfg, len(logged), len(ids[cfg]))
		}
	}
}

func mustJSON(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func assertExpect(t *testing.T, c *catalogueCase, v verdict) {
	t.Helper()
	x := c.Expect
	if v.Allowed != x.Allowed || v.Reason != x.Reason {
		t.Fatalf("%s\n got allowed=%v reason=%s status=%d, want allowed=%v reason=%s", c.Why, v.Allowed, v.Reason, v.Status, x.Allowed, x.Reason)
	}
	if x.Status != 0 && v.Status != x.Status {
		t.Errorf("status %d, want %d", v.Status, x.Status)
	}
	if x.Operation != nil && v.Operation != *x.Operation {
		t.Errorf("operation %q, want %q", v.Operation, *x.Operation)
	}
	if x.AgentID != "" && v.AgentID != x.AgentID {
		t.Errorf("agent %q, want %q", v.AgentID, x.AgentID)
	}
	for k, want := range x.Upstream {
		if got := v.Upstream[k]; got != want {
			t.Errorf("upstream header %s = %q, want %q", k, got, want)
		}
	}
	for _, k := range x.Removed {
		if !slices.Contains(v.Removed, k) {
			t.Errorf("header %s not removed upstream (removed: %v)", k, v.Removed)
		}
	}
	if v.Allowed {
		// A client can never choose the identity headers the upstream sees.
		if v.Upstream["x-agent-id"] != v.AgentID || v.Upstream["x-decision-id"] != v.DecisionID {
			t.Errorf("identity headers %v do not match the decision (%s, %s)", v.Upstream, v.AgentID, v.DecisionID)
		}
	}
}

// TestCatalogueCoversTheBrief keeps the catalogue honest: every category
// of issue 8 has cases.
func TestCatalogueCoversTheBrief(t *testing.T) {
	n := map[string]int{}
	for _, c := range loadCatalogue(t) {
		n[c.Category]++
	}
	for _, cat := range []string{"xfcc", "certificate", "path", "method_override", "crlf", "duplicate_identity", "spiffe_only"} {
		if n[cat] == 0 {
			t.Errorf("no %s cases", cat)
		}
	}
	t.Log(fmt.Sprint(n))
}
