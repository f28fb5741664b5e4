package cli

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/identity/pam"
)

func newDiagnoseCmd(a *app) *cobra.Command {
	c := &cobra.Command{
		Use:   "diagnose",
		Short: "Diagnose problems on this machine",
	}
	c.AddCommand(newDiagnoseLogonCmd(a))
	return c
}

type diagnoseLogonOptions struct {
	pam           pamOptions
	LogonType     string
	PasswordStdin bool
	JSON          bool
}

func newDiagnoseLogonCmd(a *app) *cobra.Command {
	var o diagnoseLogonOptions
	c := &cobra.Command{
		Use:   "logon USER",
		Short: "Log USER on exactly as the agent would, and explain the result",
		Long: `Run, on this machine, the logon the agent runs before a desktop flow: the same
PAM service (deskrun-<logon type>), the same checks, the same mapping to a reason.
Prints the identity it resolves to, or the reason, the NTSTATUS, PAM's raw result
and the fix. The password is read without echo (or from stdin with
--password-stdin) and is never printed or logged. Run it as root, like the agent.`,
		Example: `  sudo deskrun diagnose logon alice
  printf '%s' "$PW" | sudo deskrun diagnose logon 'CORP\alice' --logon-type batch --password-stdin --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runDiagnoseLogon(cmd.Context(), a, &o, args[0]) },
	}
	f := c.Flags()
	f.StringVar(&o.LogonType, "logon-type", "interactive", "interactive, batch or network")
	f.BoolVar(&o.PasswordStdin, "password-stdin", false, "read the password from stdin (one trailing newline is dropped)")
	f.BoolVar(&o.JSON, "json", false, "print the result as JSON")
	o.pam.register(c, true)
	return c
}

func runDiagnoseLogon(ctx context.Context, a *app, o *diagnoseLogonOptions, user string) error {
	lt, err := identity.ParseLogonType(o.LogonType)
	if err != nil {
		return usagef("--logon-type: %v", err)
	}
	join, _ := identity.DetectJoin(identity.DefaultHostPaths())
	name, err := identity.ParseNameOn(user, join.State, join.Domain)
	if err != nil {
		return err
	}
	pw, err := readPassword(a, o.PasswordStdin, name.Raw)
	if err != nil {
		return err
	}
	defer clear(pw)
	host, _ := os.Hostname()
	s := o.pam.stack(a)
	p := pam.New(pam.Config{Stack: s, Join: join, Machine: host})
	res, err := p.Logon(ctx, identity.Request{Name: name, Password: pw, Type: lt})
	if err != nil {
		return err
	}
	if o.JSON {
		return printJSON(a.io.Out, map[string]any{
			"ok": true, "user": name, "logon_type": lt, "service": pam.ServiceName(lt),
			"machine": host, "identity": res.Identity, "warnings": res.Warnings,
		})
	}
	id := res.Identity
	fmt.Fprintf(a.io.Out, "logon ok: %s as %s (%s logon, PAM service %s) on %s\n", name.Raw, id.Username, lt, pam.ServiceName(lt), host)
	fmt.Fprintf(a.io.Out, "  uid %d  gid %d  groups %v\n  home %s  shell %s\n", id.UID, id.GID, id.Groups, id.Home, id.Shell)
	for _, w := range res.Warnings {
		if w.Reason == identity.ReasonPasswordExpiresSoon {
			fmt.Fprintf(a.io.Out, "warning: %s in %d days: %s\n", w.Reason, w.Days, w.Message)
		} else {
			fmt.Fprintf(a.io.Out, "warning: %s: %s\n", w.Reason, w.Message)
		}
		if e, ok := identity.Lookup(w.Reason); ok {
			fmt.Fprintf(a.io.Out, "  fix: %s\n", e.Resolution)
		}
	}
	return nil
}

// readPassword reads a password from stdin (--password-stdin) or from the
// terminal without echo. At most MaxPasswordBytes+3 bytes are read, so a
// huge input is refused by identity.CheckPassword rather than buffered.
func readPassword(a *app, fromStdin bool, who string) ([]byte, error) {
	if fromStdin {
		buf, err := io.ReadAll(io.LimitReader(a.io.In, identity.MaxPasswordBytes+3))
		if err != nil {
			return nil, fmt.Errorf("read password: %w", err)
		}
		if n := len(buf); n > 0 && buf[n-1] == '\n' {
			buf = buf[:n-1]
			if n := len(buf); n > 0 && buf[n-1] == '\r' {
				buf = buf[:n-1]
			}
		}
		return buf, nil
	}
	if a.io.StdinFd < 0 || !term.IsTerminal(a.io.StdinFd) {
		return nil, usagef("no terminal to read the password from: pipe it with --password-stdin")
	}
	fmt.Fprintf(a.io.Err, "Password for %s: ", who)
	pw, err := term.ReadPassword(a.io.StdinFd)
	fmt.Fprintln(a.io.Err)
	if err != nil {
		return nil, fmt.Errorf("read password: %w", err)
	}
	return pw, nil
}
