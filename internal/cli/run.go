package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/client"
	"github.com/deskrun/deskrun/internal/wire"
)

// newDesktopFlowRunCmd is `deskrun desktopflow run`.
func newDesktopFlowRunCmd(a *app) *cobra.Command {
	var req wire.RunCreate
	var inputs []string
	var wait time.Duration
	var follow, asJSON bool
	c := &cobra.Command{
		Use:   "run NAME --connection C [--input k=v]...",
		Short: "Run a desktop flow as a connection's user on its machine",
		Example: `  deskrun desktopflow run hello --connection robot --input name=Ada --follow
  deskrun desktopflow run report --connection robot --priority high --wait 10m --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if req.Connection == "" {
				return usagef("--connection is required")
			}
			if req.Version < 0 {
				return usagef("--version must be a number from 1")
			}
			var err error
			if req.Inputs, err = parseInputs(inputs); err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var run wire.Run
			path := "/api/v1/desktopflows/" + url.PathEscape(args[0]) + "/runs"
			if wait > 0 && !follow {
				path += "?wait=" + wait.String()
			}
			if err := cl.Do(cmd.Context(), http.MethodPost, path, req, &run); err != nil {
				return err
			}
			if follow {
				if err := a.followLogs(cmd.Context(), cl, run.ID); err != nil {
					return err
				}
				if err := cl.Do(cmd.Context(), http.MethodGet, "/api/v1/runs/"+run.ID+"?wait=5m", nil, &run); err != nil {
					return err
				}
			}
			return a.printRun(&run, asJSON, wait > 0 || follow)
		},
	}
	f := c.Flags()
	f.StringVar(&req.Connection, "connection", "", "connection (the user the flow runs as)")
	f.StringArrayVar(&inputs, "input", nil, "input NAME=VALUE (repeatable)")
	f.IntVar(&req.Version, "version", 0, "flow version (default: the latest)")
	f.StringVar(&req.Priority, "priority", "normal", "high or normal")
	f.BoolVar(&req.Screenshot, "screenshot", false, "keep a screenshot of the display even when the run succeeds")
	f.DurationVar(&wait, "wait", 0, "wait up to this long for the run to end")
	f.BoolVar(&follow, "follow", false, "stream the run's output until it ends")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

// parseInputs reads repeated --input NAME=VALUE flags.
func parseInputs(inputs []string) (map[string]string, error) {
	m := make(map[string]string, len(inputs))
	for _, kv := range inputs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, usagef("--input %q: use NAME=VALUE", kv)
		}
		m[k] = v
	}
	return m, nil
}

func newRunCmd(a *app) *cobra.Command {
	c := &cobra.Command{Use: "run", Short: "List, inspect, follow and cancel runs"}
	var state, flow, machine string
	var limit int
	var listJSON bool
	list := &cobra.Command{
		Use: "list", Short: "List runs, newest first", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			q := url.Values{}
			for k, v := range map[string]string{"state": state, "flow": flow, "machine": machine, "limit": fmt.Sprint(limit)} {
				if v != "" && v != "0" {
					q.Set(k, v)
				}
			}
			var out wire.RunList
			if err := cl.Do(cmd.Context(), http.MethodGet, "/api/v1/runs?"+q.Encode(), nil, &out); err != nil {
				return err
			}
			if listJSON {
				return printJSON(a.io.Out, out)
			}
			rows := make([][]string, 0, len(out.Runs))
			for _, r := range out.Runs {
				code := r.PlacementReason
				if r.Error != nil {
					code = r.Error.Code
					if r.Error.Reason != "" && r.Error.Reason != r.Error.Code {
						code += " (" + r.Error.Reason + ")"
					}
				}
				rows = append(rows, []string{r.ID, fmt.Sprintf("%s v%d", r.Flow, r.Version), r.State, code, r.CreatedAt.Local().Format(time.DateTime)})
			}
			table(a.io.Out, "ID\tFLOW\tSTATE\tERROR / WAITING FOR\tCREATED", rows)
			return nil
		},
	}
	list.Flags().StringVar(&state, "state", "", "only runs in this state")
	list.Flags().StringVar(&flow, "flow", "", "only this desktop flow")
	list.Flags().StringVar(&machine, "machine", "", "only this machine")
	list.Flags().IntVar(&limit, "limit", 50, "at most this many")
	list.Flags().BoolVar(&listJSON, "json", false, "print JSON")

	var showJSON bool
	var showWait time.Duration
	var screenshot string
	show := &cobra.Command{
		Use: "show ID", Short: "Show a run (or a cloud flow run, f_…): state, timings, outputs, error", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			if strings.HasPrefix(args[0], "f_") { // a cloud-flow run
				return a.showFlowRun(cmd.Context(), cl, args[0], showWait, showJSON)
			}
			var run wire.Run
			p := "/api/v1/runs/" + url.PathEscape(args[0])
			if showWait > 0 {
				p += "?wait=" + showWait.String()
			}
			if err := cl.Do(cmd.Context(), http.MethodGet, p, nil, &run); err != nil {
				return err
			}
			if screenshot != "" {
				if err := saveScreenshot(cmd.Context(), cl, run.ID, screenshot); err != nil {
					return err
				}
			}
			return a.printRun(&run, showJSON, false)
		},
	}
	show.Flags().BoolVar(&showJSON, "json", false, "print JSON")
	show.Flags().DurationVar(&showWait, "wait", 0, "wait up to this long for the run to end")
	show.Flags().StringVar(&screenshot, "screenshot", "", "save the run's screenshot (PNG) to this file")

	var follow, logsJSON bool
	logs := &cobra.Command{
		Use: "logs ID", Short: "Print a run's output; --follow streams it until the run ends", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			if follow {
				return a.followLogs(cmd.Context(), cl, args[0])
			}
			var after int64
			var all []wire.RunLogLine
			for {
				var out wire.RunLog
				if err := cl.Do(cmd.Context(), http.MethodGet, fmt.Sprintf("/api/v1/runs/%s/logs?after=%d", url.PathEscape(args[0]), after), nil, &out); err != nil {
					return err
				}
				all = append(all, out.Chunks...)
				if !logsJSON {
					for _, c := range out.Chunks {
						a.writeChunk(c)
					}
				}
				if len(out.Chunks) == 0 || out.Next == after {
					break
				}
				after = out.Next
			}
			if logsJSON {
				return printJSON(a.io.Out, wire.RunLog{Chunks: all, Next: after, Done: true})
			}
			return nil
		},
	}
	logs.Flags().BoolVar(&follow, "follow", false, "stream until the run ends")
	logs.Flags().BoolVar(&logsJSON, "json", false, "print JSON")

	var cancelJSON bool
	cancel := &cobra.Command{
		Use: "cancel ID", Short: "Cancel a run (kills the flow's whole process tree)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			var run wire.Run
			if err := cl.Do(cmd.Context(), http.MethodPost, "/api/v1/runs/"+url.PathEscape(args[0])+"/cancel", nil, &run); err != nil {
				return err
			}
			return a.printRun(&run, cancelJSON, false)
		},
	}
	cancel.Flags().BoolVar(&cancelJSON, "json", false, "print JSON")
	c.AddCommand(list, show, logs, cancel)
	return c
}

func (a *app) writeChunk(c wire.RunLogLine) {
	w := a.io.Out
	if c.Stream == "stderr" {
		w = a.io.Err
	}
	fmt.Fprint(w, c.Data)
}

// followLogs streams a run's output until it ends.
func (a *app) followLogs(ctx context.Context, cl *client.Client, id string) error {
	body, err := cl.Stream(ctx, "/api/v1/runs/"+url.PathEscape(id)+"/logs?follow=1")
	if err != nil {
		return err
	}
	defer body.Close()
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 0, 64<<10), 8<<20)
	for sc.Scan() {
		var c wire.RunLogLine
		if json.Unmarshal(sc.Bytes(), &c) == nil {
			a.writeChunk(c)
		}
	}
	return sc.Err()
}

func saveScreenshot(ctx context.Context, cl *client.Client, id, file string) error {
	body, err := cl.Stream(ctx, "/api/v1/runs/"+url.PathEscape(id)+"/screenshot")
	if err != nil {
		return err
	}
	defer body.Close()
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// printRun prints a run; a run that ended badly makes the command fail
// (exit 1) with the run's error, when the caller waited for it.
func (a *app) printRun(r *wire.Run, asJSON, waited bool) error {
	if asJSON {
		if err := printJSON(a.io.Out, r); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(a.io.Out, "run %s: %s v%d, %s\n", r.ID, r.Flow, r.Version, r.State)
		if r.PlacementReason != "" && r.State == string(deskrun.RunQueued) {
			fmt.Fprintf(a.io.Out, "  waiting: %s\n", r.PlacementReason)
		}
		if r.ExitCode != nil {
			fmt.Fprintf(a.io.Out, "  exit code: %d\n", *r.ExitCode)
		}
		if len(r.Outputs) > 0 {
			fmt.Fprintf(a.io.Out, "  outputs: %s\n", r.Outputs)
		}
		if r.HasScreenshot {
			fmt.Fprintf(a.io.Out, "  screenshot: deskrun run show %s --screenshot FILE.png\n", r.ID)
		}
		if r.Error != nil && !waited {
			fmt.Fprint(a.io.Out, FormatError(r.Error))
		}
	}
	if waited && r.Error != nil && deskrun.RunState(r.State).Terminal() && r.State != string(deskrun.RunSucceeded) {
		if asJSON {
			return &silentError{r.Error}
		}
		return r.Error
	}
	return nil
}

// silentError fails the command without printing again what --json
// already printed.
type silentError struct{ err *deskrun.Error }

func (e *silentError) Error() string { return e.err.Error() }
