package control

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
)

// Operator is the authenticated caller of a request.
type Operator struct {
	Name string
	Role Role
}

// String is how the change log names the operator: "alice (responder)".
func (o Operator) String() string { return fmt.Sprintf("%s (%s)", o.Name, o.Role) }

type operatorKey struct{}

// OperatorFrom returns the authenticated operator of a request handled
// behind Require.
func OperatorFrom(ctx context.Context) (Operator, bool) {
	o, ok := ctx.Value(operatorKey{}).(Operator)
	return o, ok
}

// Authentication refusal reasons, the "reason" label of
// agentauthz_control_auth_refused_total.
const (
	AuthNoTLS         = "no_tls"
	AuthNoCertificate = "no_certificate"
	AuthExpired       = "expired"
	AuthUnknownCA     = "unknown_ca"
	AuthInvalid       = "invalid_certificate"
	AuthNoRole        = "no_role"
	AuthWrongRole     = "wrong_role"
)

// Authenticator checks client certificates against the operator CA. The TLS
// listener only requests a certificate (so that CRLs stay public and an
// expired certificate gets a clear answer instead of a handshake alert);
// verification happens here, per request.
type Authenticator struct {
	pool    *x509.CertPool
	now     func() time.Time
	refused func(reason string)
}

// NewAuthenticator verifies against ca; refused is called with the reason of
// every refusal (for a metric); now defaults to time.Now.
func NewAuthenticator(ca *OperatorCA, now func() time.Time, refused func(reason string)) *Authenticator {
	if now == nil {
		now = time.Now
	}
	if refused == nil {
		refused = func(string) {}
	}
	return &Authenticator{pool: ca.Pool(), now: now, refused: refused}
}

// authenticate returns the operator of r, or an HTTP status and a refusal.
func (a *Authenticator) authenticate(r *http.Request) (Operator, int, string, error) {
	if r.TLS == nil {
		return Operator{}, http.StatusUnauthorized, AuthNoTLS, errors.New("this endpoint is served only over mTLS")
	}
	if len(r.TLS.PeerCertificates) == 0 {
		return Operator{}, http.StatusUnauthorized, AuthNoCertificate, errors.New("no client certificate: present an operator certificate (agentauthz operator issue)")
	}
	leaf := r.TLS.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range r.TLS.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: a.pool, Intermediates: inter, CurrentTime: a.now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		var inv x509.CertificateInvalidError
		var unk x509.UnknownAuthorityError
		switch {
		case errors.As(err, &inv) && inv.Reason == x509.Expired:
			return Operator{}, http.StatusUnauthorized, AuthExpired,
				fmt.Errorf("operator certificate %q expired or not yet valid (valid %s to %s)", leaf.Subject.CommonName,
					leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
		case errors.As(err, &unk):
			return Operator{}, http.StatusUnauthorized, AuthUnknownCA, errors.New("client certificate is not from this control plane's operator CA")
		}
		return Operator{}, http.StatusUnauthorized, AuthInvalid, fmt.Errorf("client certificate refused: %v", err)
	}
	var role Role
	n := 0
	for _, ou := range leaf.Subject.OrganizationalUnit {
		if v, ok := strings.CutPrefix(ou, roleOUPrefix); ok {
			role, n = Role(v), n+1
		}
	}
	if n != 1 {
		return Operator{}, http.StatusForbidden, AuthNoRole, errors.New("operator certificate carries no single role")
	}
	if _, err := ParseRole(string(role)); err != nil {
		return Operator{}, http.StatusForbidden, AuthNoRole, err
	}
	if ValidateName(leaf.Subject.CommonName) != nil {
		return Operator{}, http.StatusForbidden, AuthInvalid, errors.New("operator certificate name is not valid")
	}
	return Operator{Name: leaf.Subject.CommonName, Role: role}, 0, "", nil
}

// Who may do what: the API's routes and the console both check these
// (admin always qualifies).
var (
	ReadAgents   = []Role{RoleAuditor, RoleResponder}
	ChangeAgents = []Role{RoleResponder}
	ReadRecords  = []Role{RoleAuditor, RolePolicy}
	// RecordSimulations may append policy simulation runs to the change
	// log (POST /v1/simulations).
	RecordSimulations = []Role{RolePolicy, RoleResponder}
)

// May reports whether o holds one of roles (admin always does).
func (o Operator) May(roles []Role) bool {
	return o.Role == RoleAdmin || slices.Contains(roles, o.Role)
}

// Authenticate returns the operator whose client certificate r carries, for
// callers (the console) that answer a refusal their own way.
func (a *Authenticator) Authenticate(r *http.Request) (Operator, error) {
	op, _, reason, err := a.authenticate(r)
	if err != nil {
		a.refused(reason)
	}
	return op, err
}

// Require serves h only to an authenticated caller holding one of roles
// (admin always qualifies); everyone else gets 401 or 403 with a JSON error.
func (a *Authenticator) Require(h http.Handler, roles ...Role) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		op, status, reason, err := a.authenticate(r)
		if err == nil && !op.May(roles) {
			status, reason = http.StatusForbidden, AuthWrongRole
			err = fmt.Errorf("role %s may not do this (needs %s)", op.Role, joinRoles(roles))
		}
		if err != nil {
			a.refused(reason)
			writeError(w, status, reason, err)
			return
		}
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), operatorKey{}, op)))
	})
}

func joinRoles(roles []Role) string {
	s := make([]string, 0, len(roles)+1)
	for _, r := range roles {
		s = append(s, string(r))
	}
	return strings.Join(append(s, string(RoleAdmin)), " or ")
}

// apiError is the body of every refusal.
type apiError struct {
	Error  string `json:"error"`
	Reason string `json:"reason"`
}

func writeError(w http.ResponseWriter, status int, reason string, err error) {
	writeJSON(w, status, apiError{Error: err.Error(), Reason: reason})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}
