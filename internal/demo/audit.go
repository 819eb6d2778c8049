package demo

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/reason"
)

// VerifyResult is `audit verify` on one replica's log, with the keys the
// replica publishes.
type VerifyResult struct {
	Replica  string   `json:"replica"`
	LogDir   string   `json:"log_dir"`
	Records  uint64   `json:"records"`
	FirstSeq uint64   `json:"first_seq"`
	LastSeq  uint64   `json:"last_seq"`
	LastHash string   `json:"last_hash"`
	KeyIDs   []string `json:"kids"`
	Intact   bool     `json:"intact"`
	Problem  string   `json:"problem,omitempty"`
}

// Answers are the auditor's four questions, answered from the logs and the
// CA inventory.
type Answers struct {
	WhoInitiated   *WhoAnswer            `json:"which_agent_initiated_this_payment"`
	NotTampered    *TamperAnswer         `json:"prove_it_was_not_tampered_with"`
	LeastPrivilege *LeastPrivilegeAnswer `json:"how_least_privilege_is_enforced"`
	Revocation     *RevocationAnswer     `json:"how_one_agent_is_revoked"`
}

// WhoAnswer is the logged record of one decision.
type WhoAnswer struct {
	DecisionID string               `json:"decision_id"`
	Log        string               `json:"log"`
	Seq        uint64               `json:"seq"`
	Time       time.Time            `json:"time"`
	Agent      decisionlog.Agent    `json:"agent"`
	Request    decisionlog.Request  `json:"request"`
	Decision   decisionlog.Decision `json:"decision"`
}

// TamperAnswer is the receipt check and the chain around it.
type TamperAnswer struct {
	DecisionID      string `json:"decision_id"`
	Alg             string `json:"alg"`
	KeyID           string `json:"kid"`
	ReceiptVerified bool   `json:"receipt_verified"`
	// ReceiptInLog: the receipt the upstream got is byte for byte the
	// record at Seq in the log.
	ReceiptInLog bool   `json:"receipt_in_log"`
	Seq          uint64 `json:"seq"`
	// NextPrev is the "prev" of the record after it: the chain commits to
	// this record. Empty when it is the last record.
	NextPrev    string `json:"next_prev,omitempty"`
	ChainHash   string `json:"chain_hash"`
	ChainIntact bool   `json:"chain_intact"`
	// TamperedRejected: the same receipt with its agent id changed fails
	// verification, with TamperedError.
	TamperedRejected bool   `json:"tampered_rejected"`
	TamperedError    string `json:"tampered_error"`
}

// LeastPrivilegeAnswer summarises every decision in the logs.
type LeastPrivilegeAnswer struct {
	Allowed  int           `json:"allowed"`
	Denied   int           `json:"denied"`
	ByReason []ReasonCount `json:"denied_by_reason"`
}

// ReasonCount is how often one reason denied, and whom.
type ReasonCount struct {
	Reason string   `json:"reason"`
	Count  int      `json:"count"`
	Who    []string `json:"who"` // "agent operation", distinct, sorted
}

// RevocationAnswer is the revocation in the inventory and its effect in the
// logs.
type RevocationAnswer struct {
	Agent     string    `json:"agent"`
	RevokedAt time.Time `json:"revoked_at"`
	Reason    string    `json:"revocation_reason"`
	Operator  string    `json:"operator"`
	Serials   []string  `json:"serials"`
	// FirstDenied is, per log, the first decision refused because of it.
	FirstDenied []LoggedDecision `json:"first_denied"`
	// AllowedAfter counts the revoked agent's requests allowed after the
	// commit: the ones in flight while the push propagated.
	AllowedAfter int `json:"allowed_after_commit"`
	// DeniedAfter counts its requests refused as revoked.
	DeniedAfter int `json:"denied_after_commit"`
	// OthersAllowedAfter counts, per other agent, requests allowed after
	// the revocation: the others were not touched.
	OthersAllowedAfter map[string]int `json:"others_allowed_after"`
}

// LoggedDecision points at one record.
type LoggedDecision struct {
	Log        string        `json:"log"`
	Seq        uint64        `json:"seq"`
	DecisionID string        `json:"decision_id"`
	Time       time.Time     `json:"time"`
	Reason     string        `json:"reason"`
	After      time.Duration `json:"after_revocation_ns"`
}

// problems lists what is missing or wrong in the answers.
func (a Answers) problems() []string {
	var out []string
	if w := a.WhoInitiated; w == nil {
		out = append(out, "question 1 unanswered")
	} else if w.Agent.ID != PaymentsAgent || !w.Decision.Allowed || w.Request.Operation != "payments:initiate" {
		out = append(out, fmt.Sprintf("question 1: the payment's record names %q (allowed=%v, operation %q)", w.Agent.ID, w.Decision.Allowed, w.Request.Operation))
	}
	if t := a.NotTampered; t == nil {
		out = append(out, "question 2 unanswered")
	} else if !t.ReceiptVerified || !t.ReceiptInLog || !t.ChainIntact || !t.TamperedRejected {
		out = append(out, fmt.Sprintf("question 2: receipt verified=%v in log=%v chain intact=%v tampered copy rejected=%v", t.ReceiptVerified, t.ReceiptInLog, t.ChainIntact, t.TamperedRejected))
	}
	if l := a.LeastPrivilege; l == nil || l.Denied == 0 || l.Allowed == 0 {
		out = append(out, "question 3 unanswered")
	}
	if r := a.Revocation; r == nil || r.RevokedAt.IsZero() || len(r.FirstDenied) == 0 {
		out = append(out, "question 4 unanswered")
	} else if len(r.OthersAllowedAfter) == 0 {
		out = append(out, "question 4: no other agent was allowed after the revocation")
	}
	return out
}

// logged is one record with the log it came from.
type logged struct {
	replica string
	entry   decisionlog.Entry
}

// audit verifies every log with the keys its replica published, then
// answers the four questions from the logs and the inventory.
func audit(out *Outcome, reps []*replica, auth *ca.Authority) error {
	var all []logged
	keys := map[string]decisionlog.KeySet{}
	verified := map[string]VerifyResult{}
	for _, r := range reps {
		ks, err := r.keys()
		if err != nil {
			return fmt.Errorf("%s: published keys: %w", r.Name, err)
		}
		keys[r.Name] = ks
		res, err := decisionlog.Verify(r.LogDir, ks)
		if err != nil {
			return fmt.Errorf("%s: verify log: %w", r.Name, err)
		}
		vr := VerifyResult{Replica: r.Name, LogDir: r.LogDir, Records: res.Records, FirstSeq: res.FirstSeq,
			LastSeq: res.LastSeq, LastHash: res.LastHash, KeyIDs: res.KeyIDs, Intact: res.Problem == nil}
		if res.Problem != nil {
			vr.Problem = res.Problem.Error()
			out.Unexpected = append(out.Unexpected, fmt.Sprintf("%s: log does not verify: %s", r.Name, vr.Problem))
		}
		out.Verify = append(out.Verify, vr)
		verified[r.Name] = vr
		entries, err := readLog(r.LogDir)
		if err != nil {
			return fmt.Errorf("%s: read log: %w", r.Name, err)
		}
		for _, e := range entries {
			all = append(all, logged{replica: r.Name, entry: e})
		}
	}
	payment := out.Decisions[paymentStep]
	out.Answers.WhoInitiated = whoInitiated(all, payment.DecisionID)
	out.Answers.NotTampered = notTampered(all, payment, keys[payment.Replica], verified[payment.Replica])
	out.Answers.LeastPrivilege = leastPrivilege(all)
	ra, err := revocationAnswer(all, auth, out.Revocation)
	if err != nil {
		return err
	}
	out.Answers.Revocation = ra
	return nil
}

// readLog reads every record of a log in order. A line that does not decode
// is an error here: the log has just verified.
func readLog(dir string) ([]decisionlog.Entry, error) {
	r := decisionlog.NewReader(dir)
	defer r.Close()
	var out []decisionlog.Entry
	for {
		e, err := r.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
}

func isDecision(r *decisionlog.Record) bool {
	return r.Kind == "" || r.Kind == decisionlog.KindDecision
}

func firstReason(r *decisionlog.Record) string {
	if len(r.Decision.Reasons) == 0 {
		return ""
	}
	return r.Decision.Reasons[0]
}

func whoInitiated(all []logged, id string) *WhoAnswer {
	for _, l := range all {
		r := l.entry.Record
		if r.DecisionID == id && isDecision(r) {
			return &WhoAnswer{DecisionID: id, Log: r.Log, Seq: r.Seq, Time: r.Time, Agent: r.Agent, Request: r.Request, Decision: r.Decision}
		}
	}
	return nil
}

func notTampered(all []logged, payment Decision, ks decisionlog.KeySet, vr VerifyResult) *TamperAnswer {
	a := &TamperAnswer{DecisionID: payment.DecisionID, ChainHash: decisionlog.ChainHash(payment.Receipt), ChainIntact: vr.Intact}
	if hdr, err := jwsHeader(payment.Receipt); err == nil {
		a.Alg, a.KeyID = hdr.Alg, hdr.Kid
	}
	rec, err := decisionlog.VerifyRecord(payment.Receipt, ks)
	a.ReceiptVerified = err == nil && rec.DecisionID == payment.DecisionID
	if rec != nil {
		a.Seq = rec.Seq
	}
	for i, l := range all {
		if l.replica != payment.Replica || l.entry.Record.DecisionID != payment.DecisionID || !isDecision(l.entry.Record) {
			continue // the response record shares the decision id
		}
		a.ReceiptInLog = l.entry.JWS == payment.Receipt
		if i+1 < len(all) && all[i+1].replica == l.replica {
			a.NextPrev = all[i+1].entry.Record.Prev
			a.ChainIntact = a.ChainIntact && a.NextPrev == a.ChainHash
		}
	}
	a.ChainIntact = a.ChainIntact && vr.LastSeq >= a.Seq
	forged, err := replaceInPayload(payment.Receipt, `"id":"`+PaymentsAgent+`"`, `"id":"loan-servicer"`)
	if err == nil {
		_, verr := decisionlog.VerifyRecord(forged, ks)
		a.TamperedRejected = verr != nil
		if verr != nil {
			a.TamperedError = verr.Error()
		}
	}
	return a
}

type header struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
}

func jwsHeader(jws string) (header, error) {
	var h header
	first, _, ok := strings.Cut(jws, ".")
	if !ok {
		return h, errors.New("not a compact JWS")
	}
	b, err := base64.RawURLEncoding.DecodeString(first)
	if err != nil {
		return h, err
	}
	return h, json.Unmarshal(b, &h)
}

// replaceInPayload is what a forger would do: edit the record inside the
// JWS and keep the signature.
func replaceInPayload(jws, old, repl string) (string, error) {
	parts := strings.Split(jws, ".")
	if len(parts) != 3 {
		return "", errors.New("not a compact JWS")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", err
	}
	if !strings.Contains(string(payload), old) {
		return "", fmt.Errorf("payload has no %s", old)
	}
	parts[1] = base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(string(payload), old, repl, 1)))
	return strings.Join(parts, "."), nil
}

func leastPrivilege(all []logged) *LeastPrivilegeAnswer {
	a := &LeastPrivilegeAnswer{}
	counts := map[string]*ReasonCount{}
	for _, l := range all {
		r := l.entry.Record
		if !isDecision(r) {
			continue
		}
		if r.Decision.Allowed {
			a.Allowed++
			continue
		}
		a.Denied++
		why := firstReason(r)
		rc := counts[why]
		if rc == nil {
			rc = &ReasonCount{Reason: why}
			counts[why] = rc
		}
		rc.Count++
		who := r.Agent.ID
		if r.Request.Operation != "" {
			who += " " + r.Request.Operation
		}
		if !slices.Contains(rc.Who, who) {
			rc.Who = append(rc.Who, who)
		}
	}
	for _, rc := range counts {
		sort.Strings(rc.Who)
		a.ByReason = append(a.ByReason, *rc)
	}
	sort.Slice(a.ByReason, func(i, j int) bool {
		if a.ByReason[i].Count != a.ByReason[j].Count {
			return a.ByReason[i].Count > a.ByReason[j].Count
		}
		return a.ByReason[i].Reason < a.ByReason[j].Reason
	})
	return a
}

func revocationAnswer(all []logged, auth *ca.Authority, rev *Revocation) (*RevocationAnswer, error) {
	a := &RevocationAnswer{Agent: RogueAgent, OthersAllowedAfter: map[string]int{}}
	if rev != nil {
		a.Serials = rev.Serials
	}
	e, err := revokeEvent(auth)
	if err != nil {
		return nil, err
	}
	a.RevokedAt, a.Operator, a.Reason = e.At, e.Operator, strings.TrimPrefix(e.Detail, "reason=")
	first := map[string]bool{}
	for _, l := range all {
		r := l.entry.Record
		if !isDecision(r) || r.Time.Before(a.RevokedAt) {
			continue
		}
		if r.Agent.ID != RogueAgent {
			if r.Decision.Allowed {
				a.OthersAllowedAfter[r.Agent.ID]++
			}
			continue
		}
		if r.Decision.Allowed {
			a.AllowedAfter++
			continue
		}
		why := firstReason(r)
		if why != string(reason.AgentRevoked) && why != string(reason.CertificateRevoked) {
			continue
		}
		a.DeniedAfter++
		if !first[l.replica] {
			first[l.replica] = true
			a.FirstDenied = append(a.FirstDenied, LoggedDecision{Log: r.Log, Seq: r.Seq, DecisionID: r.DecisionID,
				Time: r.Time, Reason: why, After: r.Time.Sub(a.RevokedAt)})
		}
	}
	return a, nil
}
