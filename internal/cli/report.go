package cli

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/agentauthz/agentauthz/internal/anomaly"
	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/durable"
	"github.com/agentauthz/agentauthz/internal/evidence"
)

func newAuditReportCmd() *cobra.Command {
	var (
		logs, configs                                   []string
		dataDir, alerts, out, format, from, to, signKey string
		sampleN                                         int
		seed                                            uint64
		srv                                             serverFlags
	)
	cmd := &cobra.Command{
		Use:   "report",
		Short: "Build the auditor's evidence pack: each SOC 2 control's status, evidence and the commands that reproduce it",
		Long: `report reads the decision logs (--log, one per replica; each is verified first), the CA inventory and
signed change log (--data-dir), the alerts file (--alerts) and each replica's serve configuration
(--config) — or, with --server and an auditor
certificate, every log the control plane's store holds (each re-verified there), its change log and
inventory — and writes the evidence pack: for each
control (CC6.1–CC8.1, A1.1, PI1.3, PI1.5) its status — evidence found, gap, or not applicable — the
evidence, and the exact command that reproduces every figure; a mapping of the same evidence to ISO/IEC
27001:2022, PCI DSS v4.0, the EU AI Act and the NIST AI RMF; and a seeded random sample of decisions with
the steps to re-verify each one. A control with no evidence is a gap, never a pass.

The report (one self-contained HTML file, or JSON) is signed with Ed25519: OUT.sig holds the raw
signature and OUT.pub.pem the public key; agentauthz audit report-verify OUT (or openssl pkeyutl)
checks it. The signing key is --sign-key, by default <data-dir>/keys/report.key (made on first use).`,
		Example: `  agentauthz audit report --log .agentauthz/log --data-dir .agentauthz --from 2026-11-01T00:00:00Z --to 2026-12-01T00:00:00Z --out report.html
  agentauthz audit report --log replica-a/log --log replica-b/log --alerts alerts.jsonl --format json --out report.json
  agentauthz audit report --server https://cp.example:9193 --cert audrey.pem --key audrey.key --server-ca ca.pem --from 720h --out report.html`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return errors.New("--out is required: the report and its signature are files")
			}
			if format != "html" && format != "json" {
				return fmt.Errorf("--format %q: want html or json", format)
			}
			if sampleN < 0 || sampleN > 1000 {
				return fmt.Errorf("--sample %d: want 0 to 1000", sampleN)
			}
			now := time.Now()
			in := evidence.Inputs{Sample: sampleN, Seed: seed, Now: now}
			var err error
			if in.From, err = parseWhen(from, now); err != nil {
				return fmt.Errorf("--from: %w", err)
			}
			if in.To, err = parseWhen(to, now); err != nil {
				return fmt.Errorf("--to: %w", err)
			}
			if !in.From.IsZero() && !in.To.IsZero() && in.To.Before(in.From) {
				return errors.New("--to is before --from")
			}
			if srv.server != "" {
				if len(logs) > 0 {
					return withHint(errors.New("--server and --log are two sources of the same decisions"), "give one: --server reads every log the control plane holds")
				}
				as := &auditServer{serverFlags: srv, dataDir: dataDir}
				defer as.closeIdle()
				if in.Sources, err = serverSources(cmd.Context(), as); err != nil {
					return err
				}
				if in.Inventory, err = serverInventory(cmd.Context(), as); err != nil {
					return err
				}
				in.Server = srv.server
			} else if len(logs) == 0 {
				logs = []string{filepath.Join(dataDir, "log")}
			}
			for _, l := range logs {
				if err := checkLogDir(l); err != nil {
					return err
				}
				ks, err := loadTrustedKeys("", l, cmd.ErrOrStderr())
				if err != nil {
					return fmt.Errorf("%s: %w", l, err)
				}
				in.Sources = append(in.Sources, evidence.DirSource{Dir: l, Keys: ks})
			}
			if in.Server == "" {
				if in.Inventory, err = localInventory(cmd, dataDir); err != nil {
					return err
				}
				if in.Inventory != nil {
					in.DataDir = dataDir
				}
			}
			for _, c := range configs {
				cf, err := evidence.ReadConfig(c)
				if err != nil {
					return withHint(fmt.Errorf("--config: %w", err), "the file each replica's agentauthz serve --config reads")
				}
				in.Configs = append(in.Configs, cf)
			}
			if alerts != "" {
				if in.Alerts, err = anomaly.OpenStore(alerts).List(); err != nil {
					return err
				}
				in.HasAlert, in.AlertsFile = true, alerts
			}
			rep, err := evidence.Collect(cmd.Context(), in)
			if err != nil {
				return err
			}
			var buf bytes.Buffer
			if format == "json" {
				err = rep.WriteJSON(&buf)
			} else {
				err = rep.WriteHTML(&buf)
			}
			if err != nil {
				return err
			}
			if signKey == "" {
				signKey = evidence.SigningKeyPath(dataDir)
			}
			priv, err := evidence.LoadSigningKey(signKey)
			if err != nil {
				return err
			}
			signed, err := evidence.Sign(priv, buf.Bytes())
			if err != nil {
				return err
			}
			if err := signed.WriteFiles(out); err != nil {
				return err
			}
			c := rep.Counts()
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s (%d controls: %d evidence found, %d gaps, %d not applicable), %s.sig, %s.pub.pem\n",
				out, len(rep.Controls), c[evidence.StatusEvidence], c[evidence.StatusGap], c[evidence.StatusNA], out, out)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringArrayVar(&logs, "log", nil, "a replica's decision log directory (repeatable; default <data-dir>/log)")
	fl.StringVar(&dataDir, "data-dir", caEnvDataDir(), "the CA inventory and change log (env AGENTAUTHZ_DATA_DIR); with --server, where the default --server-ca and --sign-key are")
	fl.StringArrayVar(&configs, "config", nil, "a replica's serve configuration file (repeatable): its hash and the settings the controls depend on")
	fl.StringVar(&alerts, "alerts", "", "anomaly alerts file (agentauthz anomaly replay --alerts)")
	fl.StringVar(&out, "out", "", "report file (required); OUT.sig and OUT.pub.pem are written beside it")
	fl.StringVar(&format, "format", "html", "html (self-contained, printable) or json")
	fl.StringVar(&from, "from", "", "period start: RFC 3339, or a duration ago like 720h")
	fl.StringVar(&to, "to", "", "period end: RFC 3339, or a duration ago")
	fl.IntVar(&sampleN, "sample", 10, "decisions to sample for re-performance")
	fl.Uint64Var(&seed, "seed", 1, "seed of the sample")
	srv.add(cmd)
	fl.StringVar(&signKey, "sign-key", "", "Ed25519 private key (PKCS#8 PEM) that signs the report (default <data-dir>/keys/report.key)")
	return cmd
}

// localInventory reads the CA inventory and change log of dataDir; nil, with
// a warning, when there is none.
func localInventory(cmd *cobra.Command, dataDir string) (*evidence.Inventory, error) {
	if st, err := os.Stat(filepath.Join(dataDir, "inventory.db")); !ca.IsPostgres(os.Getenv("AGENTAUTHZ_STORE")) && (err != nil || !st.Mode().IsRegular()) {
		fmt.Fprintf(cmd.ErrOrStderr(), "agentauthz: warning: no CA inventory in %s: the lifecycle controls will be gaps\n", dataDir)
		return nil, nil
	}
	a, err := caOpen(dataDir, ca.MustExist())
	if err != nil {
		return nil, fmt.Errorf("CA inventory: %w", err)
	}
	defer a.Close()
	return evidence.ReadInventory(a, dataDir)
}

func newAuditReportVerifyCmd() *cobra.Command {
	var sig, pub string
	cmd := &cobra.Command{
		Use:   "report-verify REPORT",
		Short: "Check an evidence pack's signature (exit 0 valid, 1 invalid, 2 error)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if sig == "" {
				sig = args[0] + ".sig"
			}
			if pub == "" {
				pub = args[0] + ".pub.pem"
			}
			data, err := durable.ReadFile(args[0], 1<<30)
			if err != nil {
				return err
			}
			s, err := durable.ReadFile(sig, 1024)
			if err != nil {
				return err
			}
			p, err := durable.ReadFile(pub, 64<<10)
			if err != nil {
				return err
			}
			if err := evidence.Verify(data, s, p); errors.Is(err, evidence.ErrSignature) {
				fmt.Fprintf(cmd.OutOrStdout(), "FAILED: %s does not match its signature\n", args[0])
				return errNo
			} else if err != nil {
				return fmt.Errorf("%s: %w", pub, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok: %s is signed by the key in %s\n", args[0], pub)
			return nil
		},
	}
	cmd.Flags().StringVar(&sig, "sig", "", "signature file (default REPORT.sig)")
	cmd.Flags().StringVar(&pub, "pubkey", "", "public key PEM (default REPORT.pub.pem); pass your own copy to trust it")
	return cmd
}
