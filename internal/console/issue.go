package console

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/control"
)

// Issuing, renewing and reissuing agent certificates: admin only, through the
// same ca.Authority calls as `agentauthz agent issue|renew|reissue`.
//
// The private key never reaches a page. With a CSR (the recommended way),
// the agent keeps its key and the CA only signs the public key; the page
// then offers the certificate, which is public. Without one, the CA
// generates the key and the answer to the form's POST is the download
// itself (key and certificate chain in one PEM file, Content-Disposition:
// attachment, Cache-Control: no-store): it is in no URL, no page, no log,
// and nothing on the control plane keeps it.

// adminOnly is a role list nobody but admin matches (control.Operator.May
// lets admin do everything).
var adminOnly = []control.Role{}

// parseTTL reads a lifetime: a Go duration (720h) or whole days (30d).
// Empty is 0: the CA's or the agent's default.
func parseTTL(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(d)
		if err != nil || n <= 0 || n > 3650 {
			return 0, fmt.Errorf("lifetime %.20q: want a number of days from 1 to 3650, or a duration such as 720h", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("lifetime %.20q: want a duration such as 720h or 30d", s)
	}
	return d, nil
}

// issueForm reads what every issuing form has: the reason, the
// confirmation, the lifetime and the CSR.
func issueForm(f url.Values) (reason string, ttl time.Duration, csr []byte, err error) {
	if f.Get("confirm") != "yes" {
		return "", 0, nil, fmt.Errorf("tick the confirmation box: nothing was issued")
	}
	if reason = strings.TrimSpace(f.Get("reason")); reason == "" {
		return "", 0, nil, fmt.Errorf("a reason is required: nothing was issued")
	}
	if ttl, err = parseTTL(f.Get("ttl")); err != nil {
		return "", 0, nil, err
	}
	if s := strings.TrimSpace(f.Get("csr")); s != "" {
		csr = []byte(s)
	}
	return reason, ttl, csr, nil
}

func (c *Console) issuePage(w http.ResponseWriter, r *http.Request, v *viewer) {
	tds, err := c.cfg.Authority.TrustDomains()
	if err != nil {
		c.storeError(w, r, v, err)
		return
	}
	c.render(w, r, http.StatusOK, "issue", v, map[string]any{"TrustDomains": tds})
}

// issue handles the new-agent form (POST /ui/issue, action "issue") and
// the renew and reissue forms of an agent (POST
// /ui/agents/{td}/{id}/renew|reissue).
func (c *Console) issue(action string) handler {
	return func(w http.ResponseWriter, r *http.Request, v *viewer) { c.issueAs(action, w, r, v) }
}

func (c *Console) issueAs(action string, w http.ResponseWriter, r *http.Request, v *viewer) {
	f := r.PostForm
	td, id := f.Get("trust_domain"), strings.TrimSpace(f.Get("agent_id"))
	if action != "issue" {
		td, id = r.PathValue("td"), r.PathValue("id")
	}
	bad := func(text string) {
		c.render(w, r, http.StatusBadRequest, "message", v, map[string]string{"Title": "Not done", "Text": text})
	}
	reason, ttl, csr, err := issueForm(f)
	if err != nil {
		bad(err.Error())
		return
	}
	op := v.Op.String()
	var is *ca.Issued
	switch action {
	case "renew":
		is, err = c.cfg.Authority.Renew(ca.RenewRequest{TrustDomain: td, AgentID: id, TTL: ttl, CSR: csr, Operator: op})
	default: // issue, reissue
		req := ca.IssueRequest{TrustDomain: td, AgentID: id, Scopes: strings.Fields(f.Get("scopes")), Owner: strings.TrimSpace(f.Get("owner")),
			TTL: ttl, CSR: csr, Operator: op}
		if req.Trust, err = ca.ParseTrust(f.Get("trust")); err != nil {
			c.storeError(w, r, v, err)
			return
		}
		if req.TTL == 0 {
			req.TTL = 24 * time.Hour // as the CLI's --ttl default
		}
		if action == "issue" {
			is, err = c.cfg.Authority.Issue(req)
		} else {
			is, err = c.cfg.Authority.Reissue(req)
		}
	}
	if err != nil {
		c.storeError(w, r, v, err)
		return
	}
	c.fleetSnap.invalidate()
	// The inventory records the certificate with the operator; the change
	// log also gets why, as the other console actions have it.
	if err := c.cfg.Authority.RecordEvent(td, id, is.Record.Serial, "console_"+action, op, "reason: "+reason); err != nil {
		c.cfg.Logger.Error("console: record the reason", "error", err)
	}
	c.cfg.Logger.Info("console: agent "+action, "trust_domain", td, "agent_id", id, "serial", is.Record.Serial, "operator", op)
	if is.KeyPEM == nil {
		http.Redirect(w, r, "/ui/agents/"+url.PathEscape(td)+"/"+url.PathEscape(id)+"?done="+action, http.StatusSeeOther) //nolint:gosec // G710: a fixed local path, escaped segments, action one of three
		return
	}
	// The generated key: this answer is its only copy.
	h := w.Header()
	h.Set("Content-Type", "application/x-pem-file")
	h.Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", id+".pem"))
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(is.KeyPEM)
	_, _ = w.Write(is.CertPEM)
}

// certificate serves one certificate of an agent as PEM (certificates are
// public; the key is not in the inventory).
func (c *Console) certificate(w http.ResponseWriter, r *http.Request, v *viewer) {
	td, id, serial := r.PathValue("td"), r.PathValue("id"), r.PathValue("serial")
	d, err := c.cfg.Authority.Show(td, id)
	if err != nil {
		c.storeError(w, r, v, err)
		return
	}
	for _, ct := range d.Certificates {
		if ct.Serial == serial && ct.PEM != "" {
			w.Header().Set("Content-Type", "application/x-pem-file")
			w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", id+"-"+serial+".crt"))
			_, _ = w.Write([]byte(ct.PEM))
			return
		}
	}
	c.render(w, r, http.StatusNotFound, "message", v, map[string]string{"Title": "Not found", "Text": "No such certificate of this agent."})
}
