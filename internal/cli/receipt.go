package cli

import (
	"errors"

	"github.com/spf13/cobra"
)

func newReceiptCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "receipt",
		Hidden: true,
		RunE: func(*cobra.Command, []string) error {
			return errors.New("receipt: not implemented yet")
		},
	}
}
