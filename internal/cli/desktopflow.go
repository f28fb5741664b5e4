package cli

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/deskrun/deskrun/internal/desktopflow"
	"github.com/deskrun/deskrun/internal/wire"
)

func newDesktopFlowCmd(a *app) *cobra.Command {
	c := &cobra.Command{
		Use:   "desktopflow",
		Short: "Desktop flows: push a package, run it, list, show, delete",
		Long: `A desktop flow is a directory with a desktopflow.yaml (name, run, inputs, outputs,
desktop, timeout) and the files it runs. Pushing it packs the directory here, checks
the manifest (errors name the file, line and column), and uploads the package; the
server keeps every version, addressed by the SHA-256 of its content.`,
	}
	c.AddCommand(newDesktopFlowPushCmd(a), newDesktopFlowRunCmd(a), newDesktopFlowListCmd(a), newDesktopFlowShowCmd(a), newDesktopFlowDeleteCmd(a))
	return c
}

// pushResult is what push prints with --json.
type pushResult struct {
	DesktopFlow wire.DesktopFlow `json:"desktop_flow"`
	// Created is false when the package was the latest version already.
	Created bool `json:"created"`
}

func newDesktopFlowPushCmd(a *app) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "push DIR",
		Short: "Pack a flow's directory and upload it as the flow's next version",
		Long: `Pack DIR (desktopflow.yaml and its files; .git is left out, symbolic links are
refused) into a deterministic tar.gz, check it, and upload it. Pushing the same content
as the latest version again changes nothing.`,
		Example: `  deskrun desktopflow push examples/hello`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// Pack first: a schema error is shown before any server is asked.
			archive, _, _, err := desktopflow.Pack(args[0])
			if err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			f, created, err := cl.PushDesktopFlow(cmd.Context(), archive)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.io.Out, pushResult{DesktopFlow: *f, Created: created})
			}
			if created {
				fmt.Fprintf(a.io.Out, "pushed %s version %d\n", f.Name, f.Version)
			} else {
				fmt.Fprintf(a.io.Out, "%s is unchanged: version %d has this content\n", f.Name, f.Version)
			}
			fmt.Fprintf(a.io.Out, "  digest: %s\n  size:   %s\n", f.Digest, byteSize(f.Size))
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func newDesktopFlowListCmd(a *app) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use: "list", Short: "List desktop flows (their latest version)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			fs, err := cl.DesktopFlows(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.io.Out, wire.DesktopFlowList{DesktopFlows: fs})
			}
			rows := make([][]string, 0, len(fs))
			for _, f := range fs {
				m := manifestOf(f)
				rows = append(rows, []string{f.Name, strconv.Itoa(f.Version), yesNo(m.Desktop), strconv.Itoa(len(m.Inputs)),
					byteSize(f.Size), ago(f.CreatedAt), shortDigest(f.Digest)})
			}
			table(a.io.Out, "NAME\tVERSION\tDESKTOP\tINPUTS\tSIZE\tPUSHED\tDIGEST", rows)
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func newDesktopFlowShowCmd(a *app) *cobra.Command {
	var asJSON bool
	var version int
	c := &cobra.Command{
		Use: "show NAME", Short: "Show a desktop flow: inputs, outputs, run, versions", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if version < 0 {
				return usagef("--version must be a number from 1")
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			detail, err := cl.DesktopFlow(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			f := &detail.Latest
			if version > 0 {
				if f, err = cl.DesktopFlowVersion(cmd.Context(), args[0], version); err != nil {
					return err
				}
			}
			if asJSON {
				if version > 0 {
					return printJSON(a.io.Out, f)
				}
				return printJSON(a.io.Out, detail)
			}
			a.printDesktopFlow(f, detail)
			return nil
		},
	}
	c.Flags().IntVar(&version, "version", 0, "show this version (default: the latest)")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func newDesktopFlowDeleteCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use: "delete NAME", Short: "Delete a desktop flow, every version of it", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			if err := cl.DeleteDesktopFlow(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(a.io.Out, "deleted desktop flow %s\n", args[0])
			return nil
		},
	}
}

func (a *app) printDesktopFlow(f *wire.DesktopFlow, detail *wire.DesktopFlowDetail) {
	w := a.io.Out
	m := manifestOf(*f)
	fmt.Fprintf(w, "%-13s %s (version %d of %d)\n", "flow:", f.Name, f.Version, detail.Latest.Version)
	if m.Description != "" {
		fmt.Fprintf(w, "%-13s %s\n", "description:", m.Description)
	}
	fmt.Fprintf(w, "%-13s %s\n", "run:", indentRest(m.Run, strings.Repeat(" ", 14)))
	fmt.Fprintf(w, "%-13s %s\n", "desktop:", yesNo(m.Desktop))
	fmt.Fprintf(w, "%-13s %s\n", "timeout:", timeoutOf(m))
	fmt.Fprintf(w, "%-13s %s (%s)\n", "package:", f.Digest, byteSize(f.Size))
	pushed := ago(f.CreatedAt)
	if f.CreatedBy != "" {
		pushed += " by " + f.CreatedBy
	}
	fmt.Fprintf(w, "%-13s %s\n", "pushed:", pushed)

	fmt.Fprintln(w, "\ninputs:")
	if len(m.Inputs) == 0 {
		fmt.Fprintln(w, "  none")
	} else {
		rows := make([][]string, 0, len(m.Inputs))
		for _, p := range m.Inputs {
			def := "-"
			if p.Default != nil {
				def = desktopflow.FormatValue(p.Default)
			}
			rows = append(rows, []string{"  " + p.Name, string(p.Type), yesNo(p.Required), def, p.Description})
		}
		table(w, "  NAME\tTYPE\tREQUIRED\tDEFAULT\tDESCRIPTION", rows)
	}
	fmt.Fprintln(w, "\noutputs:")
	if len(m.Outputs) == 0 {
		fmt.Fprintln(w, "  none")
	} else {
		rows := make([][]string, 0, len(m.Outputs))
		for _, p := range m.Outputs {
			rows = append(rows, []string{"  " + p.Name, string(p.Type), p.Description})
		}
		table(w, "  NAME\tTYPE\tDESCRIPTION", rows)
	}
	fmt.Fprintln(w, "\nversions:")
	rows := make([][]string, 0, len(detail.Versions))
	for _, v := range detail.Versions {
		rows = append(rows, []string{"  " + strconv.Itoa(v.Version), shortDigest(v.Digest), byteSize(v.Size), ago(v.CreatedAt), v.CreatedBy})
	}
	table(w, "  VERSION\tDIGEST\tSIZE\tPUSHED\tBY", rows)
}

// manifestOf decodes the manifest the server parsed; a manifest this
// client cannot read shows as empty rather than failing the command.
func manifestOf(f wire.DesktopFlow) desktopflow.Manifest {
	var m desktopflow.Manifest
	_ = json.Unmarshal(f.Manifest, &m)
	return m
}

func timeoutOf(m desktopflow.Manifest) string {
	if m.Timeout == 0 {
		return "-"
	}
	b, _ := m.Timeout.MarshalText()
	return string(b)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// shortDigest is the first 12 hex digits, as in `docker images`.
func shortDigest(d string) string {
	if h, ok := desktopflow.ParseDigest(d); ok {
		return h[:12]
	}
	return d
}

func byteSize(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
