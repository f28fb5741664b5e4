package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/agent"
	"github.com/deskrun/deskrun/internal/client"
	"github.com/deskrun/deskrun/internal/server"
	"github.com/deskrun/deskrun/internal/wire"
)

func newDevCmd(a *app) *cobra.Command {
	var sf serverFlags
	var name string
	var noClientConfig bool
	var po pamOptions
	c := &cobra.Command{
		Use:   "dev",
		Short: "Run a server and a local agent in one process, with no setup",
		Long: `Run everything on this machine: a server on SQLite in the data directory, and an
in-process agent that enrolls this machine. Prints the console URL and an admin
token, and writes the client config so that other deskrun commands work with no flags.
Restarting on the same data directory keeps everything.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.serverConfig(cmd.Flags(), &sf)
			if err != nil {
				return err
			}
			return a.runDev(cmd.Context(), cfg, name, !noClientConfig, &po)
		},
	}
	addServerFlags(c.Flags(), &sf, false)
	c.Flags().StringVar(&name, "name", "", "name of the local machine (default: the hostname)")
	c.Flags().BoolVar(&noClientConfig, "no-client-config", false, "do not write the client config")
	po.register(c, true)
	return c
}

func (a *app) runDev(ctx context.Context, cfg server.Config, name string, writeClient bool, po *pamOptions) error {
	log := a.logger(cfg.LogLevel)
	s := &server.Server{Config: cfg, Log: log, Version: Version}
	if err := s.Start(ctx); err != nil {
		return err
	}
	defer s.Stop()

	tokenPath := filepath.Join(cfg.Data, server.BootstrapTokenFile)
	adminToken := s.AdminToken
	if adminToken == "" {
		b, err := os.ReadFile(tokenPath)
		if err != nil {
			return fmt.Errorf("read admin token (%s): %w", tokenPath, err)
		}
		adminToken = strings.TrimSpace(string(b))
	}

	stateDir := filepath.Join(cfg.Data, "agent")
	info := agent.HostInfo(agent.DefaultHostFiles, 1)
	if _, err := agent.LoadIdentity(stateDir); errors.Is(err, agent.ErrNotEnrolled) {
		_, tok, err := s.Control.CreateToken(ctx, wire.TokenCreate{Kind: string(deskrun.TokenEnrollment), Name: "deskrun dev local agent", TTL: "5m"})
		if err != nil {
			return err
		}
		if _, err := agent.Enroll(ctx, agent.EnrollOptions{Token: tok, Name: name, StateDir: stateDir, Info: info}); err != nil {
			return fmt.Errorf("enroll the local agent: %w", err)
		}
	} else if err != nil {
		return err
	}

	caFile, _ := filepath.Abs(filepath.Join(cfg.Data, "tls", "ca.crt"))
	cfgPath := a.global.ConfigFile
	if cfgPath == "" {
		cfgPath = client.DefaultConfigPath(a.io.Getenv)
	}
	if writeClient {
		if err := client.SaveConfig(cfgPath, client.Config{Server: cfg.URL, Token: adminToken, CAFile: caFile}); err != nil {
			return fmt.Errorf("write client config: %w", err)
		}
	}

	connected := make(chan struct{}, 1)
	logon, err := a.logonProvider(po, stateDir, "", log)
	if err != nil {
		return err
	}
	ag := &agent.Agent{StateDir: stateDir, Log: log.With("component", "agent"), Info: info, Logon: logon, ReapRuns: true,
		Doctor: a.agentDoctor(po, stateDir, ""),
		OnConnected: func() {
			select {
			case connected <- struct{}{}:
			default:
			}
		}}
	agentErr := make(chan error, 1)
	go func() { agentErr <- ag.Run(ctx) }()
	select {
	case <-connected:
	case err := <-agentErr:
		return fmt.Errorf("local agent: %w", err)
	case <-ctx.Done():
		return nil
	}

	w := a.io.Out
	fmt.Fprintf(w, "\ndeskrun dev is running.\n\n")
	fmt.Fprintf(w, "  console and API:  %s\n", cfg.URL)
	fmt.Fprintf(w, "  admin token:      %s\n", adminToken)
	fmt.Fprintf(w, "  CA certificate:   %s (SHA-256 %s)\n", caFile, s.TLS.Fingerprint)
	fmt.Fprintf(w, "  data directory:   %s\n", cfg.Data)
	if writeClient {
		fmt.Fprintf(w, "  client config:    %s  (try: deskrun machine list)\n", cfgPath)
	}
	if os.Geteuid() == 0 {
		fmt.Fprintf(w, "  local agent:      running as root: flows can run as any user of this machine\n")
	} else {
		who := fmt.Sprint(os.Geteuid())
		if u, err := user.Current(); err == nil {
			who = u.Username
		}
		fmt.Fprintf(w, "  local agent:      NOT root: flows can run only as %s (run `sudo deskrun dev` to run them as any user)\n", who)
	}
	fmt.Fprintf(w, "\nPress Ctrl-C to stop.\n")

	select {
	case <-ctx.Done():
		return nil
	case err := <-agentErr:
		return err
	}
}
