package cli

import (
	"errors"

	"github.com/spf13/cobra"
)

// newCAServeCmd is `agentauthz ca serve`: the revocation publisher. It is
// registered by ca.go.
func newCAServeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "serve",
		Short: "Publish each tenant's CRL and a revocation watch stream over HTTP",
		RunE: func(*cobra.Command, []string) error {
			return errors.New("ca serve: not implemented yet")
		},
	}
}
