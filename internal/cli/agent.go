package cli

import (
	"errors"

	"github.com/spf13/cobra"
)

func newAgentCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "agent",
		Hidden: true,
		RunE: func(*cobra.Command, []string) error {
			return errors.New("agent: not implemented yet")
		},
	}
}
