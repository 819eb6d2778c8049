package cli

import (
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/agentauthz/agentauthz/internal/ca"
)

// caDefaultDataDir is the data directory when neither --data-dir nor
// AGENTAUTHZ_DATA_DIR is given.
const caDefaultDataDir = ".agentauthz"

func caEnvDataDir() string {
	if d := os.Getenv("AGENTAUTHZ_DATA_DIR"); d != "" {
		return d
	}
	return caDefaultDataDir
}

// caOpen opens the CA inventory of dataDir: in the PostgreSQL database
// AGENTAUTHZ_STORE names when it is a postgres:// URL (the store of `control
// serve --store`, for every command that works on the data directory), else
// in <data>/inventory.db. The CA keys are files in dataDir either way.
func caOpen(dataDir string, opts ...ca.Option) (*ca.Authority, error) {
	if dsn := os.Getenv("AGENTAUTHZ_STORE"); ca.IsPostgres(dsn) {
		opts = append(opts, ca.WithStore(dsn))
	}
	return ca.Open(dataDir, opts...)
}

// defaultOperator names who runs a lifecycle command, for the inventory's
// event log: AGENTAUTHZ_OPERATOR, else the OS user.
func caDefaultOperator() string {
	if op := os.Getenv("AGENTAUTHZ_OPERATOR"); op != "" {
		return op
	}
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return "unknown"
}

func newCACmd() *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Manage the agent CAs of each trust domain, their CRLs and the revocation server",
	}
	cmd.PersistentFlags().StringVar(&dataDir, "data-dir", caEnvDataDir(), "data directory (env AGENTAUTHZ_DATA_DIR)")
	cmd.AddCommand(
		newCAInitCmd(&dataDir),
		newCAImportCmd(&dataDir),
		newCAListCmd(&dataDir),
		newCACRLCmd(&dataDir),
		newCARotateChangeLogKeyCmd(&dataDir),
		newCAServeCmd(),
	)
	return cmd
}

func newCAInitCmd(dataDir *string) *cobra.Command {
	var req ca.InitRequest
	cmd := &cobra.Command{
		Use:   "init --trust-domain TD",
		Short: "Create an ECDSA P-256 CA for a trust domain",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if req.TrustDomain == "" {
				return withHint(errors.New("--trust-domain is required"), "e.g. agentauthz ca init --trust-domain acme.example --org \"Acme Corp\"")
			}
			a, err := caOpen(*dataDir)
			if err != nil {
				return caError(err, *dataDir)
			}
			defer a.Close()
			info, err := a.Init(req)
			if errors.Is(err, ca.ErrExists) {
				return withHint(err, "agentauthz ca list shows the existing CAs; choose another --trust-domain")
			}
			if err != nil {
				return caError(err, *dataDir)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "created CA for trust domain %s\ncertificate: %s\nkey:         %s (0600)\nmax ttl:     %s\n",
				info.TrustDomain, info.CertPath, info.KeyPath, info.MaxTTL)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.TrustDomain, "trust-domain", "", "trust domain (tenant), e.g. acme.example")
	f.StringVar(&req.Org, "org", "", "organisation name, put into Subject O")
	f.StringVar(&req.CRLURL, "crl-url", "", "CRL distribution point URL written into agent certificates")
	f.DurationVar(&req.MaxTTL, "max-ttl", ca.DefaultMaxTTL, "longest agent certificate lifetime")
	f.StringVar(&req.Operator, "operator", caDefaultOperator(), "who runs this, for the inventory (env AGENTAUTHZ_OPERATOR)")
	return cmd
}

func newCAImportCmd(dataDir *string) *cobra.Command {
	var req ca.ImportRequest
	var certFile, keyFile string
	cmd := &cobra.Command{
		Use:   "import --trust-domain TD --cert FILE --key FILE",
		Short: "Import an existing CA or intermediate for a trust domain",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if req.TrustDomain == "" || certFile == "" || keyFile == "" {
				return withHint(errors.New("--trust-domain, --cert and --key are required"),
					"e.g. agentauthz ca import --trust-domain acme.example --cert intermediate.pem --key intermediate.key")
			}
			st, err := os.Stat(keyFile)
			if err != nil {
				return fmt.Errorf("read key: %w", err)
			}
			if st.Mode().Perm()&0o077 != 0 {
				return caError(&ca.KeyPermissionError{Path: keyFile, Mode: st.Mode()}, *dataDir)
			}
			if req.CertPEM, err = caReadSmallFile(certFile); err != nil {
				return err
			}
			if req.KeyPEM, err = caReadSmallFile(keyFile); err != nil {
				return err
			}
			a, err := caOpen(*dataDir)
			if err != nil {
				return caError(err, *dataDir)
			}
			defer a.Close()
			info, err := a.Import(req)
			if errors.Is(err, ca.ErrExists) {
				return withHint(err, "agentauthz ca list shows the existing CAs; choose another --trust-domain")
			}
			if err != nil {
				return caError(err, *dataDir)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "imported CA %q for trust domain %s\ncertificate: %s\nkey:         %s (0600)\nmax ttl:     %s\n",
				info.Subject, info.TrustDomain, info.CertPath, info.KeyPath, info.MaxTTL)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.TrustDomain, "trust-domain", "", "trust domain (tenant), e.g. acme.example")
	f.StringVar(&certFile, "cert", "", "CA certificate PEM (followed by its chain, if any)")
	f.StringVar(&keyFile, "key", "", "CA private key PEM (PKCS#8, SEC 1 or PKCS#1); must be mode 0600")
	f.StringVar(&req.Org, "org", "", "organisation name for Subject O (default: the CA's O)")
	f.StringVar(&req.CRLURL, "crl-url", "", "CRL distribution point URL written into agent certificates")
	f.DurationVar(&req.MaxTTL, "max-ttl", ca.DefaultMaxTTL, "longest agent certificate lifetime")
	f.StringVar(&req.Operator, "operator", caDefaultOperator(), "who runs this, for the inventory (env AGENTAUTHZ_OPERATOR)")
	return cmd
}

func newCAListCmd(dataDir *string) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the trust domains and their CAs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := caOpen(*dataDir, ca.MustExist())
			if err != nil {
				return caError(err, *dataDir)
			}
			defer a.Close()
			cas, err := a.ListCAs()
			if err != nil {
				return caError(err, *dataDir)
			}
			if asJSON {
				return caWriteJSON(cmd, cas)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TRUST DOMAIN\tORG\tSOURCE\tMAX TTL\tCA NOT AFTER\tCRL URL\tCERTIFICATE")
			for _, c := range cas {
				src := "init"
				if c.Imported {
					src = "import"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.TrustDomain, caDash(c.Org), src, c.MaxTTL,
					c.NotAfter.UTC().Format(time.RFC3339), caDash(c.CRLURL), c.CertPath)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// newCARotateChangeLogKeyCmd is `ca rotate-changelog-key`: a new change-log
// key, the rotation signed by the old one as a row of the log.
func newCARotateChangeLogKeyCmd(dataDir *string) *cobra.Command {
	var reason, operator string
	cmd := &cobra.Command{
		Use:   "rotate-changelog-key --reason TEXT",
		Short: "Replace the change-log signing key (the rotation is a signed row of the change log)",
		Long: `Create a new change-log key, append the rotation to the change log signed by the old key (the
row names the new public key), and install the new key in <data-dir>/changelog/; the old public key is kept in
changelog/retired/. "agentauthz audit verify --changelog" follows the rotation. With several control-plane
instances on one PostgreSQL store, copy changelog/ to every other instance afterwards: until then they refuse
changes rather than sign with the retired key.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if reason == "" {
				return withHint(errors.New("--reason is required"), `e.g. --reason "yearly rotation"`)
			}
			a, err := caOpen(*dataDir, ca.MustExist())
			if err != nil {
				return caError(err, *dataDir)
			}
			defer a.Close()
			rot, err := a.RotateChangeLogKey(operator, reason)
			if err != nil {
				return caError(err, *dataDir)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "rotated the change-log key at seq %d: %s -> %s\npublic key: %s (old: %s)\n",
				rot.Seq, rot.OldKID, rot.NewKID, ca.ChangeLogKeyPath(*dataDir),
				filepath.Join(filepath.Dir(ca.ChangeLogKeyPath(*dataDir)), "retired", rot.OldKID+".pub"))
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why the key is rotated, for the change log (required)")
	cmd.Flags().StringVar(&operator, "operator", caDefaultOperator(), "who runs this, for the change log (env AGENTAUTHZ_OPERATOR)")
	return cmd
}

func newCACRLCmd(dataDir *string) *cobra.Command {
	var td, out string
	var next time.Duration
	var der bool
	cmd := &cobra.Command{
		Use:   "crl --trust-domain TD",
		Short: "Sign a new CRL for a trust domain (next CRL number)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := caOpen(*dataDir, ca.MustExist())
			if err != nil {
				return caError(err, *dataDir)
			}
			defer a.Close()
			if td, err = caResolveTrustDomain(a, td, ""); err != nil {
				return caError(err, *dataDir)
			}
			crl, err := a.CRL(td, next)
			if err != nil {
				return caError(err, *dataDir)
			}
			data := crl
			if !der {
				data = pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: crl})
			}
			if out == "" || out == "-" {
				_, err := cmd.OutOrStdout().Write(data)
				return err
			}
			if err := caWriteFile(out, data, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "wrote CRL for %s to %s\n", td, out)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&td, "trust-domain", "", "trust domain (default: the only one)")
	f.StringVar(&out, "out", "", "write the CRL to this file (default: stdout)")
	f.DurationVar(&next, "next-update", ca.DefaultCRLValidity, "time from thisUpdate to nextUpdate")
	f.BoolVar(&der, "der", false, "write DER instead of PEM")
	return cmd
}

// resolveTrustDomain picks the trust domain: the flag, else the one holding
// agentID (when given), else the only trust domain in the inventory.
func caResolveTrustDomain(a *ca.Authority, flag, agentID string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	if agentID != "" {
		if err := ca.ValidateAgentID(agentID); err != nil {
			return "", err
		}
		tds, err := a.FindAgent(agentID)
		if err != nil {
			return "", err
		}
		switch len(tds) {
		case 0:
			return "", fmt.Errorf("%w: no agent %q in the inventory", ca.ErrNotFound, agentID)
		case 1:
			return tds[0], nil
		}
		return "", withHint(fmt.Errorf("agent %q exists in several trust domains", agentID),
			"pass --trust-domain (one of %s)", strings.Join(tds, ", "))
	}
	tds, err := a.TrustDomains()
	if err != nil {
		return "", err
	}
	switch len(tds) {
	case 0:
		return "", withHint(errors.New("no trust domain in the inventory"), "create one: agentauthz ca init --trust-domain TD")
	case 1:
		return tds[0], nil
	}
	return "", withHint(errors.New("--trust-domain is required: the inventory holds several"), "one of %s", strings.Join(tds, ", "))
}

// caError attaches the hint for the error families of package ca. Errors
// that already carry a hint keep it.
func caError(err error, dataDir string) error {
	var he hintError
	if errors.As(err, &he) {
		return err
	}
	var kpe *ca.KeyPermissionError
	switch {
	case errors.As(err, &kpe):
		return withHint(err, "chmod 600 %s", kpe.Path)
	case errors.Is(err, ca.ErrCorruptStore):
		return withHint(err, "the inventory is not a readable SQLite database: restore %s from a backup; nothing was changed",
			filepath.Join(dataDir, "inventory.db"))
	case errors.Is(err, ca.ErrStoreBusy):
		return withHint(err, "another agentauthz process is writing to %s; retry when it has finished; nothing was changed", dataDir)
	case errors.Is(err, ca.ErrNoStore):
		return withHint(err, "create a CA first: agentauthz ca init --trust-domain TD --data-dir %s", dataDir)
	case errors.Is(err, ca.ErrNotFound):
		return withHint(err, "see what exists with agentauthz ca list and agentauthz agent list")
	case errors.Is(err, ca.ErrExists):
		return withHint(err, "an existing agent gets a new certificate with agentauthz agent renew (same attributes) or agent reissue (new ones)")
	}
	var ie *ca.InputError
	if errors.As(err, &ie) {
		if h, ok := caInputHint(ie.Field); ok {
			return withHint(err, "%s; nothing was changed", h)
		}
		return withHint(err, "nothing was changed; see --help for accepted values")
	}
	return err
}

// inputHint says how to fix each kind of invalid input.
func caInputHint(field string) (string, bool) {
	switch field {
	case "agent_id":
		return "agent ids are 1-63 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit, e.g. payments-bot-1", true
	case "trust":
		return "use --trust L0, L1, L2, L3 or L4", true
	case "scope":
		return "give one or more --scope <resource>:<action>, lowercase, e.g. --scope payments:initiate", true
	case "owner":
		return "--owner is an e-mail address or team name: letters, digits and . _ @ + -", true
	case "ttl":
		return "ask for a shorter --ttl, at most the trust domain's max ttl (agentauthz ca list shows it)", true
	case "csr":
		return "create the request with e.g. openssl req -new -key agent.key -subj /CN=agent -out agent.csr (ECDSA P-256 or Ed25519 key)", true
	case "key_type":
		return "use --key-type ecdsa-p256 or --key-type ed25519", true
	case "serial":
		return "serials are hex, as printed by agentauthz agent list or openssl x509 -noout -serial", true
	case "reason":
		return "use an RFC 5280 reason: keyCompromise, cACompromise, affiliationChanged, superseded, cessationOfOperation, privilegeWithdrawn or unspecified", true
	case "trust_domain":
		return "a trust domain is a DNS-like name of a-z, 0-9, '.', '-' and '_', e.g. acme.example", true
	case "ca":
		return "import a CA certificate (basicConstraints CA:TRUE, keyCertSign) together with its own private key", true
	case "agent":
		return "an agent that is revoked gets a new certificate with agentauthz agent renew or agent reissue", true
	}
	return "", false
}

func caReadSmallFile(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Size() > 64<<10 {
		return nil, fmt.Errorf("%s is larger than 64 KiB", path)
	}
	return os.ReadFile(path)
}

// caWriteFile writes data via temp → fsync → rename → fsync dir, so a crash
// leaves the old file or the new one, never half of one.
func caWriteFile(path string, data []byte, perm os.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err = f.Chmod(perm); err != nil { // before any secret byte is written
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func caWriteJSON(cmd *cobra.Command, v any) error {
	enc := json.NewEncoder(cmd.OutOrStdout())
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func caDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
