// Package cli is the agentauthz command line: one cobra command tree whose
// subcommands are thin wrappers over the internal packages.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// Exit codes. Commands that answer a yes/no question (check, audit verify,
// receipt verify) exit 1 for "no" and 2 for an error.
const (
	ExitOK    = 0
	ExitNo    = 1
	ExitError = 2
)

// ExitError makes a command exit with Code without printing an error; the
// command has already said what happened.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// errNo is returned by commands whose answer is "no" (deny, verification
// failed) after they printed it.
var errNo error = exitError{ExitNo}

// hintError carries a hint printed after the error, age style.
type hintError struct {
	err  error
	hint string
}

func (e hintError) Error() string { return e.err.Error() }
func (e hintError) Unwrap() error { return e.err }

// withHint attaches a hint to err.
func withHint(err error, format string, args ...any) error {
	return hintError{err: err, hint: fmt.Sprintf(format, args...)}
}

// Main runs the command line with the process's arguments and returns the
// exit code.
func Main() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return Run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
}

// Run executes one command line and maps its error to an exit code in one place.
func Run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := newRoot()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	return reportError(stderr, err)
}

// reportError prints err (and its hint) the one way every command does and
// returns the exit code.
func reportError(stderr io.Writer, err error) int {
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	fmt.Fprintf(stderr, "agentauthz: error: %v\n", err)
	var he hintError
	if errors.As(err, &he) {
		fmt.Fprintf(stderr, "agentauthz: hint: %s\n", he.hint)
	}
	return ExitError
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "agentauthz",
		Short:         "Authorization decisions and signed records for AI agents behind Envoy and Istio",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       readVersion().short(),
	}
	var version strings.Builder
	readVersion().print(&version) // --version prints what `version` does
	root.SetVersionTemplate(version.String())
	root.SetFlagErrorFunc(flagError)
	root.AddCommand(
		newServeCmd(),
		newCheckCmd(),
		newCACmd(),
		newControlCmd(),
		newOperatorCmd(),
		newAgentCmd(),
		newAuditCmd(),
		newReceiptCmd(),
		newResponseCmd(),
		newDemoCmd(),
		newBenchCmd(),
		newPolicyCmd(),
		newAnomalyCmd(),
		newAlertsCmd(),
		newVersionCmd(),
	)
	tidyBoolFlags(root)
	return root
}
