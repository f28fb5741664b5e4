package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/deskrun/deskrun/internal/server"
	"github.com/deskrun/deskrun/internal/store/sqlite"
)

// serverFlags binds the server's flags. Flags override DESKRUN_* env,
// which overrides the YAML file, which overrides the defaults.
type serverFlags struct {
	configFile string
	printCfg   bool
}

func addServerFlags(fs *pflag.FlagSet, sf *serverFlags, withFile bool) {
	d := server.DefaultConfig()
	if withFile {
		fs.StringVar(&sf.configFile, "server-config", "", "server YAML config file (keys as in --print-config)")
		fs.BoolVar(&sf.printCfg, "print-config", false, "print the effective configuration as YAML and exit")
	}
	fs.String("listen", d.Listen, "TLS address for the API, the agents and the console")
	fs.String("data", d.Data, "data directory (TLS identity, SQLite store, bootstrap token)")
	fs.String("store", "", "store URL (default sqlite://DATA/deskrun.db)")
	fs.String("url", "", "URL clients and agents use (default https://LISTEN)")
	fs.StringSlice("names", nil, "extra DNS names or IPs for the server certificate")
	fs.Duration("heartbeat-interval", d.HeartbeatInterval, "agent heartbeat interval; three missed make an agent offline")
	fs.Duration("agent-lease", d.AgentLease, "how long a lost agent's jobs wait before they fail with AgentLost")
	fs.Int64("max-body-bytes", d.MaxBodyBytes, "largest accepted API request body")
	fs.String("log-level", d.LogLevel, "debug, info, warn or error")
	fs.String("sqlite-sync", d.SQLiteSync, "SQLite synchronous mode: FULL (durable) or NORMAL")
	fs.Duration("connection-test-timeout", d.ConnectionTestTimeout, "how long a test logon on a machine may take")
	fs.Int("expiry-warn-days", d.ExpiryWarnDays, "a password expiring within this many days makes its connection \"expiring\"")
	fs.Duration("retest-interval", d.RetestInterval, "re-test connections not tested for this long (0: never)")
	fs.String("notify-url", "", "webhook for connection.broken / connection.expiring (secret: DESKRUN_NOTIFY_SECRET)")
	fs.Duration("queue-timeout", d.QueueTimeout, "a run not placed within this fails with NoCandidateMachine")
	fs.Int64("max-run-log-bytes", d.MaxRunLogBytes, "output stored per run; the rest is dropped with a note")
	// Mark these flags as server settings: serverConfig applies exactly
	// the marked flags, whatever else a command defines.
	keys := map[string]bool{}
	for _, k := range server.Keys() {
		keys[strings.ReplaceAll(k, "_", "-")] = true
	}
	fs.VisitAll(func(f *pflag.Flag) {
		if keys[f.Name] {
			_ = fs.SetAnnotation(f.Name, serverSetting, nil)
		}
	})
}

// serverSetting annotates the flags that set a server.Config field.
const serverSetting = "deskrun/server-setting"

// serverConfig resolves the configuration of a server command.
func (a *app) serverConfig(fs *pflag.FlagSet, sf *serverFlags) (server.Config, error) {
	cfg := server.DefaultConfig()
	if sf.configFile != "" {
		if err := cfg.LoadFile(sf.configFile); err != nil {
			return cfg, err
		}
	}
	if err := cfg.LoadEnv(a.io.Getenv); err != nil {
		return cfg, err
	}
	var ferr error
	fs.Visit(func(f *pflag.Flag) {
		if _, ok := f.Annotations[serverSetting]; !ok || ferr != nil {
			return // not a server setting (--name, --json, the PAM flags, …)
		}
		val := f.Value.String()
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			val = strings.Join(sv.GetSlice(), ",")
		}
		if err := cfg.Set(strings.ReplaceAll(f.Name, "-", "_"), val); err != nil {
			ferr = usagef("--%s: %v", f.Name, err)
		}
	})
	if ferr != nil {
		return cfg, ferr
	}
	return cfg, cfg.Validate()
}

func newServerCmd(a *app) *cobra.Command {
	var sf serverFlags
	c := &cobra.Command{
		Use:   "server",
		Short: "Run the control plane (API, agents' endpoint, store)",
		Long: `Run the control plane. On first start it makes its own CA and server certificate
in DATA/tls and writes a bootstrap admin token to DATA/admin.token (0600).

Configuration comes from flags, then DESKRUN_* environment variables (DESKRUN_LISTEN,
DESKRUN_DATA, DESKRUN_HEARTBEAT_INTERVAL, …), then --server-config FILE, then defaults.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.serverConfig(cmd.Flags(), &sf)
			if err != nil {
				return err
			}
			if sf.printCfg {
				fmt.Fprint(a.io.Out, cfg.YAML())
				return nil
			}
			s := &server.Server{Config: cfg, Log: a.logger(cfg.LogLevel), Version: Version}
			if err := s.Start(cmd.Context()); err != nil {
				return err
			}
			defer s.Stop()
			fmt.Fprintf(a.io.Out, "deskrun server %s listening on %s\n  CA fingerprint (SHA-256): %s\n", Version, cfg.URL, s.TLS.Fingerprint)
			if s.AdminToken != "" {
				fmt.Fprintf(a.io.Out, "  bootstrap admin token written to %s\n", filepath.Join(cfg.Data, server.BootstrapTokenFile))
			}
			<-cmd.Context().Done()
			return nil
		},
	}
	addServerFlags(c.Flags(), &sf, true)
	return c
}

func newMigrateCmd(a *app) *cobra.Command {
	var sf serverFlags
	var asJSON bool
	c := &cobra.Command{
		Use:   "migrate",
		Short: "Apply the store's pending schema migrations and exit",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.serverConfig(cmd.Flags(), &sf)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(filepath.Dir(cfg.StorePath()), 0o700); err != nil {
				return err
			}
			db, err := sqlite.Open(cmd.Context(), cfg.StorePath())
			if err != nil {
				return err
			}
			defer db.Close()
			applied, err := db.Migrate(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.io.Out, map[string]any{"store": cfg.Store, "applied": applied})
			}
			if len(applied) == 0 {
				fmt.Fprintf(a.io.Out, "%s is up to date\n", cfg.Store)
			} else {
				fmt.Fprintf(a.io.Out, "%s: applied migrations %v\n", cfg.Store, applied)
			}
			return nil
		},
	}
	addServerFlags(c.Flags(), &sf, true)
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}
