package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	opaversion "github.com/open-policy-agent/opa/v1/version"
	"github.com/spf13/cobra"
)

// buildDate is set by `make build` and `make release` (-ldflags -X); a plain
// go build or go install leaves it empty: Go records no build time itself.
var buildDate string

// buildCommit is the commit `make build` saw, for builds that Go's VCS
// stamping misses (a git worktree, GOFLAGS=-buildvcs=false).
var buildCommit string

// versionInfo is what `agentauthz version` reports, all from the binary's
// own build information (runtime/debug.ReadBuildInfo).
type versionInfo struct {
	Version    string `json:"version"`
	Commit     string `json:"commit,omitempty"`
	CommitTime string `json:"commit_time,omitempty"`
	Modified   bool   `json:"modified,omitempty"`
	BuildDate  string `json:"build_date,omitempty"`
	Go         string `json:"go"`
	Platform   string `json:"platform"`
	OPA        string `json:"opa"`
}

const opaModule = "github.com/open-policy-agent/opa"

func readVersion() versionInfo {
	// OPA's own version string, for binaries whose build information
	// lists no modules (test binaries).
	v := versionInfo{Version: "unknown", BuildDate: buildDate, Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH, OPA: "v" + opaversion.Version}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	v.Version = bi.Main.Version
	for _, d := range bi.Deps {
		if d.Path == opaModule {
			v.OPA = d.Version
			if d.Replace != nil {
				v.OPA = d.Replace.Version
			}
		}
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Commit = s.Value
		case "vcs.time":
			v.CommitTime = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	if v.Commit == "" {
		v.Commit = buildCommit
	}
	return v
}

// short is the one-line form, for --version and logs.
func (v versionInfo) short() string {
	s := v.Version
	if v.Commit != "" {
		c := v.Commit
		if len(c) > 12 {
			c = c[:12]
		}
		s += " (" + c
		if v.Modified {
			s += ", modified"
		}
		s += ")"
	}
	return s
}

func (v versionInfo) print(w io.Writer) {
	dash := func(s, none string) string {
		if s == "" {
			return none
		}
		return s
	}
	commit := dash(v.Commit, "unknown (built without VCS information)")
	if v.Modified {
		commit += " (with uncommitted changes)"
	}
	fmt.Fprintf(w, "agentauthz %s\n", v.Version)
	fmt.Fprintf(w, "commit:      %s\n", commit)
	fmt.Fprintf(w, "commit time: %s\n", dash(v.CommitTime, "unknown"))
	fmt.Fprintf(w, "build date:  %s\n", dash(v.BuildDate, "unknown (not built by make)"))
	fmt.Fprintf(w, "go:          %s %s\n", v.Go, v.Platform)
	fmt.Fprintf(w, "opa:         %s\n", v.OPA)
}

func newVersionCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the version, commit, build date, and the Go and OPA versions of this binary",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := readVersion()
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(v)
			}
			v.print(cmd.OutOrStdout())
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the version information as JSON")
	return cmd
}
