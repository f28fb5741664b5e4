package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun/internal/client"
	"github.com/deskrun/deskrun/internal/server"
)

// startCLIServer starts an in-process server and writes a client config
// for it; it returns the --config path.
func startCLIServer(t *testing.T) string {
	t.Helper()
	cfg := server.DefaultConfig()
	cfg.Data = t.TempDir()
	cfg.Listen = "127.0.0.1:0"
	s := &server.Server{Config: cfg, Log: slog.New(slog.DiscardHandler), Version: "test"}
	require.NoError(t, s.Start(t.Context()))
	t.Cleanup(s.Stop)
	tok, err := os.ReadFile(filepath.Join(cfg.Data, server.BootstrapTokenFile))
	require.NoError(t, err)
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	require.NoError(t, os.WriteFile(ca, s.TLS.CAPEM, 0o600))
	path := filepath.Join(dir, "config.yaml")
	require.NoError(t, client.SaveConfig(path, client.Config{Server: s.Config.URL, Token: strings.TrimSpace(string(tok)), CAFile: ca}))
	return path
}

func runCLI(args ...string) (int, string) {
	var out bytes.Buffer
	code := Main(context.Background(), args, IO{Out: &out, Err: &out, Getenv: func(string) string { return "" }})
	return code, out.String()
}

func TestDesktopFlowPushShowsSchemaErrorsFirst(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "desktopflow.yaml"), []byte("name: x\nrun: echo\ninputs:\n  - name: a\n    typo: 1\n"), 0o644))
	// No server is configured: the manifest's error comes first anyway.
	code, out := runCLI("--config", filepath.Join(t.TempDir(), "none.yaml"), "desktopflow", "push", dir)
	require.Equal(t, ExitFailed, code, out)
	require.Contains(t, out, "error: DesktopFlowInvalid: "+filepath.Join(dir, "desktopflow.yaml")+":5:5: field inputs[0].typo: unknown field")
}

func TestDesktopFlowCommands(t *testing.T) {
	t.Parallel()
	cfg := startCLIServer(t)
	hello := filepath.Join("..", "..", "examples", "hello")

	code, out := runCLI("--config", cfg, "desktopflow", "push", hello)
	require.Equal(t, ExitOK, code, out)
	require.Contains(t, out, "pushed hello version 1")
	require.Contains(t, out, "digest: sha256:")

	code, out = runCLI("--config", cfg, "desktopflow", "push", hello, "--json")
	require.Equal(t, ExitOK, code, out)
	var res pushResult
	require.NoError(t, json.Unmarshal([]byte(out), &res), out)
	require.False(t, res.Created, "the same content is no new version")
	require.Equal(t, 1, res.DesktopFlow.Version)

	code, out = runCLI("--config", cfg, "desktopflow", "list")
	require.Equal(t, ExitOK, code, out)
	require.Regexp(t, `(?m)^hello\s+1\s+no\s+3\s+`, out)

	code, out = runCLI("--config", cfg, "desktopflow", "show", "hello")
	require.Equal(t, ExitOK, code, out)
	for _, want := range []string{"hello (version 1 of 1)", "run:          ./hello.sh", "timeout:      1m0s",
		"who", "world", "greeting", "versions:"} {
		require.Contains(t, out, want)
	}
	code, out = runCLI("--config", cfg, "desktopflow", "show", "hello", "--version", "1", "--json")
	require.Equal(t, ExitOK, code, out)
	require.Contains(t, out, `"run": "./hello.sh"`)
	code, out = runCLI("--config", cfg, "desktopflow", "show", "hello", "--version", "7")
	require.Equal(t, ExitFailed, code, out)
	require.Contains(t, out, "NotFound")

	code, out = runCLI("--config", cfg, "desktopflow", "delete", "hello")
	require.Equal(t, ExitOK, code, out)
	code, out = runCLI("--config", cfg, "desktopflow", "show", "hello")
	require.Equal(t, ExitFailed, code, out)
	require.Contains(t, out, "deskrun desktopflow list")
}
