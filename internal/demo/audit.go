package demo

import (
	"encoding/hex"
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
	Replica     string   `json:"replica"`
	LogDir      string   `json:"log_dir"`
	Records     uint64   `json:"records"`
	Checkpoints int      `json:"checkpoints"`
	Root        string   `json:"root"`
	KeyIDs      []string `json:"kids"`
	Intact      bool     `json:"intact"`
	Problem     string   `json:"problem,omitempty"`
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
	Index      uint64               `json:"index"`
	Time       time.Time            `json:"time"`
	Agent      decisionlog.Agent    `json:"agent"`
	Request    decisionlog.Request  `json:"request"`
	Decision   decisionlog.Decision `json:"decision"`
}

// TamperAnswer is the receipt check and the tree around it.
type TamperAnswer struct {
	DecisionID string `json:"decision_id"`
	// ReceiptBytes is the size of the x-agent-receipt header value.
	ReceiptBytes int `json:"receipt_bytes"`
	// ReceiptVerified: the receipt's inclusion proof leads from its record
	// hash to a checkpoint signed by the replica's published key.
	ReceiptVerified bool   `json:"receipt_verified"`
	KeyID           string `json:"kid"`
	Index           uint64 `json:"index"`
	RecordHash      string `json:"record_hash"` // hex SHA-256(0x00 ‖ record line)
	CheckpointSize  uint64 `json:"checkpoint_size"`
	// ReceiptInLog: the record at Index in the log hashes to the receipt's
	// record hash, and the receipt's signed checkpoint is in the log.
	ReceiptInLog bool `json:"receipt_in_log"`
	// LogIntact: the whole log verifies (section 5), past the receipt's
	// checkpoint: every later checkpoint is consistent with it.
	LogIntact bool `json:"log_intact"`
	// TamperedRejected: the record with its agent id changed no longer
	// matches the receipt: put in its place, the receipt fails, with
	// TamperedError.
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
	Index      uint64        `json:"index"`
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
	} else if !t.ReceiptVerified || !t.ReceiptInLog || !t.LogIntact || !t.TamperedRejected {
		out = append(out, fmt.Sprintf("question 2: receipt verified=%v in log=%v log intact=%v tampered copy rejected=%v", t.ReceiptVerified, t.ReceiptInLog, t.LogIntact, t.TamperedRejected))
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
	replica     string
	entry       decisionlog.Entry
	checkpoints map[string]bool // the signed checkpoints in the replica's log
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
		vr := VerifyResult{Replica: r.Name, LogDir: r.LogDir, Records: res.Records, Checkpoints: res.Checkpoints,
			Root: res.Root, KeyIDs: res.KeyIDs, Intact: res.Problem == nil}
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
		cps, err := decisionlog.Checkpoints(r.LogDir)
		if err != nil {
			return fmt.Errorf("%s: read checkpoints: %w", r.Name, err)
		}
		inLog := map[string]bool{}
		for _, cp := range cps {
			inLog[string(cp)] = true
		}
		for _, e := range entries {
			all = append(all, logged{replica: r.Name, entry: e, checkpoints: inLog})
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
			return &WhoAnswer{DecisionID: id, Log: r.Log, Index: r.Index, Time: r.Time, Agent: r.Agent, Request: r.Request, Decision: r.Decision}
		}
	}
	return nil
}

func notTampered(all []logged, payment Decision, ks decisionlog.KeySet, vr VerifyResult) *TamperAnswer {
	a := &TamperAnswer{DecisionID: payment.DecisionID, ReceiptBytes: len(payment.Receipt)}
	r, err := decisionlog.VerifyReceipt(payment.Receipt, ks)
	a.ReceiptVerified = err == nil
	if r == nil {
		return a
	}
	for kid, pub := range ks {
		if vk, err := decisionlog.NoteVerifierKey(r.Checkpoint.Origin, pub); err == nil && strings.Contains(vk, fmt.Sprintf("+%08x+", r.KeyHash)) {
			a.KeyID = kid
		}
	}
	a.Index, a.CheckpointSize = r.Index, r.Checkpoint.Size
	a.RecordHash = hex.EncodeToString(r.RecordHash[:])
	for _, l := range all {
		rec := l.entry.Record
		if l.replica != payment.Replica || rec.DecisionID != payment.DecisionID || !isDecision(rec) {
			continue // the response record shares the decision id
		}
		a.ReceiptInLog = rec.Index == r.Index && decisionlog.LeafHash([]byte(l.entry.Raw)) == r.RecordHash &&
			l.checkpoints[string(r.SignedCheckpoint())]
		// A forger edits the record (the agent id) and, to match it,
		// the receipt's record hash: the proof then leads to another
		// batch root, and the signature no longer verifies.
		forged := strings.Replace(l.entry.Raw, `"id":"`+PaymentsAgent+`"`, `"id":"loan-servicer"`, 1)
		if forged == l.entry.Raw {
			break
		}
		f := *r
		f.RecordHash = decisionlog.LeafHash([]byte(forged))
		_, verr := decisionlog.VerifyReceipt(f.Encode(), ks)
		a.TamperedRejected = verr != nil
		if verr != nil {
			a.TamperedError = verr.Error()
		}
	}
	a.LogIntact = vr.Intact && vr.Records >= a.CheckpointSize
	return a
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
			a.FirstDenied = append(a.FirstDenied, LoggedDecision{Log: r.Log, Index: r.Index, DecisionID: r.DecisionID,
				Time: r.Time, Reason: why, After: r.Time.Sub(a.RevokedAt)})
		}
	}
	return a, nil
}
