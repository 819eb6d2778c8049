package cli

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
	"github.com/agentauthz/agentauthz/internal/httpsig"
	"github.com/agentauthz/agentauthz/internal/respsig"
)

func newResponseCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "response",
		Short: "Check signed responses (RFC 9421 signatures added by agentauthz's ext_proc processor)",
	}
	cmd.AddCommand(newResponseVerifyCmd())
	return cmd
}

type responseVerifyFlags struct {
	keys, request, format, log string
	maxAge                     time.Duration
	asJSON                     bool
}

func newResponseVerifyCmd() *cobra.Command {
	var f responseVerifyFlags
	cmd := &cobra.Command{
		Use:   "verify FILE",
		Short: "Verify a saved response's signature and say which agent and decision produced it",
		Long: `verify checks the agentauthz signature of one saved HTTP response (FILE, or - for stdin)
against the published keys (--keys: a JWKS or PEM file, or the JWKS URL of serve, e.g.
http://127.0.0.1:9192/.well-known/jwks.json) and prints the decision the response is bound to.

FILE is raw HTTP/1.1 text (as curl -i writes it), optionally preceded by the request head it
answers, or JSON: {"request": {"method": "POST", "url": "https://host/path"}, "status": 200,
"headers": [["content-type", "application/json"], ...], "body": "..." | "body_base64": "..."}.
The signature covers the request's method, authority and path: give the request in FILE or
with --request "POST https://host/path".

With --log, the response is also compared with the response record agentauthz logged when it
signed it (status, body digest, signature): a response changed after signing no longer matches
its record, whatever its fields say. Check the log itself with agentauthz audit verify.

Exit status: 0 valid, 1 invalid (signature, digest, profile, or a mismatch with the log), 2 error.`,
		Example: `  curl -si https://api.example/v1/payments/p-1 > resp.http
  agentauthz response verify --keys http://127.0.0.1:9192/.well-known/jwks.json --request "GET https://api.example/v1/payments/p-1" resp.http`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runResponseVerify(cmd.Context(), cmd.InOrStdin(), cmd.OutOrStdout(), args[0], f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.keys, "keys", "", "public keys: JWKS or PEM file, or an http(s) JWKS URL")
	fl.StringVar(&f.request, "request", "", `the request the response answers, "METHOD URL" (when FILE does not hold it)`)
	fl.StringVar(&f.format, "format", "auto", "FILE format: auto, raw or json")
	fl.DurationVar(&f.maxAge, "max-age", 0, "reject signatures created longer ago than this (0: any age)")
	fl.BoolVar(&f.asJSON, "json", false, "print the result as JSON")
	fl.StringVar(&f.log, "log", "", "also compare the response with its record in this decision log directory (<data-dir>/log)")
	return cmd
}

func runResponseVerify(ctx context.Context, stdin io.Reader, out io.Writer, file string, f responseVerifyFlags) error {
	if f.keys == "" {
		return withHint(errors.New("--keys is required"), "pass serve's JWKS URL, e.g. --keys http://127.0.0.1:9192/.well-known/jwks.json, or a file from agentauthz audit pubkey")
	}
	ks, err := loadKeys(ctx, f.keys)
	if err != nil {
		return err
	}
	data, err := readMessageFile(file, stdin)
	if err != nil {
		return err
	}
	var m *httpsig.Message
	switch f.format {
	case "auto":
		m, err = httpsig.Parse(data)
	case "raw":
		m, err = httpsig.ParseRaw(data)
	case "json":
		m, err = httpsig.ParseJSON(data)
	default:
		return withHint(fmt.Errorf("--format %q", f.format), "use auto, raw or json")
	}
	if err != nil {
		return withHint(err, "FILE must be an HTTP/1.1 response (curl -i) or the JSON form; see agentauthz response verify --help")
	}
	if f.request != "" {
		hint := `write it as "METHOD URL", e.g. --request "GET https://api.example/v1/payments/p-1"`
		method, target, _ := strings.Cut(strings.TrimSpace(f.request), " ")
		req, err := httpsig.ParseRequest([]byte(strings.ToUpper(method) + " " + strings.TrimSpace(target) + " HTTP/1.1\r\n\r\n"))
		if err != nil {
			return withHint(fmt.Errorf("--request %q: %w", f.request, err), "%s", hint)
		}
		if req.Authority == "" {
			return withHint(fmt.Errorf("--request %q has no host", f.request), "give an absolute URL: https://host/path")
		}
		m.Request = req
	}
	o := respsig.Options{
		Keys: func(kid string) (ed25519.PublicKey, bool) { k, ok := ks[kid]; return k, ok },
	}
	if f.maxAge > 0 {
		o.Now, o.MaxAge = time.Now(), f.maxAge
	}
	res, err := respsig.Verify(m, o)
	if errors.Is(err, httpsig.ErrNeedRequest) {
		return withHint(err, `put the request head before the response in FILE, or pass --request "METHOD URL"`)
	}
	var lc *logComparison
	if f.log != "" {
		var lerr error
		if lc, lerr = compareWithLog(f.log, m); lerr != nil {
			return lerr
		}
		if err == nil && lc.Problem != "" {
			err = errors.New("log: " + lc.Problem)
		}
	}
	if err != nil {
		if f.asJSON {
			_ = json.NewEncoder(out).Encode(map[string]any{"valid": false, "error": err.Error(), "log": lc})
		} else {
			fmt.Fprintf(out, "invalid: %s\n", err)
			if lc != nil {
				fmt.Fprintf(out, "log:         %s\n", sanitizeLine(lc.String()))
			}
		}
		return errNo
	}
	if f.asJSON {
		return json.NewEncoder(out).Encode(map[string]any{
			"valid": true, "keyid": res.KeyID, "created": res.Created, "status": res.Status,
			"decision_id": res.DecisionID, "agent_id": res.AgentID, "trust_level": res.TrustLevel,
			"operation": res.Operation, "method": res.Method, "authority": res.Authority, "path": res.Path,
			"body_covered": res.BodyCovered, "body_unsigned": res.BodyUnsigned, "log": lc,
		})
	}
	fmt.Fprintf(out, "valid: signed by key %s at %s\n", res.KeyID, res.Created.Format(time.RFC3339))
	body := fmt.Sprintf("covered (Content-Digest matches, %d bytes)", len(m.Body))
	if !res.BodyCovered {
		body = "NOT covered: " + res.BodyUnsigned + " (the decision log holds what is known of it)"
	}
	rows := [][2]string{
		{"decision", res.DecisionID},
		{"agent", res.AgentID},
		{"trust level", res.TrustLevel},
		{"operation", res.Operation},
		{"request", res.Method + " " + res.Authority + res.Path},
		{"status", fmt.Sprint(res.Status)},
		{"body", body},
	}
	if lc != nil {
		rows = append(rows, [2]string{"log", lc.String()})
	}
	for _, r := range rows {
		fmt.Fprintf(out, "%-12s %s\n", r[0]+":", sanitizeLine(r[1]))
	}
	return nil
}

// logComparison is how a response compares with its record in the log.
type logComparison struct {
	Log     string `json:"log,omitempty"`
	Index   uint64 `json:"index"`         // leaf index (v2 log)
	Seq     uint64 `json:"seq,omitempty"` // v1 log
	Problem string `json:"problem,omitempty"`
}

func (c *logComparison) String() string {
	if c.Problem != "" {
		return "MISMATCH: " + c.Problem
	}
	at := fmt.Sprintf("index %d", c.Index)
	if c.Seq != 0 {
		at = fmt.Sprintf("seq %d", c.Seq)
	}
	return fmt.Sprintf("matches the response record at %s of log %s (status, body digest, signature)", at, c.Log)
}

// compareWithLog finds the response record of m's decision in the log in
// dir and compares status, body digest and signature with m. The log's own
// integrity is `audit verify`'s business. An error means the log could not
// be read; a difference is a Problem.
func compareWithLog(dir string, m *httpsig.Message) (*logComparison, error) {
	if err := checkLogDir(dir); err != nil {
		return nil, err
	}
	id, _ := m.Get(respsig.HeaderDecisionID)
	c := &logComparison{}
	if id == "" {
		c.Problem = "the response carries no x-decision-id to look up"
		return c, nil
	}
	r := decisionlog.NewReader(dir)
	defer r.Close()
	var found *decisionlog.Entry
	err := scanLog(r, io.Discard, func(e decisionlog.Entry) error {
		if e.Record.Kind == decisionlog.KindResponse && e.Record.DecisionID == id && e.Record.Response != nil {
			found = &e
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if found == nil {
		c.Problem = fmt.Sprintf("no response record for decision %s in %s", id, dir)
		return c, nil
	}
	rec, rs := found.Record, found.Record.Response
	c.Log, c.Index, c.Seq = rec.Log, rec.Index, rec.Seq
	sig, _ := m.Get("signature")
	switch {
	case rs.Status != m.Status:
		c.Problem = fmt.Sprintf("status %d, the log says %d", m.Status, rs.Status)
	case rs.ContentDigest != "" && httpsig.CheckContentDigest(rs.ContentDigest, m.Body) != nil:
		c.Problem = fmt.Sprintf("the body's digest is not the logged %s", rs.ContentDigest)
	case rs.Signature != "" && rs.Signature != sig:
		c.Problem = "the signature differs from the logged one"
	}
	return c, nil
}

// sanitizeLine keeps control bytes a response could carry off the terminal.
func sanitizeLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return '?'
		}
		return r
	}, s)
}

func readMessageFile(file string, stdin io.Reader) ([]byte, error) {
	var r io.Reader
	if file == "-" {
		r = stdin
	} else {
		fh, err := os.Open(file)
		if err != nil {
			return nil, err
		}
		defer fh.Close()
		r = fh
	}
	data, err := io.ReadAll(io.LimitReader(r, httpsig.MaxSavedBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > httpsig.MaxSavedBytes {
		return nil, fmt.Errorf("%s: larger than %d MiB", file, httpsig.MaxSavedBytes>>20)
	}
	return data, nil
}

// loadKeys reads a key set from a file or an http(s) JWKS URL.
func loadKeys(ctx context.Context, src string) (decisionlog.KeySet, error) {
	var data []byte
	var err error
	if strings.HasPrefix(src, "http://") || strings.HasPrefix(src, "https://") {
		data, err = fetchJWKS(ctx, src)
	} else {
		data, err = readArgFile(src)
	}
	if err != nil {
		return nil, fmt.Errorf("read keys: %w", err)
	}
	ks, err := decisionlog.ParseKeySet(data)
	if err != nil {
		return nil, fmt.Errorf("keys %s: %w", src, err)
	}
	return ks, nil
}

func fetchJWKS(ctx context.Context, url string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20+1))
	if err != nil {
		return nil, err
	}
	if len(data) > 1<<20 {
		return nil, fmt.Errorf("GET %s: key set larger than 1 MiB", url)
	}
	return data, nil
}
