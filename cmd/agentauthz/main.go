// Command agentauthz is the agent authorization service and its tooling.
package main

import (
	"os"

	"github.com/agentauthz/agentauthz/internal/cli"
)

func main() { os.Exit(cli.Main()) }
