package cli

import (
	"fmt"

	"github.com/goccy/go-yaml"
	"github.com/spf13/cobra"

	"github.com/deskrun/deskrun/internal/agent"
	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/seal"
)

func newAgentDirectoryCmd(a *app) *cobra.Command {
	c := &cobra.Command{
		Use:   "directory",
		Short: "Configure the directory the agent asks why a domain logon failed",
		Long: `The "directory:" section of the agent's config (default ` + agent.DefaultConfigFile + `) names the
domain controller (LDAPS, or LDAP with StartTLS, certificate verified) and an optional
read-only service account. With it, a domain user refused by pam_sss gets the exact reason
(disabled, expired, locked out, logon hours, smart card) instead of PAM's "permission denied".
The service account's password is sealed to this agent's key: the file never holds it in clear.`,
	}
	c.AddCommand(newAgentDirectorySetPasswordCmd(a), newAgentDirectoryDiscoverCmd(a))
	return c
}

func newAgentDirectorySetPasswordCmd(a *app) *cobra.Command {
	var state, config string
	var fromStdin bool
	c := &cobra.Command{
		Use:   "set-service-password",
		Short: "Seal the directory service account's password into the agent's config",
		Long: `Read the password of the directory section's service_user (or service_dn), seal it to this
agent's own key (HPKE, the key made at enrollment) and write it as service_password_sealed,
keeping the rest of the file. Only this agent can open it; enrolling again needs a new one.`,
		Example: `  printf '%s' "$SVC_PW" | deskrun agent directory set-service-password --password-stdin`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if state == "" {
				state = defaultAgentStateDir(a.io.Getenv)
			}
			id, err := agent.LoadIdentity(state)
			if err != nil {
				return err
			}
			defer seal.Zero(id.SealKey)
			pub, err := seal.PublicKeyOf(id.SealKey)
			if err != nil {
				return err
			}
			pw, err := readPassword(a, fromStdin, "the directory service account")
			if err != nil {
				return err
			}
			defer seal.Zero(pw)
			if len(pw) == 0 {
				return usagef("empty password")
			}
			if err := agent.SetServicePassword(config, pub, pw); err != nil {
				return err
			}
			fmt.Fprintf(a.io.Out, "sealed the service account's password into %s (to key %s)\ncheck it: deskrun doctor --directory-config %s\n",
				config, seal.KeyID(pub), config)
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&state, "state-dir", "", "agent state directory (default /var/lib/deskrun/agent as root)")
	f.StringVar(&config, "config", agent.DefaultConfigFile, "agent config file with the directory: section")
	f.BoolVar(&fromStdin, "password-stdin", false, "read the password from stdin (else prompt without echo)")
	return c
}

func newAgentDirectoryDiscoverCmd(a *app) *cobra.Command {
	var sssdConf, krb5Conf string
	c := &cobra.Command{
		Use:   "discover",
		Short: "Print a directory: section for agent.yaml from this machine's SSSD configuration",
		Long: `Read sssd.conf (ldap_uri or ad_server, ldap_search_base, ldap_tls_cacert, krb5_realm,
ldap_default_bind_dn) and krb5.conf, and print the matching directory: section. Secrets are
not copied: seal the service account's password with set-service-password.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dc, err := agent.DiscoverDirectory(identity.HostPaths{SSSDConf: sssdConf, Krb5Conf: krb5Conf})
			if err != nil {
				return err
			}
			if dc == nil {
				return usagef("%s configures no SSSD domain: write the directory: section by hand (see docs/identity.md)", sssdConf)
			}
			b, err := yaml.Marshal(map[string]*agent.DirectoryConfig{"directory": dc})
			if err != nil {
				return err
			}
			_, err = a.io.Out.Write(b)
			return err
		},
	}
	d := identity.DefaultHostPaths()
	c.Flags().StringVar(&sssdConf, "sssd-conf", d.SSSDConf, "SSSD configuration")
	c.Flags().StringVar(&krb5Conf, "krb5-conf", d.Krb5Conf, "Kerberos configuration")
	return c
}
