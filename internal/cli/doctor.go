package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/deskrun/deskrun/internal/agent"
	"github.com/deskrun/deskrun/internal/doctor"
	"github.com/deskrun/deskrun/internal/identity"
)

type doctorOptions struct {
	pam     pamOptions
	User    string
	JSON    bool
	Timeout time.Duration
	// host paths, hidden: tests point them at fixtures
	SSSDConf, Krb5Conf, SmbConf string
	// DirectoryConfig is the agent config with the directory: section;
	// StateDir the agent state whose key opens the sealed service password.
	DirectoryConfig, StateDir string
}

func newDoctorCmd(a *app) *cobra.Command {
	var o doctorOptions
	c := &cobra.Command{
		Use:   "doctor",
		Short: "Check that this machine can log users on for deskrun, and say how to fix what cannot",
		Long: `Check, on this machine: running as root; deskrun's PAM services installed (and
never falling back to "other"); the join state (SSSD, winbind, Kerberos realm); the
domain's authentication endpoints (DNS SRV, TCP to KDC and LDAP) and the clock skew
against the domain controller. With the agent's directory (the directory: section of
--directory-config, else discovered from sssd.conf): TCP 88/389/636 to its DC, an LDAPS
or StartTLS connection with the certificate verified, the clock skew against the DC's
own clock (rootDSE currentTime; Kerberos allows 5 minutes), and whether the service
account binds and can read the attributes deskrun's reasons need (userAccountControl,
msDS-User-Account-Control-Computed, badPwdCount). With --user, also: NSS resolves the user; the
account's state in shadow (locked, expired, password age, expiring soon, faillock);
and whether each logon type is granted (the account stage, without a password).

Each check passes, warns or fails, with the fix. Exits 1 if any check fails.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runDoctor(cmd.Context(), a, &o) },
	}
	f := c.Flags()
	f.StringVar(&o.User, "user", "", "also check this user's account and logon rights")
	f.BoolVar(&o.JSON, "json", false, "print the checks as JSON")
	f.DurationVar(&o.Timeout, "timeout", 3*time.Second, "time limit of each network check")
	o.pam.register(c, true)
	d := identity.DefaultHostPaths()
	f.StringVar(&o.SSSDConf, "sssd-conf", d.SSSDConf, "SSSD configuration")
	f.StringVar(&o.Krb5Conf, "krb5-conf", d.Krb5Conf, "Kerberos configuration")
	f.StringVar(&o.SmbConf, "smb-conf", d.SmbConf, "Samba configuration")
	for _, n := range []string{"sssd-conf", "krb5-conf", "smb-conf"} {
		_ = f.MarkHidden(n)
	}
	f.StringVar(&o.DirectoryConfig, "directory-config", agent.DefaultConfigFile, "agent config with the directory: section")
	f.StringVar(&o.StateDir, "state-dir", "", "agent state directory, whose key opens the sealed service password (default /var/lib/deskrun/agent as root)")
	return c
}

func runDoctor(ctx context.Context, a *app, o *doctorOptions) error {
	state := o.StateDir
	if state == "" {
		state = defaultAgentStateDir(a.io.Getenv)
	}
	r := doctor.Run(ctx, doctor.Options{
		Stack: o.pam.stack(a), Timeout: o.Timeout, User: o.User,
		Paths:           identity.HostPaths{SSSDConf: o.SSSDConf, Krb5Conf: o.Krb5Conf, SmbConf: o.SmbConf},
		DirectoryConfig: o.DirectoryConfig, StateDir: state,
	})
	checks := r.Checks
	failed := r.Failed()
	if o.JSON {
		if err := printJSON(a.io.Out, map[string]any{"ok": !failed, "checks": checks}); err != nil {
			return err
		}
	} else {
		for _, c := range checks {
			fmt.Fprintf(a.io.Out, "%-4s  %-26s %s\n", strings.ToUpper(c.Status), c.Name, c.Detail)
			if c.Fix != "" && c.Status != doctor.Pass {
				fmt.Fprintf(a.io.Out, "      %-26s fix: %s\n", "", c.Fix)
			}
		}
	}
	if failed {
		e := identity.Fail(identity.ReasonDoctorFailed, nil)
		return e
	}
	return nil
}
