package demo

import (
	"github.com/agentauthz/agentauthz/internal/checkreq"
	"github.com/agentauthz/agentauthz/internal/reason"
)

// The seed scenario: one organisation, its CA, and its agents.
const (
	TrustDomain = "acme.example"
	Org         = "Acme Payments"
	apiHost     = "api.acme.example"
	operator    = "agentauthz-demo"

	// RogueAgent is the agent the demo revokes.
	RogueAgent = "rogue-agent"
	// PaymentsAgent initiates the payment the auditor asks about.
	PaymentsAgent = "payments-agent"
)

// agentSpec is one agent of the scenario.
type agentSpec struct {
	ID     string
	Role   string
	Trust  int
	Scopes []string
	Owner  string
	Source string // the agent's address as Envoy sees it
}

func scenarioAgents() []agentSpec {
	return []agentSpec{
		{ID: "sanctions-screener", Role: "screens parties against sanctions lists", Trust: 1, Scopes: []string{"sanctions:screen"}, Owner: "compliance-team", Source: "10.20.1.11:41001"},
		{ID: PaymentsAgent, Role: "initiates and reads payments", Trust: 3, Scopes: []string{"payments:initiate", "payments:read"}, Owner: "payments-team", Source: "10.20.1.12:41002"},
		{ID: "merchant-onboarder", Role: "onboards merchants", Trust: 2, Scopes: []string{"merchants:onboard"}, Owner: "merchant-ops", Source: "10.20.1.13:41003"},
		{ID: "loan-servicer", Role: "records loan repayments", Trust: 3, Scopes: []string{"loans:repay"}, Owner: "lending-team", Source: "10.20.1.14:41004"},
		{ID: RogueAgent, Role: "reads payments; compromised, reaches further", Trust: 2, Scopes: []string{"payments:read"}, Owner: "finance-ops", Source: "10.20.9.66:50666"},
	}
}

// step is one request of the scenario and the decision it must get.
type step struct {
	Agent  string
	Via    checkreq.Via
	Method string
	Path   string
	// ForgeAs, with ViaXFCC, puts a forged XFCC element for this agent on
	// the left of the real one, as a client trying to impersonate it would.
	ForgeAs string
	Note    string
	Allowed bool
	// Reasons lists the acceptable reasons; the first is the expected one.
	Reasons []reason.Code
}

func allow(agent string, via checkreq.Via, method, path, note string) step {
	return step{Agent: agent, Via: via, Method: method, Path: path, Note: note, Allowed: true, Reasons: []reason.Code{reason.Allowed}}
}

func deny(agent string, via checkreq.Via, method, path, note string, why ...reason.Code) step {
	return step{Agent: agent, Via: via, Method: method, Path: path, Note: note, Reasons: why}
}

// paymentStep is the index in scenarioSteps of the payment the auditor asks
// about.
const paymentStep = 2

// scenarioSteps are the agents doing their jobs and stepping outside them,
// by peer certificate and by XFCC.
func scenarioSteps() []step {
	peer, xfcc := checkreq.ViaPeer, checkreq.ViaXFCC
	forged := deny(RogueAgent, xfcc, "POST", "/v1/payments", "forged XFCC element for payments-agent on the left", reason.InsufficientTrustLevel)
	forged.ForgeAs = PaymentsAgent
	return []step{
		allow("sanctions-screener", peer, "POST", "/v1/sanctions/screenings", "its job"),
		deny("sanctions-screener", xfcc, "POST", "/v1/payments", "L1 tries to pay", reason.InsufficientTrustLevel),
		allow(PaymentsAgent, peer, "POST", "/v1/payments", "its job: the payment the auditor asks about"),
		allow(PaymentsAgent, xfcc, "GET", "/v1/payments/pay_7Hq2", "its job"),
		allow("merchant-onboarder", xfcc, "POST", "/v1/merchants", "its job"),
		deny("merchant-onboarder", peer, "POST", "/v1/payments", "L2, no payments scope", reason.InsufficientTrustLevel),
		allow("loan-servicer", peer, "POST", "/v1/loans/ln_4821/repayments", "its job"),
		deny("loan-servicer", xfcc, "POST", "/v1/payments", "L3 but no payments:initiate", reason.ScopeMissing),
		allow(RogueAgent, peer, "GET", "/v1/payments", "what its certificate allows"),
		deny(RogueAgent, peer, "POST", "/v1/payments", "tries to pay", reason.InsufficientTrustLevel),
		deny(RogueAgent, xfcc, "POST", "/v1/sanctions/screenings", "tries to screen", reason.ScopeMissing),
		forged,
	}
}

// revokedReasons are what a revoked agent may be refused with: its agent
// id is listed, and its certificate serial is on the CRL.
func revokedReasons() []reason.Code {
	return []reason.Code{reason.AgentRevoked, reason.CertificateRevoked}
}

// afterRevocationSteps run once the rogue agent is revoked: it is refused
// before any policy, the others carry on.
func afterRevocationSteps() []step {
	peer, xfcc := checkreq.ViaPeer, checkreq.ViaXFCC
	return []step{
		deny(RogueAgent, peer, "GET", "/v1/payments", "allowed before revocation", revokedReasons()...),
		deny(RogueAgent, xfcc, "GET", "/v1/payments", "same, by XFCC", revokedReasons()...),
		allow(PaymentsAgent, peer, "POST", "/v1/payments", "unaffected"),
		allow("sanctions-screener", xfcc, "POST", "/v1/sanctions/screenings", "unaffected"),
		allow("merchant-onboarder", peer, "POST", "/v1/merchants", "unaffected"),
		allow("loan-servicer", xfcc, "POST", "/v1/loans/ln_4821/repayments", "unaffected"),
	}
}
