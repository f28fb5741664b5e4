package cli

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/deskrun/deskrun/internal/runas"
)

// newBeChildCmd is the hidden `deskrun be-child` family: modes in which
// the agent re-executes itself to do one privileged-then-dropped thing.
// Never started by hand; the parent speaks to the child over inherited
// file descriptors, not argv or the environment.
func newBeChildCmd(_ *app) *cobra.Command {
	c := &cobra.Command{
		Use:    "be-child",
		Short:  "Internal: modes the agent re-executes itself in",
		Hidden: true,
		Args:   cobra.NoArgs,
	}
	c.AddCommand(&cobra.Command{
		Use:                "runas",
		Short:              "Internal: drop to a user and run a command (see internal/runas)",
		Args:               cobra.NoArgs,
		DisableFlagParsing: true,
		RunE: func(*cobra.Command, []string) error {
			// BeChild returns only when it could not start the command; on
			// success the command has replaced this process.
			os.Exit(runas.BeChild())
			return nil
		},
	})
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
