package cli

import (
	"errors"

	"github.com/spf13/cobra"
)

func newCACmd() *cobra.Command {
	return &cobra.Command{
		Use:    "ca",
		Hidden: true,
		RunE: func(*cobra.Command, []string) error {
			return errors.New("ca: not implemented yet")
		},
	}
}
