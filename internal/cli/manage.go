package cli

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/wire"
)

func newMachineCmd(a *app) *cobra.Command {
	c := &cobra.Command{Use: "machine", Short: "List and inspect machines"}
	var asJSON bool
	list := &cobra.Command{
		Use: "list", Short: "List machines with their state", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			ms, err := cl.Machines(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.io.Out, wire.MachineList{Machines: ms})
			}
			rows := make([][]string, 0, len(ms))
			for _, m := range ms {
				state := m.State
				if m.State == string(deskrun.MachineOffline) && m.OfflineReason != "" {
					state += " (" + m.OfflineReason + ")"
				}
				rows = append(rows, []string{m.Name, state, ago(m.LastSeen), m.OS + "/" + m.Arch, m.JoinState, m.AgentVersion, strconv.Itoa(m.ProtocolVersion)})
			}
			table(a.io.Out, "NAME\tSTATE\tLAST SEEN\tPLATFORM\tJOIN\tAGENT\tPROTOCOL", rows)
			return nil
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	var showJSON bool
	show := &cobra.Command{
		Use: "show MACHINE", Short: "Show one machine (by name or id)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			m, err := cl.Machine(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if showJSON {
				return printJSON(a.io.Out, m)
			}
			rows := [][]string{
				{"id", m.ID}, {"name", m.Name}, {"state", m.State}, {"offline reason", m.OfflineReason},
				{"last seen", ago(m.LastSeen)}, {"os/arch", m.OS + "/" + m.Arch}, {"kernel", m.Kernel},
				{"agent", m.AgentVersion}, {"protocol", strconv.Itoa(m.ProtocolVersion)},
				{"join state", m.JoinState}, {"domain", m.Domain}, {"slots", strconv.Itoa(m.Slots)}, {"sessions", m.Sessions}, {"seal key", m.SealKeyID},
				{"doctor", doctorSummary(m)},
			}
			for _, r := range rows {
				if r[1] != "" {
					fmt.Fprintf(a.io.Out, "%-15s %s\n", r[0]+":", r[1])
				}
			}
			if m.Doctor != nil {
				for _, c := range m.Doctor.Checks {
					if c.Status == deskrun.DoctorWarn || c.Status == deskrun.DoctorFail {
						fmt.Fprintf(a.io.Out, "  %-4s %s: %s\n", strings.ToUpper(c.Status), c.Name, c.Detail)
						if c.Fix != "" {
							fmt.Fprintf(a.io.Out, "       fix: %s\n", c.Fix)
						}
					}
				}
			}
			return nil
		},
	}
	show.Flags().BoolVar(&showJSON, "json", false, "print JSON")
	del := &cobra.Command{
		Use: "delete MACHINE", Short: "Remove a machine; its agent can no longer connect", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			if err := cl.DeleteMachine(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(a.io.Out, "deleted machine %s\n", args[0])
			return nil
		},
	}
	var upd wire.MachineUpdate
	var setJSON bool
	set := &cobra.Command{
		Use: "set MACHINE --unattended-sessions shared|exclusive", Short: "Change a machine's policy", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if upd.UnattendedSessions == "" {
				return usagef("nothing to change: give --unattended-sessions")
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			m, err := cl.UpdateMachine(cmd.Context(), args[0], upd)
			if err != nil {
				return err
			}
			if setJSON {
				return printJSON(a.io.Out, m)
			}
			fmt.Fprintf(a.io.Out, "machine %s: unattended sessions %s\n", m.Name, m.Sessions)
			return nil
		},
	}
	set.Flags().StringVar(&upd.UnattendedSessions, "unattended-sessions", "", "shared, or exclusive (a user who already has a session gets SessionExistsForTheUserWhenUnattended)")
	set.Flags().BoolVar(&setJSON, "json", false, "print JSON")
	c.AddCommand(list, show, set, del)
	return c
}

// doctorSummary is the machine's doctor report in a line: "12 pass, 1
// warn, 0 fail (2m0s ago)".
func doctorSummary(m *wire.Machine) string {
	if m.Doctor == nil {
		if m.ProtocolVersion > 0 && m.ProtocolVersion < wire.DoctorProtocolVersion {
			return fmt.Sprintf("none: the agent (protocol %d) does not send it; upgrade the agent, or run sudo deskrun doctor on the machine", m.ProtocolVersion)
		}
		return "none yet (the agent sends it when it connects)"
	}
	n := m.Doctor.Counts()
	s := fmt.Sprintf("%d pass, %d warn, %d fail", n.Pass, n.Warn, n.Fail)
	if n.Skip > 0 {
		s += fmt.Sprintf(", %d skipped", n.Skip)
	}
	return s + " (" + ago(m.Doctor.At) + ")"
}

func newTokenCmd(a *app) *cobra.Command {
	c := &cobra.Command{Use: "token", Short: "Create, list and revoke API and enrollment tokens"}
	var req wire.TokenCreate
	var enrollment, asJSON bool
	create := &cobra.Command{
		Use:   "create [--enrollment]",
		Short: "Create an API token, or with --enrollment a token that enrolls agents",
		Long: `Create a token. The secret is printed once; the server keeps only its hash.

An enrollment token carries the server URL, the SHA-256 fingerprint of the server's CA
and a secret: give it to 'deskrun agent enroll --token' on the new machine.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req.Kind = string(deskrun.TokenAPI)
			if enrollment {
				req.Kind = string(deskrun.TokenEnrollment)
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			t, err := cl.CreateToken(cmd.Context(), req)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.io.Out, t)
			}
			fmt.Fprintln(a.io.Out, t.Secret)
			return nil
		},
	}
	f := create.Flags()
	f.BoolVar(&enrollment, "enrollment", false, "create an enrollment token for agents")
	f.StringVar(&req.Name, "name", "", "a name to recognise the token by")
	f.StringVar(&req.Role, "role", "", "API token role: admin, maker or viewer (default admin)")
	f.StringVar(&req.TTL, "ttl", "", "lifetime, e.g. 1h (enrollment default 1h; API default none)")
	f.IntVar(&req.Uses, "uses", 0, "enrollments allowed (default 1)")
	f.BoolVar(&asJSON, "json", false, "print JSON")

	var kind string
	var listJSON bool
	list := &cobra.Command{
		Use: "list", Short: "List tokens (never their secrets)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			ts, err := cl.Tokens(cmd.Context(), kind)
			if err != nil {
				return err
			}
			if listJSON {
				return printJSON(a.io.Out, wire.TokenList{Tokens: ts})
			}
			rows := make([][]string, 0, len(ts))
			for _, t := range ts {
				exp := "never"
				if !t.ExpiresAt.IsZero() {
					exp = t.ExpiresAt.Local().Format(time.DateTime)
				}
				state := "active"
				if t.Revoked {
					state = "revoked"
				}
				rows = append(rows, []string{t.ID, t.Kind, t.Name, t.Role, state, exp, strconv.Itoa(t.UsesLeft)})
			}
			table(a.io.Out, "ID\tKIND\tNAME\tROLE\tSTATE\tEXPIRES\tUSES LEFT", rows)
			return nil
		},
	}
	list.Flags().StringVar(&kind, "kind", "", "api or enrollment")
	list.Flags().BoolVar(&listJSON, "json", false, "print JSON")
	revoke := &cobra.Command{
		Use: "revoke ID", Short: "Revoke a token", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			if err := cl.RevokeToken(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(a.io.Out, "revoked %s\n", args[0])
			return nil
		},
	}
	c.AddCommand(create, list, revoke)
	return c
}

func newJobCmd(a *app) *cobra.Command {
	c := &cobra.Command{Use: "job", Short: "Push low-level jobs to agents (diagnostics and benchmarks)"}
	var req wire.JobCreate
	var payload string
	var wait time.Duration
	var asJSON bool
	run := &cobra.Command{
		Use: "run --machine M [--kind noop|sleep]", Short: "Create a job on a machine and optionally wait for it", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if req.Machine == "" {
				return usagef("--machine is required")
			}
			if payload != "" {
				if !json.Valid([]byte(payload)) {
					return usagef("--payload is not valid JSON")
				}
				req.Payload = json.RawMessage(payload)
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			j, err := cl.CreateJob(cmd.Context(), req, wait)
			if err != nil {
				return err
			}
			return a.printJob(j, asJSON)
		},
	}
	run.Flags().StringVar(&req.Machine, "machine", "", "machine name or id")
	run.Flags().StringVar(&req.Kind, "kind", deskrun.JobNoop, "noop or sleep")
	run.Flags().StringVar(&payload, "payload", "", `job payload as JSON, e.g. '{"ms": 500}' for sleep`)
	run.Flags().DurationVar(&wait, "wait", 0, "wait up to this long for the job to end")
	run.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	var showWait time.Duration
	var showJSON bool
	show := &cobra.Command{
		Use: "show ID", Short: "Show a job", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			j, err := cl.Job(cmd.Context(), args[0], showWait)
			if err != nil {
				return err
			}
			return a.printJob(j, showJSON)
		},
	}
	show.Flags().DurationVar(&showWait, "wait", 0, "wait up to this long for the job to end")
	show.Flags().BoolVar(&showJSON, "json", false, "print JSON")

	var machine, state string
	var limit int
	var listJSON bool
	list := &cobra.Command{
		Use: "list", Short: "List jobs, newest first", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			js, err := cl.Jobs(cmd.Context(), machine, state, limit)
			if err != nil {
				return err
			}
			if listJSON {
				return printJSON(a.io.Out, wire.JobList{Jobs: js})
			}
			rows := make([][]string, 0, len(js))
			for _, j := range js {
				code := ""
				if j.Error != nil {
					code = j.Error.Code
				}
				rows = append(rows, []string{j.ID, j.Kind, j.MachineID, j.State, code, j.CreatedAt.Local().Format(time.DateTime)})
			}
			table(a.io.Out, "ID\tKIND\tMACHINE\tSTATE\tERROR\tCREATED", rows)
			return nil
		},
	}
	list.Flags().StringVar(&machine, "machine", "", "only this machine")
	list.Flags().StringVar(&state, "state", "", "only this state")
	list.Flags().IntVar(&limit, "limit", 50, "at most this many")
	list.Flags().BoolVar(&listJSON, "json", false, "print JSON")

	cancel := &cobra.Command{
		Use: "cancel ID", Short: "Cancel a job", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			j, err := cl.CancelJob(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return a.printJob(j, false)
		},
	}
	c.AddCommand(run, show, list, cancel)
	return c
}

func (a *app) printJob(j *wire.Job, asJSON bool) error {
	if asJSON {
		return printJSON(a.io.Out, j)
	}
	fmt.Fprintf(a.io.Out, "job %s (%s) on %s: %s\n", j.ID, j.Kind, j.MachineID, j.State)
	if len(j.Result) > 0 {
		fmt.Fprintf(a.io.Out, "  result: %s\n", j.Result)
	}
	if j.Error != nil {
		fmt.Fprint(a.io.Out, FormatError(j.Error))
	}
	if j.State == string(deskrun.JobFailed) || j.State == string(deskrun.JobCancelled) {
		if j.Error != nil {
			return &silentError{j.Error} // printed above
		}
		return &deskrun.Error{Code: deskrun.CodeInternal, Message: "the job " + j.State + " without an error"}
	}
	return nil
}
