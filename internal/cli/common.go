package cli

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/deskrun/deskrun/internal/client"
)

// Version is deskrun's version; release builds set it with -ldflags.
var Version = "0.1.0-dev"

// client builds an API client from flags, env and the config file, in
// that order of precedence.
func (a *app) client() (*client.Client, error) {
	path := a.global.ConfigFile
	if path == "" {
		path = client.DefaultConfigPath(a.io.Getenv)
	}
	cfg, err := client.LoadConfig(path)
	if err != nil {
		return nil, err
	}
	if v := a.io.Getenv("DESKRUN_SERVER"); v != "" {
		cfg.Server = v
	}
	if v := a.io.Getenv("DESKRUN_TOKEN"); v != "" {
		cfg.Token = v
	}
	if v := a.io.Getenv("DESKRUN_CA_FILE"); v != "" {
		cfg.CAFile = v
	}
	if a.global.Server != "" {
		cfg.Server = a.global.Server
	}
	if a.global.Token != "" {
		cfg.Token = a.global.Token
	}
	return client.FromConfig(cfg)
}

func (a *app) logger(level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewTextHandler(a.io.Err, &slog.HandlerOptions{Level: l}))
}

func table(w io.Writer, header string, rows [][]string) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := time.Since(t).Round(time.Second)
	if d < time.Second {
		return "just now"
	}
	return d.String() + " ago"
}

// defaultAgentStateDir is /var/lib/deskrun/agent for root, else
// $XDG_STATE_HOME/deskrun/agent (or ~/.local/state/deskrun/agent).
func defaultAgentStateDir(getenv func(string) string) string {
	if d := getenv("DESKRUN_AGENT_STATE"); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		return "/var/lib/deskrun/agent"
	}
	if x := getenv("XDG_STATE_HOME"); x != "" {
		return filepath.Join(x, "deskrun", "agent")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".local", "state", "deskrun", "agent")
}
