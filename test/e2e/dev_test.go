package e2e

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun/internal/wire"
	"github.com/deskrun/deskrun/test/world"
)

// TestDev starts `deskrun dev`, uses the client config it writes with no
// flags, restarts it on the same data dir, and finds everything kept.
func TestDev(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	data := filepath.Join(w.Dir, "data")
	startDev := func() (*exec.Cmd, string) {
		cmd := exec.Command(world.Bin, "dev", "--data", data, "--listen", w.Addr, "--name", "devbox", "--log-level", "warn")
		cmd.Env = w.Env
		out, err := cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		sc := bufio.NewScanner(out)
		var banner strings.Builder
		for sc.Scan() {
			banner.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "Press Ctrl-C") {
				break
			}
		}
		go func() {
			for sc.Scan() {
			}
		}()
		return cmd, banner.String()
	}
	dev, banner := startDev()
	require.Contains(t, banner, "https://"+w.Addr)
	require.Contains(t, banner, "admin token:      drt_")
	// Written client config: no --server, no --token.
	cfg := filepath.Join(w.Dir, "config", "deskrun", "config.yaml")
	st, err := os.Stat(cfg)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	var list wire.MachineList
	require.NoError(t, json.Unmarshal([]byte(w.Run("machine", "list", "--json")), &list))
	require.Len(t, list.Machines, 1)
	first := list.Machines[0]
	require.Equal(t, "devbox", first.Name)
	require.Equal(t, "online", first.State)
	require.Equal(t, wire.ProtocolVersion, first.ProtocolVersion)
	out := w.Run("job", "run", "--machine", "devbox", "--wait", "10s")
	require.Contains(t, out, "succeeded")

	w.Kill(dev)
	_, banner2 := startDev()
	require.Equal(t, tokenLine(banner), tokenLine(banner2), "the admin token survives a restart")
	w.Eventually("machine online after restart", func() bool {
		var l wire.MachineList
		if json.Unmarshal([]byte(w.Run("machine", "list", "--json")), &l) != nil || len(l.Machines) != 1 {
			return false
		}
		return l.Machines[0].ID == first.ID && l.Machines[0].State == "online"
	})
	var jobs wire.JobList
	require.NoError(t, json.Unmarshal([]byte(w.Run("job", "list", "--json")), &jobs))
	require.Len(t, jobs.Jobs, 1)

	require.Contains(t, w.Run("migrate", "--data", data), "up to date")
}

func tokenLine(banner string) string {
	for _, l := range strings.Split(banner, "\n") {
		if strings.Contains(l, "admin token:") {
			return l
		}
	}
	return ""
}
