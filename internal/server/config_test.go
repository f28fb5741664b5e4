package server

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
)

func TestConfigSources(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "server.yaml")
	require.NoError(t, os.WriteFile(file, []byte("listen: 127.0.0.1:9000\nheartbeat_interval: 3s\nnames: [a.example, 10.0.0.1]\n"), 0o600))
	c := DefaultConfig()
	require.NoError(t, c.LoadFile(file))
	env := map[string]string{"DESKRUN_HEARTBEAT_INTERVAL": "5s", "DESKRUN_NAMES": "b.example,c.example"}
	require.NoError(t, c.LoadEnv(func(k string) string { return env[k] }))
	require.NoError(t, c.Validate())
	require.Equal(t, "127.0.0.1:9000", c.Listen)         // from the file
	require.Equal(t, 5*time.Second, c.HeartbeatInterval) // env wins over the file
	require.Equal(t, []string{"b.example", "c.example"}, c.Names)
	require.Equal(t, "https://127.0.0.1:9000", c.URL)
	require.Equal(t, "sqlite://"+filepath.Join(".deskrun", "deskrun.db"), c.Store)
}

func TestConfigErrorsAreNamed(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "c.yaml")
		require.NoError(t, os.WriteFile(p, []byte(s), 0o600))
		return p
	}
	c := DefaultConfig()
	err := c.LoadFile(write("listen: 127.0.0.1:1\nheartbeat_intervall: 3s\n"))
	require.Equal(t, deskrun.CodeInvalid, deskrun.ErrorCode(err))
	require.Contains(t, err.Error(), "heartbeat_intervall")

	c = DefaultConfig()
	err = c.LoadFile(write("listen: [unclosed\n"))
	require.Equal(t, deskrun.CodeInvalid, deskrun.ErrorCode(err))

	c = DefaultConfig()
	err = c.LoadEnv(func(k string) string {
		if k == "DESKRUN_HEARTBEAT_INTERVAL" {
			return "often"
		}
		return ""
	})
	require.Equal(t, deskrun.CodeInvalid, deskrun.ErrorCode(err))
	require.Contains(t, err.Error(), "DESKRUN_HEARTBEAT_INTERVAL")

	for name, mut := range map[string]func(*Config){
		"listen":    func(c *Config) { c.Listen = "nowhere" },
		"store":     func(c *Config) { c.Store = "mysql://x" },
		"url":       func(c *Config) { c.URL = "http://plain" },
		"lease":     func(c *Config) { c.AgentLease = time.Millisecond },
		"log level": func(c *Config) { c.LogLevel = "loud" },
		"sync":      func(c *Config) { c.SQLiteSync = "OFF" },
	} {
		c := DefaultConfig()
		mut(&c)
		require.Equal(t, deskrun.CodeInvalid, deskrun.ErrorCode(c.Validate()), name)
	}
}
