package cli

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/agentauthz/agentauthz/internal/ca"
	"github.com/agentauthz/agentauthz/internal/termtext"
)

// verifyChangeLog is `audit verify --changelog DATA_DIR`: the control
// plane's signed change log, checked like a decision log.
func verifyChangeLog(cmd *cobra.Command, dataDir, pubkey string, asJSON bool) error {
	var keys []ed25519.PublicKey
	if pubkey == "" {
		fmt.Fprintf(cmd.ErrOrStderr(), "agentauthz: warning: trusting the change-log keys found beside the log (%s and retired/); pass --pubkey with a copy of the first key kept elsewhere\n",
			ca.ChangeLogKeyPath(dataDir))
		var err error
		if keys, err = ca.ChangeLogKeys(dataDir); err != nil {
			return withHint(err, "the public key is <data-dir>/changelog/ed25519.pub of the control plane")
		}
	} else {
		b, err := os.ReadFile(pubkey)
		if err != nil {
			return withHint(fmt.Errorf("change-log key: %w", err), "the public key is <data-dir>/changelog/ed25519.pub of the control plane")
		}
		pub, err := ca.ParseChangeLogKey(b)
		if err != nil {
			return withHint(fmt.Errorf("change-log key %s: %w", pubkey, err), "pass the PEM public key <data-dir>/changelog/ed25519.pub")
		}
		keys = append(keys, pub)
	}
	a, err := caOpenInventory(dataDir)
	if err != nil {
		return err
	}
	defer a.Close()
	res, err := a.VerifyChangeLog(keys...)
	if err != nil {
		return caError(err, dataDir)
	}
	out := cmd.OutOrStdout()
	switch {
	case asJSON:
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return err
		}
	case res.Problem != nil:
		p := res.Problem
		fmt.Fprintf(out, "FAIL seq %d: %s: %s\n", p.Seq, p.Kind, termtext.Escape(p.Detail))
		if res.Events > 0 {
			fmt.Fprintf(out, "changes 1..%d verified before it\n", res.LastSeq)
		}
	default:
		fmt.Fprintf(out, "ok: %d changes (%d signed, %d from before signing), seq 1..%d, head %s, key %s\n",
			res.Events, res.Signed, res.Unsigned, res.LastSeq, res.Head, strings.Join(res.Keys, " then "))
	}
	if res.Problem != nil {
		return errNo
	}
	return nil
}
