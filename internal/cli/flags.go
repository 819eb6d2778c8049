package cli

import (
	"fmt"
	"strings"

	"github.com/agnivade/levenshtein"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// flagError turns pflag's "unknown flag: --crt" into an error that names a
// close flag, with a hint pointing at the command's help.
func flagError(c *cobra.Command, err error) error {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "unknown flag: --"); ok {
		if s := closestFlag(c, name); s != "" {
			msg += fmt.Sprintf(" (did you mean --%s?)", s)
		}
	}
	return withHint(fmt.Errorf("%s", msg), "see %s --help", c.CommandPath())
}

// closestFlag returns the command's flag closest to name, or "" when none
// is within two edits (or a prefix of it).
func closestFlag(c *cobra.Command, name string) string {
	best, bestD := "", 3
	c.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Hidden {
			return
		}
		d := levenshtein.ComputeDistance(name, f.Name)
		if strings.HasPrefix(f.Name, name) && len(name) >= 3 {
			d = min(d, 1)
		}
		if d < bestD {
			best, bestD = f.Name, d
		}
	})
	return best
}

// plainBool hides pflag's IsBoolFlag so that help shows "-h, --help"
// rather than "--help[=true|false]"; `--flag` and `--flag=false` parse as
// before, through NoOptDefVal.
type plainBool struct{ pflag.Value }

// tidyBoolFlags applies plainBool to every boolean flag of c and its
// subcommands, the help and version flags included.
func tidyBoolFlags(c *cobra.Command) {
	c.InitDefaultHelpFlag()
	c.InitDefaultVersionFlag()
	for _, fs := range []*pflag.FlagSet{c.Flags(), c.PersistentFlags()} {
		fs.VisitAll(func(f *pflag.Flag) {
			if f.Value.Type() == "bool" {
				if _, done := f.Value.(plainBool); !done {
					f.Value = plainBool{f.Value}
				}
			}
		})
	}
	for _, sub := range c.Commands() {
		tidyBoolFlags(sub)
	}
}
