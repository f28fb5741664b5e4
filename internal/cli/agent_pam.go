package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/identity/pam"
)

// pamOptions are the flags that locate deskrun's PAM services. The same
// flags (and env DESKRUN_PAM_DIR) serve install-pam, diagnose and doctor,
// so a test can point all three at its own directory.
type pamOptions struct {
	PAMDir      string
	ConfigDir   string
	FaillockDir string
	NologinFile string
}

func (o *pamOptions) register(c *cobra.Command, hidden bool) {
	d := pam.DefaultStack()
	f := c.Flags()
	f.StringVar(&o.PAMDir, "pam-dir", "", "PAM service directory (env DESKRUN_PAM_DIR; default "+d.PAMDir+")")
	f.StringVar(&o.ConfigDir, "pam-config-dir", "", "directory of deskrun's pam_access/pam_time files (env DESKRUN_PAM_CONFIG_DIR; default "+d.ConfigDir+")")
	f.StringVar(&o.FaillockDir, "faillock-dir", "", "pam_faillock tally directory (env DESKRUN_FAILLOCK_DIR; default "+d.FaillockDir+")")
	f.StringVar(&o.NologinFile, "nologin-file", "", "file that closes logons while it exists (env DESKRUN_NOLOGIN_FILE; default "+d.NologinFile+")")
	if hidden {
		for _, n := range []string{"pam-config-dir", "faillock-dir", "nologin-file"} {
			_ = f.MarkHidden(n)
		}
	}
}

// stack resolves the flags, then the environment, then the defaults.
func (o *pamOptions) stack(a *app) pam.Stack {
	s := pam.DefaultStack()
	pick := func(dst *string, flag, env string) {
		if flag != "" {
			*dst = flag
		} else if v := a.io.Getenv(env); v != "" {
			*dst = v
		}
	}
	pick(&s.PAMDir, o.PAMDir, "DESKRUN_PAM_DIR")
	pick(&s.ConfigDir, o.ConfigDir, "DESKRUN_PAM_CONFIG_DIR")
	pick(&s.FaillockDir, o.FaillockDir, "DESKRUN_FAILLOCK_DIR")
	pick(&s.NologinFile, o.NologinFile, "DESKRUN_NOLOGIN_FILE")
	return s
}

func newAgentInstallPAMCmd(a *app) *cobra.Command {
	var o pamOptions
	var directory string
	var deny, unlock int
	var asJSON bool
	c := &cobra.Command{
		Use:   "install-pam",
		Short: "Install deskrun's PAM services (deskrun-interactive, deskrun-batch, deskrun-network)",
		Long: `Write one self-contained PAM service per logon type into the PAM directory, with
nodelay on pam_unix and pam_faillock (a wrong password costs one hash, not 2 s), and
per-logon-type pam_access and pam_time files in the config directory, so an
administrator can deny one logon type to one user:

  echo '-:alice:ALL' | cat - /etc/deskrun/pam/access-batch.conf > x && mv x /etc/deskrun/pam/access-batch.conf

Existing access and time files are kept. The agent refuses to log anyone on while
a service is missing rather than let PAM fall back to the "other" service.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s := o.stack(a)
			s.Deny, s.UnlockTime = deny, unlock
			switch directory {
			case "auto":
				info, _ := identity.DetectJoin(identity.DefaultHostPaths())
				switch info.State {
				case deskrun.JoinSSSD:
					s.Directory = "sss"
				case deskrun.JoinWinbind:
					s.Directory = "winbind"
				}
			case "none", "":
			case "sss", "winbind":
				s.Directory = directory
			default:
				return usagef("--directory must be auto, none, sss or winbind")
			}
			wrote, err := pam.Install(s)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.io.Out, map[string]any{"pam_dir": s.PAMDir, "config_dir": s.ConfigDir, "directory": s.Directory, "wrote": wrote})
			}
			for _, t := range identity.LogonTypes() {
				fmt.Fprintf(a.io.Out, "installed %s\n", s.ServiceFile(t))
			}
			fmt.Fprintf(a.io.Out, "rules: %s (kept if present)\n", strings.Join([]string{s.AccessFile(identity.LogonBatch), "…"}, " "))
			fmt.Fprintln(a.io.Out, "check: deskrun doctor")
			return nil
		},
	}
	o.register(c, false)
	f := c.Flags()
	f.StringVar(&directory, "directory", "auto", "directory module after pam_unix: auto (from the join state), none, sss, winbind")
	f.IntVar(&deny, "deny", pam.DefaultStack().Deny, "failures before pam_faillock locks the account")
	f.IntVar(&unlock, "unlock-time", pam.DefaultStack().UnlockTime, "seconds a faillock lockout lasts")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	return c
}
