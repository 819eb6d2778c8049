package cli

import (
	"encoding/hex"
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
		Short: "Check decision receipts (x-agent-receipt) offline with the log's public key",
	}
	cmd.AddCommand(newReceiptVerifyCmd())
	return cmd
}

func newReceiptVerifyCmd() *cobra.Command {
	var pubkey, recordFile string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "verify RECEIPT",
		Short: "Verify a receipt: its inclusion proof and the signature of its checkpoint",
		Long: `verify checks one receipt (the x-agent-receipt value, given as the argument, as @FILE, or - for
stdin) against the log's public key(s) (--pubkey: PEM, JWKS or note verifier keys, from agentauthz
audit pubkey): the inclusion proof leads from the record's hash to the batch root in the
checkpoint, and the checkpoint's signed note verifies. With --record FILE (the record line, as
audit prove prints it) it also checks that the record is the one the receipt names. Exit 0
valid, 1 invalid, 2 error. That the checkpoint is still in the log, and consistent with later
ones, is checked with audit verify and audit consistency. A v1 receipt (a JWS) is still checked
as the signed record it is.`,
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
			arg, err := receiptArg(args[0], cmd.InOrStdin())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if strings.HasPrefix(arg, "ey") && strings.Count(arg, ".") == 2 {
				return verifyV1Receipt(out, arg, ks, asJSON)
			}
			var record []byte
			if recordFile != "" {
				if record, err = readArgFile(recordFile); err != nil {
					return fmt.Errorf("read record: %w", err)
				}
				record = []byte(strings.TrimRight(string(record), "\r\n"))
			}
			r, err := decisionlog.VerifyReceipt(arg, ks)
			if err == nil && record != nil && decisionlog.LeafHash(record) != r.RecordHash {
				err = errors.New("the record's hash is not the receipt's record hash: another record")
			}
			if err != nil {
				fmt.Fprintf(out, "invalid: %v\n", err)
				return errNo
			}
			res := receiptResult{Log: r.Checkpoint.Origin, Index: r.Index, RecordHash: hex.EncodeToString(r.RecordHash[:]),
				TreeSize: r.Checkpoint.Size, BatchStart: r.Checkpoint.BatchStart, Checkpoint: string(r.SignedCheckpoint()),
				RecordChecked: record != nil}
			if asJSON {
				return printJSON(out, res)
			}
			fmt.Fprintf(out, "valid: record %d of log %s, record hash %s\n", res.Index, res.Log, res.RecordHash)
			fmt.Fprintf(out, "in the batch %d..%d of the checkpoint of tree size %d, signed by the log's key\n", res.BatchStart, res.TreeSize-1, res.TreeSize)
			if record != nil {
				rec, err := decisionlog.DecodeRecordLine(record)
				if err == nil {
					printWho(out, rec)
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&pubkey, "pubkey", "", "the log's public key(s): PEM, JWKS or note verifier keys")
	cmd.Flags().StringVar(&recordFile, "record", "", "the record line the receipt should name (from audit prove or the log)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

// receiptResult is what receipt verify --json prints.
type receiptResult struct {
	Log           string `json:"log"`
	Index         uint64 `json:"index"`
	RecordHash    string `json:"record_hash"`
	TreeSize      uint64 `json:"tree_size"`
	BatchStart    uint64 `json:"batch_start"`
	Checkpoint    string `json:"checkpoint"`
	RecordChecked bool   `json:"record_checked"`
}

func verifyV1Receipt(out io.Writer, jws string, ks decisionlog.KeySet, asJSON bool) error {
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
	fmt.Fprintf(out, "valid: v1 record %d of log %s signed by %s\n", rec.Seq, rec.Log, rec.KeyID)
	printWho(out, rec)
	return nil
}

// receiptArg returns the JWS from the argument: literal, @file or - (stdin).
func receiptArg(arg string, stdin io.Reader) (string, error) {
	var data []byte
	var err error
	switch {
	case arg == "-":
		data, err = io.ReadAll(io.LimitReader(stdin, 1<<20))
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
