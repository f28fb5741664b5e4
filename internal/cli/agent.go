package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"time"

	"github.com/spf13/cobra"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/agent"
	"github.com/deskrun/deskrun/internal/doctor"
	"github.com/deskrun/deskrun/internal/identity"
	"github.com/deskrun/deskrun/internal/identity/pam"
)

func newAgentCmd(a *app) *cobra.Command {
	c := &cobra.Command{
		Use:   "agent",
		Short: "Enroll this machine and run its agent",
		Long: `The agent runs on each target machine, as root (a service), so it can log users on
and run flows as them. It dials out to the server and never listens.`,
	}
	c.AddCommand(newAgentEnrollCmd(a), newAgentRunCmd(a), newAgentInstallPAMCmd(a),
		newAgentDirectoryCmd(a),
	)
	return c
}

func newAgentEnrollCmd(a *app) *cobra.Command {
	var token, name, state string
	var force, asJSON bool
	c := &cobra.Command{
		Use:   "enroll --token T",
		Short: "Register this machine with a server using an enrollment token",
		Long: `Make the agent's keys (Ed25519 to authenticate, HPKE MLKEM768X25519 for sealed
credentials) in the state directory (0600) and register the machine with the server
named in the token, trusting only the CA whose fingerprint the token carries.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if token == "" {
				token = a.io.Getenv("DESKRUN_ENROLLMENT_TOKEN")
			}
			if token == "" {
				return usagef("--token is required (or DESKRUN_ENROLLMENT_TOKEN)")
			}
			if state == "" {
				state = defaultAgentStateDir(a.io.Getenv)
			}
			m, err := agent.Enroll(cmd.Context(), agent.EnrollOptions{Token: token, Name: name, StateDir: state,
				Info: agent.HostInfo(agent.DefaultHostFiles, 0), Force: force})
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.io.Out, m)
			}
			fmt.Fprintf(a.io.Out, "enrolled machine %s (%s); state in %s\nstart the agent with: deskrun agent run --state-dir %s\n", m.Name, m.ID, state, state)
			return nil
		},
	}
	c.Flags().StringVar(&token, "token", "", "enrollment token from `deskrun token create --enrollment`")
	c.Flags().StringVar(&name, "name", "", "machine name (default: the hostname)")
	c.Flags().StringVar(&state, "state-dir", "", "agent state directory (default /var/lib/deskrun/agent as root)")
	c.Flags().BoolVar(&force, "force", false, "enroll again with new keys even if already enrolled")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func newAgentRunCmd(a *app) *cobra.Command {
	var state, logLevel, agentConfig string
	var slots int
	var po pamOptions
	c := &cobra.Command{
		Use:   "run",
		Short: "Connect to the server and run the jobs it pushes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if state == "" {
				state = defaultAgentStateDir(a.io.Getenv)
			}
			log := a.logger(logLevel)
			warnIdentity(a, log.Warn)
			logon, err := a.logonProvider(&po, state, agentConfig, log)
			if err != nil {
				return err
			}
			ag := &agent.Agent{StateDir: state, Log: log, Info: agent.HostInfo(agent.DefaultHostFiles, slots), Logon: logon, ReapRuns: true,
				Doctor: a.agentDoctor(&po, state, agentConfig)}
			return ag.Run(cmd.Context())
		},
	}
	c.Flags().StringVar(&state, "state-dir", "", "agent state directory (default /var/lib/deskrun/agent as root)")
	c.Flags().IntVar(&slots, "slots", 1, "how many runs this machine takes at once")
	c.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	c.Flags().StringVar(&agentConfig, "agent-config", "", "agent config with a directory: section (default "+agent.DefaultConfigFile+" if it exists)")
	po.register(c, true)
	return c
}

// logonProvider is the PAM provider the agent logs users on with: the same
// one `deskrun diagnose logon` uses.
//
// When the agent config (/etc/deskrun/agent.yaml, or --agent-config) has a
// directory section, the provider asks the directory why PAM refused a
// domain user (pam_sss says PERM_DENIED alike for disabled, expired,
// locked and logon hours), so the reason is exact.
func (a *app) logonProvider(po *pamOptions, stateDir, agentConfig string, log *slog.Logger) (identity.Provider, error) {
	join, _ := identity.DetectJoin(identity.DefaultHostPaths())
	host, _ := os.Hostname()
	cfg := pam.Config{Stack: po.stack(a), Join: join, Machine: host, KeepModulesLoaded: true}
	// The services install-pam wrote say whether logons go through a
	// directory module, whatever DetectJoin found.
	if cfg.Stack.Directory == "" {
		cfg.Stack.Directory = cfg.Stack.InstalledDirectory(identity.LogonInteractive)
	}
	explicit := agentConfig != ""
	if !explicit {
		agentConfig = agent.DefaultConfigFile
	}
	if _, err := os.Stat(agentConfig); err == nil || explicit {
		dc, err := agent.LoadDirectoryConfig(agentConfig)
		if err != nil {
			return nil, err
		}
		if dc != nil {
			id, err := agent.LoadIdentity(stateDir)
			if err != nil {
				return nil, err
			}
			dp, err := dc.DirectoryProvider(id.SealKey, host)
			if err != nil {
				return nil, err
			}
			cfg.Directory = dp
			log.Info("directory configured: refusals of domain users are explained from it", "config", agentConfig)
		}
	}
	return pam.New(cfg), nil
}

// agentDoctor is the agent's doctor report: the machine-wide checks of
// `deskrun doctor` (no user), with the agent's own PAM stack, state and
// directory config, each network check bounded to 2s.
func (a *app) agentDoctor(po *pamOptions, stateDir, agentConfig string) func(context.Context) deskrun.DoctorReport {
	if agentConfig == "" {
		agentConfig = agent.DefaultConfigFile
	}
	o := doctor.Options{Stack: po.stack(a), Paths: identity.DefaultHostPaths(), Timeout: 2 * time.Second,
		DirectoryConfig: agentConfig, StateDir: stateDir}
	return func(ctx context.Context) deskrun.DoctorReport { return doctor.Run(ctx, o) }
}

// warnIdentity says, once, whom this agent can act as.
func warnIdentity(a *app, warn func(msg string, args ...any)) {
	if os.Geteuid() == 0 {
		return
	}
	name := fmt.Sprint(os.Geteuid())
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	warn("the agent is not running as root: it can run flows only as the invoking user", "user", name, "fix", "run the agent as root (sudo) to run flows as any user")
}
