// Package cli is deskrun's command line: one file per command group, each
// an options struct and a run function. Commands that print data take
// --json; errors from the server arrive as *deskrun.Error and are printed
// with their code, reason and resolution.
//
// Exit codes: 0 ok, 1 the command failed, 2 usage error.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/agent"
)

// Exit codes.
const (
	ExitOK     = 0
	ExitFailed = 1
	ExitUsage  = 2
)

// IO is what a command reads and writes; tests substitute buffers.
type IO struct {
	In     io.Reader
	Out    io.Writer
	Err    io.Writer
	Getenv func(string) string
	// StdinFd is the terminal file descriptor for password prompts, or -1.
	StdinFd int
}

// Stdio is the process's own IO.
func Stdio() IO {
	return IO{In: os.Stdin, Out: os.Stdout, Err: os.Stderr, Getenv: os.Getenv, StdinFd: int(os.Stdin.Fd())}
}

// app is shared by every command of one invocation.
type app struct {
	io     IO
	global globalOptions
}

type globalOptions struct {
	Server     string
	Token      string
	ConfigFile string
}

// usageError marks a mistake in how the command was called (exit 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// NewRoot builds the command tree.
func NewRoot(s IO) *cobra.Command {
	a := &app{io: s}
	agent.Version = Version
	root := &cobra.Command{
		Use:   "deskrun",
		Short: "Run desktop flows on your machines as real users, with credentials that explain themselves",
		Long: `deskrun runs desktop flows (automation scripts) on registered machines, as a real
operating-system user whose credentials live in a connection, triggered by cloud
flows. This one binary is the server, the agent and the client.

Start here:  deskrun dev`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(s.In)
	root.SetOut(s.Out)
	root.SetErr(s.Err)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err.Error()} })
	pf := root.PersistentFlags()
	pf.StringVar(&a.global.Server, "server", "", "server URL (env DESKRUN_SERVER; default from the client config)")
	pf.StringVar(&a.global.Token, "token", "", "API token (env DESKRUN_TOKEN; default from the client config)")
	pf.StringVar(&a.global.ConfigFile, "config", "", "client config file (env DESKRUN_CONFIG; default ~/.config/deskrun/config.yaml)")

	root.AddGroup(
		&cobra.Group{ID: "start", Title: "Run deskrun:"},
		&cobra.Group{ID: "manage", Title: "Manage resources (through the server's API):"},
		&cobra.Group{ID: "local", Title: "On this machine (no server needed):"},
	)
	for _, c := range []*cobra.Command{
		newDevCmd(a),
		newServerCmd(a),
		newMigrateCmd(a),
		newAgentCmd(a),
		newBeChildCmd(a),
	} {
		c.GroupID = "start"
		root.AddCommand(c)
	}
	for _, c := range []*cobra.Command{
		newMachineCmd(a),
		newConnectionCmd(a),
		newDesktopFlowCmd(a),
		newFlowCmd(a),
		newSecretCmd(a),
		newAuditCmd(a),
		newRunCmd(a),
		newTokenCmd(a),
		newJobCmd(a),
		newUserCmd(a),
	} {
		c.GroupID = "manage"
		root.AddCommand(c)
	}
	for _, c := range []*cobra.Command{
		newVersionCmd(a),
		newBenchCmd(a),
		newExplainCmd(a),
		newDiagnoseCmd(a),
		newDoctorCmd(a),
	} {
		c.GroupID = "local"
		root.AddCommand(c)
	}
	root.SetHelpCommandGroupID("local")
	root.SetCompletionCommandGroupID("local")
	return root
}

// Main runs the command line and returns the exit code.
func Main(ctx context.Context, args []string, s IO) int {
	root := NewRoot(s)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	return printError(s.Err, err, wantsJSON(args))
}

func wantsJSON(args []string) bool {
	for _, a := range args {
		if a == "--json" || a == "--json=true" {
			return true
		}
	}
	return false
}

// printError prints err for a person (or as the JSON envelope with --json)
// and returns the exit code.
func printError(w io.Writer, err error, asJSON bool) int {
	var ue *usageError
	if errors.As(err, &ue) || isCobraUsage(err) {
		fmt.Fprintf(w, "error: %v\nRun with --help for usage.\n", err)
		return ExitUsage
	}
	var se *silentError
	if errors.As(err, &se) {
		return ExitFailed
	}
	var de *deskrun.Error
	if !errors.As(err, &de) {
		de = &deskrun.Error{Code: deskrun.CodeInternal, Message: err.Error()}
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(map[string]any{"error": de})
		return ExitFailed
	}
	fmt.Fprint(w, FormatError(de))
	return ExitFailed
}

// FormatError renders a deskrun error for a terminal: the code and reason
// first, then the codes an admin would search for, then the fix.
func FormatError(e *deskrun.Error) string {
	var b strings.Builder
	fmt.Fprintf(&b, "error: %s", e.Code)
	if e.Reason != "" {
		fmt.Fprintf(&b, " (%s)", e.Reason)
	}
	fmt.Fprintf(&b, ": %s\n", e.Message)
	if e.Status != "" {
		fmt.Fprintf(&b, "  status:     %s (%d)\n", e.Status, e.StatusDecimal)
	}
	if e.Machine != "" {
		fmt.Fprintf(&b, "  machine:    %s\n", e.Machine)
	}
	if p := e.Provider; p != nil {
		fmt.Fprintf(&b, "  provider:   %s", p.Name)
		if p.Stage != "" {
			fmt.Fprintf(&b, " %s", p.Stage)
		}
		if p.Result != "" {
			fmt.Fprintf(&b, " → %s", p.Result)
		}
		if p.Detail != "" {
			fmt.Fprintf(&b, " (%s)", p.Detail)
		}
		b.WriteString("\n")
	}
	if e.Resolution != "" {
		fmt.Fprintf(&b, "  resolution: %s\n", indentRest(e.Resolution, "              "))
	}
	if e.RequestID != "" {
		fmt.Fprintf(&b, "  request id: %s\n", e.RequestID)
	}
	return b.String()
}

func indentRest(s, pad string) string {
	return strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n"+pad)
}

// isCobraUsage recognises cobra's own argument errors, which it does not type.
func isCobraUsage(err error) bool {
	m := err.Error()
	return strings.HasPrefix(m, "unknown command") || strings.HasPrefix(m, "accepts ") ||
		strings.HasPrefix(m, "requires at least") || strings.HasPrefix(m, "accepts at most") ||
		strings.HasPrefix(m, "invalid argument")
}

// printJSON writes v as indented JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
