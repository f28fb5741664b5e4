package cli

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/deskrun/deskrun/internal/runas"
)

// newBeChildCmd is the hidden `deskrun be-child` family: helper processes
// the agent starts from its own binary. Never started by hand; the parent
// speaks to the child over inherited file descriptors, not argv or the
// environment. (Commands run as a user need no such helper: runas starts
// them with the Go runtime's fork/exec.)
func newBeChildCmd(_ *app) *cobra.Command {
	c := &cobra.Command{
		Use:    "be-child",
		Short:  "Internal: helper processes the agent starts from its own binary",
		Hidden: true,
		Args:   cobra.NoArgs,
	}
	c.AddCommand(&cobra.Command{
		Use:                "reaper",
		Short:              "Internal: kill the agent's runs when the agent dies (see runas.Reaper)",
		Args:               cobra.NoArgs,
		DisableFlagParsing: true,
		RunE: func(*cobra.Command, []string) error {
			os.Exit(runas.BeReaper())
			return nil
		},
	})
	return c
}
