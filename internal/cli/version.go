package cli

import (
	"fmt"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/deskrun/deskrun/internal/wire"
)

func newVersionCmd(a *app) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "version",
		Short: "Print deskrun's version and agent protocol version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if asJSON {
				return printJSON(a.io.Out, map[string]any{"version": Version, "protocol_version": wire.ProtocolVersion, "go": runtime.Version()})
			}
			fmt.Fprintf(a.io.Out, "deskrun %s (agent protocol %d, %s)\n", Version, wire.ProtocolVersion, runtime.Version())
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}
