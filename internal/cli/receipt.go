package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/agentauthz/agentauthz/internal/decisionlog"
)

func newReceiptCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "receipt",
		Short: "Check decision receipts (the signed record sent upstream in x-agent-receipt)",
	}
	cmd.AddCommand(newReceiptVerifyCmd())
	return cmd
}

func newReceiptVerifyCmd() *cobra.Command {
	var pubkey string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "verify RECEIPT",
		Short: "Verify a receipt's signature and print its record",
		Long: `verify checks one receipt (a compact JWS, given as the argument, as @FILE, or - for stdin)
against the log's public key(s) (--pubkey: PEM or JWKS, from agentauthz audit pubkey) and prints
the signed record. Exit 0 valid, 1 invalid, 2 error. A valid receipt proves the log's key signed
this record; that it is still in the log is checked with audit verify.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if pubkey == "" {
				return withHint(errors.New("--pubkey is required"), "export the log's keys with: agentauthz audit pubkey --data-dir DIR > log-keys.jwks")
			}
			data, err := readArgFile(pubkey)
			if err != nil {
				return fmt.Errorf("read public key: %w", err)
			}
			ks, err := decisionlog.ParseKeySet(data)
			if err != nil {
				return fmt.Errorf("public key %s: %w", pubkey, err)
			}
			jws, err := receiptArg(args[0], cmd.InOrStdin())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			rec, err := decisionlog.VerifyRecord(jws, ks)
			if err != nil {
				fmt.Fprintf(out, "invalid: %v\n", err)
				return errNo
			}
			if asJSON {
				b, err := json.MarshalIndent(rec, "", "  ")
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "%s\n", b)
				return nil
			}
			fmt.Fprintf(out, "valid: record %d of log %s signed by %s\n", rec.Seq, rec.Log, rec.KeyID)
			printWho(out, rec)
			return nil
		},
	}
	cmd.Flags().StringVar(&pubkey, "pubkey", "", "the log's public key(s): PEM or JWKS")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the record as JSON")
	return cmd
}

// receiptArg returns the JWS from the argument: literal, @file or - (stdin).
func receiptArg(arg string, stdin io.Reader) (string, error) {
	var data []byte
	var err error
	switch {
	case arg == "-":
		data, err = io.ReadAll(io.LimitReader(stdin, decisionlog.MaxRecordBytes+1024))
	case strings.HasPrefix(arg, "@"):
		data, err = readArgFile(arg[1:])
	default:
		data = []byte(arg)
	}
	if err != nil {
		return "", fmt.Errorf("read receipt: %w", err)
	}
	s := strings.TrimSpace(string(data))
	if s == "" {
		return "", errors.New("empty receipt")
	}
	return s, nil
}
