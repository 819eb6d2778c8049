package extauthz

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/google/uuid"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/identity"
	"github.com/agentauthz/agentauthz/internal/reason"
)

type fakeIdent struct {
	agent *identity.Agent
	err   *identity.Error
	panic bool
}

func (f fakeIdent) Identify(*authv3.AttributeContext) (*identity.Agent, *identity.Error) {
	if f.panic {
		panic("boom")
	}
	return f.agent, f.err
}

// fakeRevocation answers from what it is asked, as the real checker does: a
// serial revoked by one tenant's CA, an agent id revoked in that tenant, or
// stale data for that tenant. A Check that passes another tenant, serial or
// agent id (or swaps them) is told "not revoked", and the test that expects
// a denial fails (#29.4).
type fakeRevocation struct {
	tenant, serial, agentID string
	stale                   bool
}

func (f fakeRevocation) Check(tenant string, chain []identity.ChainCert, agentID string) reason.Code {
	serial := ""
	if len(chain) > 0 {
		serial = chain[0].Serial
	}
	switch {
	case f.tenant == "" || tenant != f.tenant:
		return ""
	case f.serial != "" && serial == f.serial:
		return reason.CertificateRevoked
	case f.agentID != "" && agentID == f.agentID:
		return reason.AgentRevoked
	case f.stale:
		return reason.RevocationStatusUnknown
	}
	return ""
}

// revocationOf is a checker that answers code for the test agent.
func revocationOf(code reason.Code) fakeRevocation {
	switch code {
	case reason.CertificateRevoked:
		return fakeRevocation{tenant: agent.Tenant, serial: agent.Serial}
	case reason.AgentRevoked:
		return fakeRevocation{tenant: agent.Tenant, agentID: agent.ID}
	case reason.RevocationStatusUnknown:
		return fakeRevocation{tenant: agent.Tenant, stale: true}
	case "":
		return fakeRevocation{}
	}
	panic("revocationOf: " + code)
}

type fakePolicy struct {
	v   Verdict
	err error
}

func (f fakePolicy) Decide(context.Context, *authv3.CheckRequest, *identity.Agent) (Verdict, error) {
	return f.v, f.err
}

type fakeLog struct {
	recs   []*decisionlog.Record
	err    error
	ctxErr error
}

func (f *fakeLog) Append(ctx context.Context, r *decisionlog.Record) (decisionlog.Receipt, error) {
	f.ctxErr = ctx.Err()
	if f.err != nil {
		return decisionlog.Receipt{}, f.err
	}
	f.recs = append(f.recs, r)
	return decisionlog.Receipt{Index: uint64(len(f.recs) - 1), Header: "AgpyZWNlaXB0"}, nil
}

var agent = &identity.Agent{
	ID: "payments-agent", SPIFFEID: "spiffe://example.test/agent/payments-agent", Tenant: "example.test",
	TrustLevel: 3, Scopes: []string{"payments:initiate", "payments:read"}, Serial: "3e9", CertSHA256: "ab",
	Issuer: "CN=test CA", Profile: identity.ProfileNative, Source: identity.SourcePeerCertificate,
	Chain: []identity.ChainCert{{Serial: "3e9"}},
}

func request(headers map[string]string) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Method: "POST", Path: "/v1/payments?token=secret", Host: "api", Headers: headers},
	}}}
}

func newService(t *testing.T, id Identifier, rev RevocationChecker, pol Policy, log Recorder) (*Service, *Metrics) {
	t.Helper()
	m := NewMetrics(prometheus.NewRegistry())
	s, err := New(Options{Identifier: id, Revocation: rev, Policy: pol, Recorder: log, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	return s, m
}

func TestCheckTable(t *testing.T) {
	allow := fakePolicy{v: Verdict{Allowed: true, Operation: "payments:initiate", Revision: "r1"}}
	tests := []struct {
		name       string
		ident      fakeIdent
		rev        fakeRevocation
		pol        fakePolicy
		logErr     error
		wantReason reason.Code
		wantStatus int
	}{
		{"allowed", fakeIdent{agent: agent}, fakeRevocation{}, allow, nil, reason.Allowed, 200},
		{"identity failure", fakeIdent{err: &identity.Error{Reason: reason.UntrustedIssuer, CertSHA256: "cd"}}, fakeRevocation{}, allow, nil, reason.UntrustedIssuer, 401},
		{"revoked serial", fakeIdent{agent: agent}, revocationOf(reason.CertificateRevoked), allow, nil, reason.CertificateRevoked, 401},
		{"revoked agent id", fakeIdent{agent: agent}, revocationOf(reason.AgentRevoked), allow, nil, reason.AgentRevoked, 401},
		{"stale revocation data", fakeIdent{agent: agent}, revocationOf(reason.RevocationStatusUnknown), allow, nil, reason.RevocationStatusUnknown, 401},
		{"another serial revoked", fakeIdent{agent: agent}, fakeRevocation{tenant: agent.Tenant, serial: "3ea"}, allow, nil, reason.Allowed, 200},
		{"the same serial revoked in another tenant", fakeIdent{agent: agent}, fakeRevocation{tenant: "other.test", serial: agent.Serial, agentID: agent.ID, stale: true}, allow, nil, reason.Allowed, 200},
		{"policy error", fakeIdent{agent: agent}, fakeRevocation{}, fakePolicy{err: errors.New("undefined decision")}, nil, reason.PolicyError, 403},
		{"request that cannot be parsed", fakeIdent{agent: agent}, fakeRevocation{}, fakePolicy{err: fmt.Errorf("%w: query: bad escape", ErrRequestParse)}, nil, reason.RequestParseError, 400},
		{"policy deny with reason", fakeIdent{agent: agent}, fakeRevocation{}, fakePolicy{v: Verdict{Reason: "scope_missing"}}, nil, reason.ScopeMissing, 403},
		{"policy deny that claims reason allowed", fakeIdent{agent: agent}, fakeRevocation{}, fakePolicy{v: Verdict{Reason: "allowed"}}, nil, reason.PolicyDenied, 403},
		{"policy deny without reason", fakeIdent{agent: agent}, fakeRevocation{}, fakePolicy{v: Verdict{}}, nil, reason.PolicyDenied, 403},
		{"policy deny with status", fakeIdent{agent: agent}, fakeRevocation{}, fakePolicy{v: Verdict{HTTPStatus: 429}}, nil, reason.PolicyDenied, 429},
		{"policy deny with status 200 passes it through", fakeIdent{agent: agent}, fakeRevocation{}, fakePolicy{v: Verdict{HTTPStatus: 200}}, nil, reason.PolicyDenied, 200},
		{"policy deny with a redirect", fakeIdent{agent: agent}, fakeRevocation{}, fakePolicy{v: Verdict{HTTPStatus: 302}}, nil, reason.PolicyDenied, 302},
		{"policy deny with an out-of-range status", fakeIdent{agent: agent}, fakeRevocation{}, fakePolicy{v: Verdict{HTTPStatus: 999}}, nil, reason.PolicyDenied, 403},
		{"log unavailable turns allow into deny", fakeIdent{agent: agent}, fakeRevocation{}, allow, errors.New("disk full"), reason.DecisionLogUnavailable, 503},
		{"panic denies", fakeIdent{panic: true}, fakeRevocation{}, allow, nil, reason.InternalError, 503},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			log := &fakeLog{err: tt.logErr}
			s, m := newService(t, tt.ident, tt.rev, tt.pol, log)
			resp, err := s.Check(context.Background(), request(nil))
			if err != nil {
				t.Fatalf("Check returned error %v; decisions must never be gRPC errors", err)
			}
			meta := resp.GetDynamicMetadata().GetFields()
			if got := meta["reason"].GetStringValue(); got != string(tt.wantReason) {
				t.Errorf("reason = %q, want %q", got, tt.wantReason)
			}
			if tt.wantReason == reason.Allowed {
				if resp.GetOkResponse() == nil || resp.GetStatus().GetCode() != 0 {
					t.Fatalf("want OkResponse, got %v", resp)
				}
			} else {
				d := resp.GetDeniedResponse()
				if d == nil || resp.GetStatus().GetCode() == 0 {
					t.Fatalf("want DeniedResponse with non-OK status, got %v", resp)
				}
				if got := int(d.GetStatus().GetCode()); got != tt.wantStatus {
					t.Errorf("status = %d, want %d", got, tt.wantStatus)
				}
				var body map[string]string
				if err := json.Unmarshal([]byte(d.GetBody()), &body); err != nil {
					t.Fatalf("deny body %q is not JSON: %v", d.GetBody(), err)
				}
				if body["reason"] != string(tt.wantReason) || body["decision_id"] != meta["decision_id"].GetStringValue() || body["error"] == "" {
					t.Errorf("deny body = %v", body)
				}
				if strings.Contains(d.GetBody(), "boom") || strings.Contains(d.GetBody(), "undefined") {
					t.Errorf("deny body leaks internals: %s", d.GetBody())
				}
			}
			if tt.logErr == nil {
				if len(log.recs) != 1 {
					t.Fatalf("records = %d, want 1", len(log.recs))
				}
				r := log.recs[0]
				if r.Decision.Allowed != (tt.wantReason == reason.Allowed) || r.Decision.Reasons[0] != string(tt.wantReason) {
					t.Errorf("record decision = %+v", r.Decision)
				}
				if r.Request.Path != "/v1/payments" {
					t.Errorf("record path = %q: the query string must not be recorded", r.Request.Path)
				}
			}
			label := "false"
			if tt.wantReason == reason.Allowed {
				label = "true"
			}
			if got := testutil.ToFloat64(m.decisions.WithLabelValues(label, string(tt.wantReason))); got != 1 {
				t.Errorf("decisions metric = %v, want 1", got)
			}
		})
	}
}

func TestAllowOverwritesClientIdentityHeaders(t *testing.T) {
	pol := fakePolicy{v: Verdict{Allowed: true, RequestHeadersToRemove: []string{"X-Agent-Scopes", "x-debug"}, Headers: []*corev3.HeaderValueOption{
		{Header: &corev3.HeaderValue{Key: "X-Agent-Id", Value: "policy-cannot-set-this"}},
		{Header: &corev3.HeaderValue{Key: "x-operation", Value: "payments:initiate"}},
	}}}
	s, _ := newService(t, fakeIdent{agent: agent}, fakeRevocation{}, pol, &fakeLog{})
	resp, _ := s.Check(context.Background(), request(map[string]string{"x-agent-id": "admin", "x-agent-owner": "root"}))
	ok := resp.GetOkResponse()
	got := map[string]*corev3.HeaderValueOption{}
	for _, h := range ok.GetHeaders() {
		if _, dup := got[strings.ToLower(h.GetHeader().GetKey())]; dup {
			t.Errorf("header %s set twice", h.GetHeader().GetKey())
		}
		got[strings.ToLower(h.GetHeader().GetKey())] = h
	}
	for k, want := range map[string]string{
		HeaderAgentID: "payments-agent", HeaderTrustLevel: "L3", HeaderScopes: "payments:initiate payments:read",
		HeaderSPIFFEID: agent.SPIFFEID, "x-operation": "payments:initiate",
	} {
		h := got[k]
		if h.GetHeader().GetValue() != want {
			t.Errorf("%s = %q, want %q", k, h.GetHeader().GetValue(), want)
		}
		if strings.HasPrefix(k, "x-agent-") && h.GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
			t.Errorf("%s append action = %v, want OVERWRITE_IF_EXISTS_OR_ADD", k, h.GetAppendAction())
		}
	}
	// The agent has no owner: a client-sent x-agent-owner must be removed.
	if !contains(ok.GetHeadersToRemove(), HeaderOwner) {
		t.Errorf("headers_to_remove = %v, want %s", ok.GetHeadersToRemove(), HeaderOwner)
	}
	if contains(ok.GetHeadersToRemove(), "X-Agent-Scopes") || !contains(ok.GetHeadersToRemove(), "x-debug") {
		t.Errorf("headers_to_remove = %v: the policy may remove its own headers, never identity headers", ok.GetHeadersToRemove())
	}
	if got[HeaderReceipt].GetHeader().GetValue() == "" || got[HeaderDecisionID].GetHeader().GetValue() == "" {
		t.Error("receipt and decision id must reach the upstream")
	}
	var downstream bool
	for _, h := range ok.GetResponseHeadersToAdd() {
		downstream = downstream || h.GetHeader().GetKey() == HeaderDecisionID
	}
	if !downstream {
		t.Error("x-decision-id must reach the client too")
	}
}

func TestCancelledRequestStillRecorded(t *testing.T) {
	log := &fakeLog{}
	s, _ := newService(t, fakeIdent{agent: agent}, fakeRevocation{}, fakePolicy{v: Verdict{Allowed: true}}, log)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Check(ctx, request(nil)); err != nil {
		t.Fatal(err)
	}
	if len(log.recs) != 1 || log.ctxErr != nil {
		t.Fatalf("records = %d, append ctx err = %v: a cancelled request must still be recorded", len(log.recs), log.ctxErr)
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// TestDebugLogNamesIdentityError: the identity failure's detail reaches the
// operator's debug log, bounded, and never the answer.
func TestDebugLogNamesIdentityError(t *testing.T) {
	detail := "bundle CA CN=Acme Agents CA expired at 2026-01-01T00:00:00Z"
	long := strings.Repeat("x", 5000)
	for _, tc := range []struct {
		name, err, want string
	}{
		{"detail", detail, detail},
		{"bounded", long, strings.Repeat("x", maxLoggedDetail-len(reason.CertificateExpired)-2) + "…"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf strings.Builder
			logger := hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Debug, JSONFormat: true})
			ident := fakeIdent{err: &identity.Error{Reason: reason.CertificateExpired, Err: errors.New(tc.err)}}
			s, err := New(Options{Identifier: ident, Revocation: fakeRevocation{}, Policy: fakePolicy{},
				Recorder: &fakeLog{}, Metrics: NewMetrics(prometheus.NewRegistry()), Logger: logger})
			if err != nil {
				t.Fatal(err)
			}
			resp, err := s.Check(context.Background(), request(nil))
			if err != nil {
				t.Fatal(err)
			}
			if body := resp.GetDeniedResponse().GetBody(); strings.Contains(body, tc.err[:20]) {
				t.Fatalf("the answer carries the detail: %s", body)
			}
			var line struct {
				Reason        string `json:"reason"`
				IdentityError string `json:"identity_error"`
			}
			if err := json.Unmarshal([]byte(strings.TrimSpace(buf.String())), &line); err != nil {
				t.Fatalf("log line %q: %v", buf.String(), err)
			}
			if want := string(reason.CertificateExpired) + ": " + tc.want; line.IdentityError != want {
				t.Fatalf("identity_error = %q, want %q", line.IdentityError, want)
			}
		})
	}
}

// TestDebugLogCarriesReasonCode: the debug decision line names the reason
// code itself. reason.Code has an Error method, which hclog prefers to the
// value, so a bare code logged "forbidden" or "unauthenticated" (#28.6).
func TestDebugLogCarriesReasonCode(t *testing.T) {
	for _, tc := range []struct {
		code  reason.Code
		ident Identifier
		rev   reason.Code
	}{
		{reason.CertificateRevoked, fakeIdent{agent: agent}, reason.CertificateRevoked},
		{reason.RevocationStatusUnknown, fakeIdent{agent: agent}, reason.RevocationStatusUnknown},
		{reason.UntrustedIssuer, fakeIdent{err: &identity.Error{Reason: reason.UntrustedIssuer, Err: errors.New("x")}}, ""},
		{reason.PolicyDenied, fakeIdent{agent: agent}, ""},
	} {
		t.Run(string(tc.code), func(t *testing.T) {
			var buf strings.Builder
			logger := hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Debug, JSONFormat: true})
			s, err := New(Options{Identifier: tc.ident, Revocation: revocationOf(tc.rev), Policy: fakePolicy{},
				Recorder: &fakeLog{}, Metrics: NewMetrics(prometheus.NewRegistry()), Logger: logger})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Check(context.Background(), request(nil)); err != nil {
				t.Fatal(err)
			}
			var line struct {
				Reason string `json:"reason"`
			}
			if err := json.Unmarshal([]byte(strings.TrimSpace(buf.String())), &line); err != nil {
				t.Fatalf("log line %q: %v", buf.String(), err)
			}
			if line.Reason != string(tc.code) {
				t.Fatalf("reason = %q, want %q (line %s)", line.Reason, string(tc.code), buf.String())
			}
		})
	}
}

// TestPolicyCannotOverwriteServiceMetadata (#29.3): the dynamic metadata
// Envoy logs and passes on names the decision as the service made it. A
// policy's own dynamic_metadata is merged in, but decision_id, reason,
// agent_id, trust_level and operation are the service's: a policy that sets
// them (to hide a denial, or blame another agent) does not change them.
func TestPolicyCannotOverwriteServiceMetadata(t *testing.T) {
	forged, err := structpb.NewStruct(map[string]any{
		"decision_id": "forged-decision", "reason": "allowed", "agent_id": "admin-agent",
		"trust_level": "L4", "operation": "admin:everything", "team": "payments",
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []Verdict{
		{Allowed: true, Operation: "payments:initiate", DynamicMetadata: forged},
		{Reason: "scope_missing", Operation: "payments:initiate", DynamicMetadata: forged},
	} {
		log := &fakeLog{}
		s, _ := newService(t, fakeIdent{agent: agent}, fakeRevocation{}, fakePolicy{v: v}, log)
		resp, err := s.Check(context.Background(), request(nil))
		if err != nil || len(log.recs) != 1 {
			t.Fatalf("Check = %v, %d records", err, len(log.recs))
		}
		rec := log.recs[0]
		want := map[string]string{
			"decision_id": rec.DecisionID, "reason": rec.Decision.Reasons[0], "agent_id": agent.ID,
			"trust_level": "L3", "operation": "payments:initiate", "team": "payments",
		}
		meta := resp.GetDynamicMetadata().GetFields()
		for k, w := range want {
			if got := meta[k].GetStringValue(); got != w {
				t.Errorf("allowed=%v: dynamic_metadata %s = %q, want %q", v.Allowed, k, got, w)
			}
		}
		if rec.DecisionID == "forged-decision" || (!v.Allowed && rec.Decision.Reasons[0] != "scope_missing") {
			t.Errorf("record took the policy's metadata: %+v", rec)
		}
	}
}

// TestRecordNamesSourceAddress: the record carries the source Envoy
// reported as address:port (make mutate found sourceAddr untested).
func TestRecordNamesSourceAddress(t *testing.T) {
	log := &fakeLog{}
	s, _ := newService(t, fakeIdent{agent: agent}, fakeRevocation{}, fakePolicy{v: Verdict{Allowed: true}}, log)
	req := request(nil)
	req.Attributes.Source = &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
		SocketAddress: &corev3.SocketAddress{Address: "10.1.2.3", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 40123}},
	}}}
	if _, err := s.Check(context.Background(), req); err != nil || len(log.recs) != 1 {
		t.Fatalf("Check = %v, %d records", err, len(log.recs))
	}
	if got := log.recs[0].Request.Source; got != "10.1.2.3:40123" {
		t.Fatalf("record source = %q, want 10.1.2.3:40123", got)
	}
}

// TestDecisionIDsAreOrderedUUIDv7: decision ids are RFC 9562 version 7
// UUIDs carrying the decision time, unique and increasing within the
// process even when many share a millisecond or the clock steps back.
func TestDecisionIDsAreOrderedUUIDv7(t *testing.T) {
	s, _ := newService(t, fakeIdent{agent: agent}, fakeRevocation{}, fakePolicy{}, &fakeLog{})
	at := time.Date(2026, 12, 7, 21, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return at }
	prev := ""
	for i := range 5000 {
		if i == 2500 {
			at = at.Add(-time.Second) // the clock stepped back
		}
		id := s.newDecisionID()
		u, err := uuid.Parse(id)
		if err != nil || u.Version() != 7 || u.Variant() != uuid.RFC4122 || u.String() != id {
			t.Fatalf("%q: %v version %d variant %v", id, err, u.Version(), u.Variant())
		}
		if sec, _ := u.Time().UnixTime(); i < 2500 && sec != at.Unix() {
			t.Fatalf("%s carries %d, want %d", id, sec, at.Unix())
		}
		if id <= prev {
			t.Fatalf("%s after %s", id, prev)
		}
		prev = id
	}
}
