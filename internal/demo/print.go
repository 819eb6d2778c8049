package demo

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// printer writes the human account. Write errors are remembered, not
// returned at every call: the outcome does not depend on the text.
type printer struct {
	w   io.Writer
	err error
}

func (p *printer) printf(format string, args ...any) {
	if p.err == nil {
		_, p.err = fmt.Fprintf(p.w, format, args...)
	}
}

func (p *printer) title(s string) {
	p.printf("%s\n%s\n", s, strings.Repeat("=", len(s)))
}

func (p *printer) section(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	p.printf("\n%s\n%s\n", s, strings.Repeat("-", len(s)))
}

func (p *printer) line(format string, args ...any) { p.printf(format+"\n", args...) }

func (p *printer) table(f func(tw *tabwriter.Writer)) {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	f(tw)
	_ = tw.Flush()
	p.printf("%s", b.String())
}

func (p *printer) agents(agents []AgentInfo) {
	p.table(func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "AGENT\tTRUST\tSCOPES\tOWNER\tSERIAL\tROLE")
		for _, a := range agents {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", a.ID, a.Trust, strings.Join(a.Scopes, ","), a.Owner, short(a.Serial), a.Role)
		}
	})
}

func (p *printer) decisions(ds []Decision) {
	p.table(func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "AGENT\tVIA\tREPLICA\tREQUEST\tOPERATION\tDECISION\tREASON\tDECISION ID\tNOTE")
		for _, d := range ds {
			verdict := "DENY " + fmt.Sprint(d.Status)
			if d.Allowed {
				verdict = "ALLOW"
			}
			if !d.Expected {
				verdict += " (UNEXPECTED)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s %s\t%s\t%s\t%s\t%s\t%s\n", d.Agent, d.Via, d.Replica, d.Method, d.Path,
				dash(d.Operation), verdict, d.Reason, short(d.DecisionID), d.Note)
		}
	})
}

func (p *printer) revocation(r *Revocation) {
	p.line("revoked in the CA inventory at %s (as `agentauthz agent revoke %s --reason keyCompromise` does),",
		r.RevokedAt.UTC().Format(logTime), r.Agent)
	p.line("certificate serial %s; the publisher pushes the new CRL and revoked-agent list to every replica.",
		strings.Join(shortAll(r.Serials), ", "))
	p.line("Meanwhile %s keeps asking for GET /v1/payments every %s on each replica:", r.Agent, revocationProbe)
	for _, f := range r.Replicas {
		p.line("  %s refuses it %s after the commit (%s, decision %s; %d earlier probe(s) still allowed)",
			f.Replica, ms(f.After), f.Reason, short(f.DecisionID), f.AllowedBefore)
	}
}

func (p *printer) verify(vs []VerifyResult) {
	p.section("5. audit verify: signatures and hash chain of every replica's log")
	for _, v := range vs {
		status := "OK, intact"
		if !v.Intact {
			status = "FAILED: " + v.Problem
		}
		p.line("%s: %d records, %d checkpoints, key %s, root %s: %s", v.Replica, v.Records, v.Checkpoints,
			strings.Join(v.KeyIDs, ","), short(v.Root), status)
	}
}

func (p *printer) answers(out *Outcome) {
	a := out.Answers
	p.section("6. The auditor's questions, answered from the logs")

	p.line("Q1. Which agent initiated payment %s?", short(out.Decisions[paymentStep].DecisionID))
	if w := a.WhoInitiated; w != nil {
		p.line("    decision    %s  (%s index %d, %s)", w.DecisionID, w.Log, w.Index, w.Time.UTC().Format(logTime))
		p.line("    agent       %s  %s", w.Agent.ID, w.Agent.SPIFFEID)
		p.line("    trust       %s, scopes %s, owner %s", w.Agent.TrustLevel, strings.Join(w.Agent.Scopes, ","), w.Agent.Owner)
		p.line("    certificate serial %s, sha256 %s, issuer %q, via %s", short(w.Agent.Serial), short(w.Agent.CertSHA256), w.Agent.Issuer, w.Agent.Source)
		p.line("    request     %s %s%s -> %s, x-request-id %s, from %s", w.Request.Method, w.Request.Host, w.Request.Path, w.Request.Operation, w.Request.ID, w.Request.Source)
		p.line("    decision    allowed=%v, http %d, reasons %s, policy revision %s", w.Decision.Allowed, w.Decision.HTTPStatus,
			strings.Join(w.Decision.Reasons, ","), dash(w.Decision.PolicyRevision))
	} else {
		p.line("    NOT FOUND in the logs")
	}

	p.line("")
	p.line("Q2. Prove it was not tampered with.")
	if t := a.NotTampered; t != nil {
		p.line("    the upstream received x-agent-receipt (%d bytes): record %d's hash %s, its inclusion proof", t.ReceiptBytes, t.Index, short(t.RecordHash))
		p.line("    and the checkpoint of its batch (tree size %d), signed by key %s", t.CheckpointSize, short(t.KeyID))
		p.line("    verified offline with the replica's published key (/.well-known/jwks.json): %s", yes(t.ReceiptVerified))
		p.line("    the record at index %d of the log hashes to it, and the checkpoint is in the log: %s", t.Index, yes(t.ReceiptInLog))
		p.line("    the whole log verifies (section 5), every later checkpoint consistent with it: %s", yes(t.LogIntact))
		p.line("    the record with agent id changed to loan-servicer: rejected=%v (%s)", t.TamperedRejected, t.TamperedError)
	}

	p.line("")
	p.line("Q3. How is least privilege enforced?")
	if l := a.LeastPrivilege; l != nil {
		p.line("    %d decisions logged: %d allowed, %d denied. Every agent got exactly its certificate's", l.Allowed+l.Denied, l.Allowed, l.Denied)
		p.line("    scopes at its trust level; identity came from the rightmost XFCC element, so the forged one did nothing.")
		p.table(func(tw *tabwriter.Writer) {
			fmt.Fprintln(tw, "    DENIED BY\tCOUNT\tWHO (agent operation)")
			for _, rc := range l.ByReason {
				fmt.Fprintf(tw, "    %s\t%d\t%s\n", rc.Reason, rc.Count, strings.Join(rc.Who, "; "))
			}
		})
	}

	p.line("")
	p.line("Q4. How is one agent revoked?")
	if r := a.Revocation; r != nil {
		p.line("    inventory: %s revoked at %s by %s, reason %s, serials %s", r.Agent,
			r.RevokedAt.UTC().Format(logTime), r.Operator, r.Reason, strings.Join(shortAll(r.Serials), ","))
		for _, f := range r.FirstDenied {
			p.line("    first refusal in %s: index %d, decision %s, %s, %s after the revocation", f.Log, f.Index, short(f.DecisionID), f.Reason, ms(f.After))
		}
		p.line("    after the commit: %d of its requests refused; %d probe(s) allowed while the push was in flight", r.DeniedAfter, r.AllowedAfter)
		var others []string
		for _, ag := range scenarioAgents() {
			if n, ok := r.OthersAllowedAfter[ag.ID]; ok {
				others = append(others, fmt.Sprintf("%s %d", ag.ID, n))
			}
		}
		p.line("    the others kept working (allowed after it): %s", strings.Join(others, ", "))
	}
}

// logTime is the decision log's time format.
const logTime = "2006-01-02T15:04:05.000000Z"

// short shows the distinctive end of a long identifier (UUIDv7 decision ids
// share their time prefix).
func short(s string) string {
	if len(s) <= 12 {
		return s
	}
	return "…" + s[len(s)-8:]
}

func shortAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = short(s)
	}
	return out
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "NO"
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.0fms", float64(d)/float64(time.Millisecond))
}

func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func parseCert(certPEM []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(certPEM)
	if blk == nil {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(blk.Bytes)
}
