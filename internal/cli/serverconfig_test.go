package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// Flags beat DESKRUN_* env, which beats the YAML file; flags of the
// command that are not server settings (dev's --name) are left alone.
func TestServerConfigPrecedence(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "s.yaml")
	require.NoError(t, os.WriteFile(file, []byte("listen: 127.0.0.1:7001\nheartbeat_interval: 7s\nlog_level: warn\n"), 0o600))
	env := map[string]string{"DESKRUN_HEARTBEAT_INTERVAL": "5s", "DESKRUN_LOG_LEVEL": "error"}
	var out bytes.Buffer
	code := Main(context.Background(), []string{"server", "--print-config", "--server-config", file,
		"--log-level", "debug", "--names", "a.example,b.example", "--url", "https://h.example:9#x"},
		IO{Out: &out, Err: &out, Getenv: func(k string) string { return env[k] }})
	require.Equal(t, ExitOK, code, out.String())
	s := out.String()
	require.Contains(t, s, "listen: 127.0.0.1:7001") // file
	require.Contains(t, s, "heartbeat_interval: 5s") // env over file
	require.Contains(t, s, "log_level: debug")       // flag over env
	require.Contains(t, s, "- a.example")
	require.Contains(t, s, "- b.example")
	require.Contains(t, s, "https://h.example:9#x") // a string is taken whole

	out.Reset()
	code = Main(context.Background(), []string{"server", "--print-config", "--heartbeat-interval", "often"},
		IO{Out: &out, Err: &out, Getenv: func(string) string { return "" }})
	require.Equal(t, ExitUsage, code, out.String())
	require.Contains(t, out.String(), "--heartbeat-interval")
}
