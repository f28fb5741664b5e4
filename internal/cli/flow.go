package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/client"
	"github.com/deskrun/deskrun/internal/wire"
)

// newFlowCmd is `deskrun flow`: cloud flows.
func newFlowCmd(a *app) *cobra.Command {
	c := &cobra.Command{Use: "flow", Short: "Apply, list, show, delete and run cloud flows"}
	var applyJSON bool
	apply := &cobra.Command{
		Use: "apply FILE", Short: "Check a flow definition (YAML) and store it as a new version", Args: cobra.ExactArgs(1),
		Example: "  deskrun flow apply greet.yaml\n  deskrun flow apply greet.yaml --json",
		RunE: func(cmd *cobra.Command, args []string) error {
			text, err := os.ReadFile(args[0])
			if err != nil {
				return &deskrun.Error{Code: deskrun.CodeFlowInvalid, Message: err.Error(),
					Resolution: "Give the path of a flow definition (YAML), such as examples/hello.flow.yaml."}
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var out wire.Flow
			if err := cl.Do(cmd.Context(), http.MethodPost, "/api/v1/flows", wire.FlowApply{File: filepath.Base(args[0]), Definition: string(text)}, &out); err != nil {
				return err
			}
			if applyJSON {
				return printJSON(a.io.Out, out)
			}
			verb := "unchanged"
			if out.Created {
				verb = "applied"
			}
			fmt.Fprintf(a.io.Out, "flow %s v%d %s\n", out.Name, out.Version, verb)
			return nil
		},
	}
	apply.Flags().BoolVar(&applyJSON, "json", false, "print JSON")

	var listJSON bool
	list := &cobra.Command{
		Use: "list", Short: "List cloud flows", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			var out wire.FlowList
			if err := cl.Do(cmd.Context(), http.MethodGet, "/api/v1/flows", nil, &out); err != nil {
				return err
			}
			if listJSON {
				return printJSON(a.io.Out, out)
			}
			rows := make([][]string, 0, len(out.Flows))
			for _, f := range out.Flows {
				rows = append(rows, []string{f.Name, fmt.Sprint(f.Version), f.Schedule, f.HookID, strings.Join(f.Steps, " ")})
			}
			table(a.io.Out, "NAME\tVERSION\tSCHEDULE\tWEBHOOK\tSTEPS", rows)
			return nil
		},
	}
	list.Flags().BoolVar(&listJSON, "json", false, "print JSON")

	var showJSON bool
	var version int
	show := &cobra.Command{
		Use: "show NAME", Short: "Show a flow and its definition", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if version < 0 {
				return usagef("--version must be a number from 1")
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			p := "/api/v1/flows/" + url.PathEscape(args[0])
			if version > 0 {
				p += fmt.Sprintf("?version=%d", version)
			}
			var out wire.Flow
			if err := cl.Do(cmd.Context(), http.MethodGet, p, nil, &out); err != nil {
				return err
			}
			if showJSON {
				return printJSON(a.io.Out, out)
			}
			fmt.Fprintf(a.io.Out, "flow %s v%d (applied %s)\n---\n%s", out.Name, out.Version, out.CreatedAt.Local().Format(time.DateTime), out.Definition)
			return nil
		},
	}
	show.Flags().BoolVar(&showJSON, "json", false, "print JSON")
	show.Flags().IntVar(&version, "version", 0, "version (default: the latest)")

	var delJSON bool
	del := &cobra.Command{
		Use: "delete NAME", Short: "Delete a flow (its runs stay as history)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			if err := cl.Do(cmd.Context(), http.MethodDelete, "/api/v1/flows/"+url.PathEscape(args[0]), nil, nil); err != nil {
				return err
			}
			if delJSON {
				return printJSON(a.io.Out, map[string]string{"deleted": args[0]})
			}
			fmt.Fprintf(a.io.Out, "flow %s deleted\n", args[0])
			return nil
		},
	}
	del.Flags().BoolVar(&delJSON, "json", false, "print JSON")

	var inputs []string
	var wait time.Duration
	var runJSON bool
	run := &cobra.Command{
		Use: "run NAME [--input k=v]... [--wait D]", Short: "Run a cloud flow", Args: cobra.ExactArgs(1),
		Example: "  deskrun flow run greet --input who=Ada --wait 5m",
		RunE: func(cmd *cobra.Command, args []string) error {
			given, err := parseInputs(inputs)
			if err != nil {
				return err
			}
			req := wire.FlowRunCreate{Inputs: make(map[string]any, len(given))}
			for k, v := range given {
				req.Inputs[k] = v
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			p := "/api/v1/flows/" + url.PathEscape(args[0]) + "/runs"
			if wait > 0 {
				p += "?wait=" + wait.String()
			}
			var out wire.FlowRun
			if err := cl.Do(cmd.Context(), http.MethodPost, p, req, &out); err != nil {
				return err
			}
			return a.printFlowRun(&out, runJSON, wait > 0)
		},
	}
	run.Flags().StringArrayVar(&inputs, "input", nil, "input NAME=VALUE (repeatable; converted to the input's declared type)")
	run.Flags().DurationVar(&wait, "wait", 0, "wait up to this long for the run to end")
	run.Flags().BoolVar(&runJSON, "json", false, "print JSON")

	c.AddCommand(apply, list, show, del, run)
	return c
}

// showFlowRun is `deskrun run show f_…`.
func (a *app) showFlowRun(ctx context.Context, cl *client.Client, id string, wait time.Duration, asJSON bool) error {
	p := "/api/v1/flowruns/" + url.PathEscape(id)
	if wait > 0 {
		p += "?wait=" + wait.String()
	}
	var out wire.FlowRun
	if err := cl.Do(ctx, http.MethodGet, p, nil, &out); err != nil {
		return err
	}
	return a.printFlowRun(&out, asJSON, false)
}

// printFlowRun prints a flow run with its step timeline; a run that ended
// failed is an error (exit 1) when the caller waited for it.
func (a *app) printFlowRun(r *wire.FlowRun, asJSON, failIfFailed bool) error {
	if asJSON {
		if err := printJSON(a.io.Out, r); err != nil {
			return err
		}
	} else {
		w := a.io.Out
		fmt.Fprintf(w, "flow run %s: %s v%d %s\n", r.ID, r.Flow, r.Version, r.State)
		if len(r.Trigger) > 0 {
			fmt.Fprintf(w, "trigger: %s\n", r.Trigger)
		}
		if len(r.Inputs) > 0 {
			fmt.Fprintf(w, "inputs:  %s\n", r.Inputs)
		}
		for _, s := range r.Steps {
			line := fmt.Sprintf("  %-16s #%d %-7s %-9s %6dms", s.StepID, s.Attempt, s.Kind, s.State, s.DurationMS)
			if s.DesktopRunID != "" {
				line += " " + s.DesktopRunID
			}
			if s.Error != nil {
				line += "  " + s.Error.Code + ": " + s.Error.Message
			}
			fmt.Fprintln(w, line)
		}
		if len(r.Outputs) > 0 {
			fmt.Fprintf(w, "outputs: %s\n", r.Outputs)
		}
	}
	if failIfFailed && r.State == string(deskrun.FlowRunFailed) && r.Error != nil {
		return r.Error
	}
	return nil
}

// newSecretCmd is `deskrun secret`: the server's secret store.
func newSecretCmd(a *app) *cobra.Command {
	c := &cobra.Command{Use: "secret", Short: "Set, list and delete the server's secrets (for flows' http steps and webhooks)"}
	var stdin, setJSON bool
	set := &cobra.Command{
		Use: "set NAME --value-stdin", Short: "Store a secret, read from stdin", Args: cobra.ExactArgs(1),
		Example: "  printf '%s' \"$TOKEN\" | deskrun secret set api_token --value-stdin",
		RunE: func(cmd *cobra.Command, args []string) error {
			if !stdin {
				return usagef("--value-stdin is required: a secret is never passed on the command line")
			}
			b, err := io.ReadAll(io.LimitReader(a.io.In, 64<<10+1))
			if err != nil {
				return err
			}
			v := strings.TrimRight(string(b), "\r\n")
			cl, err := a.client()
			if err != nil {
				return err
			}
			if err := cl.Do(cmd.Context(), http.MethodPut, "/api/v1/secrets/"+url.PathEscape(args[0]), wire.SecretSet{Value: v}, nil); err != nil {
				return err
			}
			if setJSON {
				return printJSON(a.io.Out, map[string]string{"name": args[0]})
			}
			fmt.Fprintf(a.io.Out, "secret %s stored\n", args[0])
			return nil
		},
	}
	set.Flags().BoolVar(&stdin, "value-stdin", false, "read the value from stdin")
	set.Flags().BoolVar(&setJSON, "json", false, "print JSON")
	var listJSON bool
	list := &cobra.Command{
		Use: "list", Short: "List secret names (never values)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			var out wire.SecretList
			if err := cl.Do(cmd.Context(), http.MethodGet, "/api/v1/secrets", nil, &out); err != nil {
				return err
			}
			if listJSON {
				return printJSON(a.io.Out, out)
			}
			rows := make([][]string, 0, len(out.Secrets))
			for _, s := range out.Secrets {
				rows = append(rows, []string{s.Name, s.UpdatedAt.Local().Format(time.DateTime)})
			}
			table(a.io.Out, "NAME\tUPDATED", rows)
			return nil
		},
	}
	list.Flags().BoolVar(&listJSON, "json", false, "print JSON")
	del := &cobra.Command{
		Use: "delete NAME", Short: "Delete a secret", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			return cl.Do(cmd.Context(), http.MethodDelete, "/api/v1/secrets/"+url.PathEscape(args[0]), nil, nil)
		},
	}
	c.AddCommand(set, list, del)
	return c
}
