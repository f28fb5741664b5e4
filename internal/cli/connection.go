package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/client"
	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/seal"
	"github.com/deskrun/deskrun/internal/wire"
)

func newConnectionCmd(a *app) *cobra.Command {
	c := &cobra.Command{
		Use:   "connection",
		Short: "Credentials that desktop flows run as: create, test, update, list, show, delete",
		Long: `A connection is a named credential for a machine: a username and a password sealed
to the machine's key (the server cannot read it). Creating or updating one tests the
logon on the machine and refuses to save on failure, with the exact reason. A
definitive failure (wrong password, locked, disabled, expired) marks it broken: no
logon is attempted with it again until it is updated or an admin re-tests it.`,
	}
	c.AddCommand(newConnectionCreateCmd(a), newConnectionUpdateCmd(a), newConnectionTestCmd(a),
		newConnectionListCmd(a), newConnectionShowCmd(a), newConnectionDeleteCmd(a))
	return c
}

type credentialFlags struct {
	passwordStdin bool
	serverSeal    bool
}

func (f *credentialFlags) register(c *cobra.Command) {
	c.Flags().BoolVar(&f.passwordStdin, "password-stdin", false, "read the password from stdin (else prompt without echo)")
	c.Flags().BoolVar(&f.serverSeal, "server-seal", false, "send the password over TLS for the server to seal, instead of sealing it here")
}

// seal reads the password and seals it here to the machine's key, bound to
// the connection id, or returns it for the server to seal.
func (a *app) sealPassword(ctx context.Context, cl *client.Client, f *credentialFlags, machine, connID, user string) (wire.Secret, *wire.Sealed, error) {
	pw, err := readPassword(a, f.passwordStdin, user)
	if err != nil {
		return nil, nil, err
	}
	if err := identity.CheckPassword(pw); err != nil {
		clear(pw)
		return nil, nil, err
	}
	if f.serverSeal {
		return wire.Secret(pw), nil, nil
	}
	defer clear(pw)
	m, err := cl.Machine(ctx, machine)
	if err != nil {
		return nil, nil, err
	}
	if seal.KeyID(m.SealKey) != m.SealKeyID {
		return nil, nil, &deskrun.Error{Code: deskrun.CodeSealedCredentialInvalid, Message: "the machine's sealing key does not match its key id; refusing to seal to it"}
	}
	ct, err := seal.Seal(m.SealKey, deskrun.SealInfo(connID, m.ID), pw)
	if err != nil {
		return nil, nil, err
	}
	return nil, &wire.Sealed{MachineID: m.ID, KeyID: m.SealKeyID, Ciphertext: ct}, nil
}

func newConnectionCreateCmd(a *app) *cobra.Command {
	var req wire.ConnectionCreate
	var cf credentialFlags
	var asJSON bool
	c := &cobra.Command{
		Use:   "create NAME --machine M --username U",
		Short: "Create a connection; the logon is tested on the machine before it is saved",
		Example: `  printf '%s' "$PW" | deskrun connection create robot --machine build-07 --username robot --password-stdin
  deskrun connection create ops --machine build-07 --username 'CORP\ops' --logon-type batch`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if req.Machine == "" || req.Username == "" {
				return usagef("--machine and --username are required")
			}
			req.Name = args[0]
			cl, err := a.client()
			if err != nil {
				return err
			}
			if !cf.serverSeal {
				req.ID = deskrun.NewID("c", time.Now())
			}
			req.Password, req.Sealed, err = a.sealPassword(cmd.Context(), cl, &cf, req.Machine, req.ID, req.Username)
			if err != nil {
				return err
			}
			res, err := cl.CreateConnection(cmd.Context(), req)
			clear(req.Password)
			if err != nil {
				return err
			}
			return a.printConnectionResult(res, asJSON, "created")
		},
	}
	f := c.Flags()
	f.StringVar(&req.Machine, "machine", "", "target machine (name or id)")
	f.StringVar(&req.Username, "username", "", `account: user, .\user, MACHINE\user, DOMAIN\user or user@domain`)
	f.StringVar(&req.RunMode, "run-mode", "unattended", "unattended (deskrun makes the session) or attended (the user's own)")
	f.StringVar(&req.LogonType, "logon-type", "interactive", "interactive, batch or network")
	f.BoolVar(&req.SkipTest, "skip-test", false, "save without testing (for an offline machine); the connection is untested")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	cf.register(c)
	return c
}

func newConnectionUpdateCmd(a *app) *cobra.Command {
	var req wire.ConnectionUpdate
	var cf credentialFlags
	var newPassword, asJSON bool
	c := &cobra.Command{
		Use:   "update NAME [--password-stdin] [--username U]",
		Short: "Change a connection; a new username or password is tested before it is saved",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			if newPassword || cf.passwordStdin {
				cur, err := cl.Connection(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				user := cur.Username
				if req.Username != "" {
					user = req.Username
				}
				req.Password, req.Sealed, err = a.sealPassword(cmd.Context(), cl, &cf, cur.Target, cur.ID, user)
				if err != nil {
					return err
				}
			}
			res, err := cl.UpdateConnection(cmd.Context(), args[0], req)
			clear(req.Password)
			if err != nil {
				return err
			}
			return a.printConnectionResult(res, asJSON, "updated")
		},
	}
	f := c.Flags()
	f.BoolVar(&newPassword, "password", false, "set a new password (prompted without echo)")
	f.StringVar(&req.Username, "username", "", "new username")
	f.StringVar(&req.RunMode, "run-mode", "", "unattended or attended")
	f.StringVar(&req.LogonType, "logon-type", "", "interactive, batch or network")
	f.BoolVar(&req.SkipTest, "skip-test", false, "save new credentials without testing them")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	cf.register(c)
	return c
}

func newConnectionTestCmd(a *app) *cobra.Command {
	var force, asJSON bool
	c := &cobra.Command{
		Use:   "test NAME",
		Short: "Log the connection's user on, on its machine, and record the outcome",
		Long: `Test the connection's logon on its machine. A broken connection is refused at once
(ConnectionBroken, with the original reason) without touching the machine; an admin can
--force one more attempt, e.g. after unlocking the account on the machine.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			res, err := cl.TestConnection(cmd.Context(), args[0], force)
			if err != nil {
				return err
			}
			return a.printConnectionResult(res, asJSON, "tested")
		},
	}
	c.Flags().BoolVar(&force, "force", false, "test even a broken connection (admin): one more logon attempt")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func newConnectionListCmd(a *app) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use: "list", Short: "List connections with their state and reason", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			cs, err := cl.Connections(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.io.Out, wire.ConnectionList{Connections: cs})
			}
			rows := make([][]string, 0, len(cs))
			for _, c := range cs {
				rows = append(rows, []string{c.Name, c.Machine, c.Username, stateWithReason(&c), ago(c.LastTestedAt), c.LogonType, c.RunMode})
			}
			table(a.io.Out, "NAME\tMACHINE\tUSERNAME\tSTATE\tLAST TESTED\tLOGON\tMODE", rows)
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func stateWithReason(c *wire.Connection) string {
	s := c.State
	switch c.State {
	case string(deskrun.ConnectionBroken):
		s += ": " + c.Reason
		if c.LastError != nil && c.LastError.Status != "" {
			s += " " + c.LastError.Status
		}
	case string(deskrun.ConnectionExpiring):
		s += fmt.Sprintf(": password expires in %d days", c.ExpiresInDays)
	}
	return s
}

func newConnectionShowCmd(a *app) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use: "show NAME", Short: "Show a connection, with its last error and fix", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			conn, err := cl.Connection(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.io.Out, conn)
			}
			a.printConnection(conn)
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func newConnectionDeleteCmd(a *app) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use: "delete NAME", Short: "Delete a connection and its sealed credentials", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			if err := cl.DeleteConnection(cmd.Context(), args[0]); err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.io.Out, map[string]string{"deleted": args[0]})
			}
			fmt.Fprintf(a.io.Out, "deleted connection %s\n", args[0])
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func (a *app) printConnection(c *wire.Connection) {
	w := a.io.Out
	fmt.Fprintf(w, "%-14s %s (%s)\n", "connection:", c.Name, c.ID)
	fmt.Fprintf(w, "%-14s %s\n", "machine:", c.Machine)
	fmt.Fprintf(w, "%-14s %s (%s logon, %s)\n", "username:", c.Username, c.LogonType, c.RunMode)
	fmt.Fprintf(w, "%-14s %s\n", "state:", stateWithReason(c))
	fmt.Fprintf(w, "%-14s %s\n", "last tested:", ago(c.LastTestedAt))
	keys := make([]string, 0, len(c.Credentials))
	for _, k := range c.Credentials {
		keys = append(keys, k.KeyID)
	}
	fmt.Fprintf(w, "%-14s sealed to %s\n", "credential:", strings.Join(keys, ", "))
	if c.LastError != nil {
		fmt.Fprint(w, strings.Replace(FormatError(c.LastError), "error:", "last error:", 1))
	}
}

func (a *app) printConnectionResult(res *wire.ConnectionTestResult, asJSON bool, verb string) error {
	if asJSON {
		return printJSON(a.io.Out, res)
	}
	c := res.Connection
	fmt.Fprintf(a.io.Out, "%s connection %s on %s: %s\n", verb, c.Name, c.Machine, stateWithReason(&c))
	if l := res.Logon; l != nil {
		fmt.Fprintf(a.io.Out, "  logon ok as %s (uid %d, gid %d, home %s)\n", l.Identity.Username, l.Identity.UID, l.Identity.GID, l.Identity.Home)
		for _, w := range l.Warnings {
			if w.Days > 0 {
				fmt.Fprintf(a.io.Out, "  warning: %s in %d days: %s\n", w.Reason, w.Days, w.Message)
			} else {
				fmt.Fprintf(a.io.Out, "  warning: %s: %s\n", w.Reason, w.Message)
			}
		}
	}
	return nil
}

func newAuditCmd(a *app) *cobra.Command {
	c := &cobra.Command{Use: "audit", Short: "Read the audit log of logons, seals and connection changes"}
	var connection, action string
	var limit int
	var asJSON bool
	list := &cobra.Command{
		Use: "list", Short: "List audit events, newest first", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			es, err := cl.Audit(cmd.Context(), connection, action, limit)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.io.Out, wire.AuditList{Events: es})
			}
			rows := make([][]string, 0, len(es))
			for _, e := range es {
				rows = append(rows, []string{e.At.Local().Format(time.DateTime), e.Actor, e.Action, e.ConnectionName, e.Result, e.Reason, e.Detail})
			}
			table(a.io.Out, "AT\tACTOR\tACTION\tCONNECTION\tRESULT\tREASON\tDETAIL", rows)
			return nil
		},
	}
	list.Flags().StringVar(&connection, "connection", "", "only this connection")
	list.Flags().StringVar(&action, "action", "", "only this action, e.g. logon.attempt")
	list.Flags().IntVar(&limit, "limit", 100, "at most this many")
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	c.AddCommand(list)
	return c
}
