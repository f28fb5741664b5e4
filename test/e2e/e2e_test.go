// Package e2e drives the real deskrun binary: a server process, an agent
// process, and the CLI, as a user would, including kill -9 of each.
package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun/internal/wire"
	"github.com/deskrun/deskrun/test/world"
)

func TestMain(m *testing.M) { world.Main(m, "e2e", pamFx) }

// e2eWorld is a world with this package's helpers.
type e2eWorld struct{ *world.World }

func newWorld(t *testing.T) *e2eWorld { return &e2eWorld{world.New(t)} }

func (w *e2eWorld) machine(name string) wire.Machine {
	var m wire.Machine
	require.NoError(w.T, json.Unmarshal([]byte(w.Run("machine", "show", name, "--json")), &m))
	return m
}

func (w *e2eWorld) job(id string) wire.Job {
	var j wire.Job
	require.NoError(w.T, json.Unmarshal([]byte(w.Run("job", "show", id, "--json")), &j))
	return j
}

func TestEnrollKillRestart(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.StartServer()
	token := strings.TrimSpace(w.Run("token", "create", "--enrollment", "--ttl", "10m"))
	require.True(t, strings.HasPrefix(token, "dre1_"), token)
	w.Run("agent", "enroll", "--token", token, "--name", "e2e-box", "--state-dir", w.AgentDir)
	for _, f := range []string{"signing.key", "seal.key"} {
		st, err := os.Stat(filepath.Join(w.AgentDir, f))
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), st.Mode().Perm(), f)
	}
	// The token was for one use.
	out, err := w.Try("agent", "enroll", "--token", token, "--name", "again", "--state-dir", filepath.Join(w.Dir, "agent2"))
	require.Error(t, err)
	require.Contains(t, out, "EnrollmentTokenUsedUp")

	w.Agent = w.Start("agent", "run", "--state-dir", w.AgentDir)
	w.Eventually("machine online", func() bool { return w.machine("e2e-box").State == "online" })
	require.Contains(t, w.Run("machine", "list"), "e2e-box")
	// The agent sends its doctor report when it connects; show sums it up.
	doctorLine := regexp.MustCompile(`(?m)^doctor: +\d+ pass, \d+ warn, \d+ fail.* ago\)$`)
	w.Eventually("doctor report", func() bool { return doctorLine.MatchString(w.Run("machine", "show", "e2e-box")) })

	// kill -9 the agent: offline within the heartbeat window, with a reason.
	w.Kill(w.Agent)
	killed := time.Now()
	w.Eventually("machine offline", func() bool { return w.machine("e2e-box").State == "offline" })
	require.Less(t, time.Since(killed), 3*time.Second)
	require.Contains(t, w.machine("e2e-box").OfflineReason, "connection lost")

	// The agent comes back; then the server is killed and restarted: the
	// agent reconnects by itself.
	w.Agent = w.Start("agent", "run", "--state-dir", w.AgentDir)
	w.Eventually("machine online again", func() bool { return w.machine("e2e-box").State == "online" })
	w.Kill(w.Server)
	w.StartServer()
	w.Eventually("agent reconnected after server restart", func() bool { return w.machine("e2e-box").State == "online" })
}

func TestJobSurvivesServerKill(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.StartServer()
	token := strings.TrimSpace(w.Run("token", "create", "--enrollment"))
	w.Run("agent", "enroll", "--token", token, "--name", "durable", "--state-dir", w.AgentDir)
	w.Agent = w.Start("agent", "run", "--state-dir", w.AgentDir)
	w.Eventually("machine online", func() bool { return w.machine("durable").State == "online" })

	var j wire.Job
	require.NoError(t, json.Unmarshal([]byte(w.Run("job", "run", "--machine", "durable", "--kind", "sleep", "--payload", `{"ms": 1500}`, "--json")), &j))
	w.Eventually("job running", func() bool { return w.job(j.ID).State == "running" })

	// The server dies while the agent works; the agent finishes, keeps the
	// result, and delivers it when the server is back.
	w.Kill(w.Server)
	w.StartServer()
	w.Eventually("job succeeded", func() bool { return w.job(j.ID).State == "succeeded" })
	done := w.job(j.ID)
	require.JSONEq(t, `{"slept_ms":1500}`, string(done.Result))

	// Recorded once: the agent's outbox is empty, and another reconnect
	// changes nothing.
	w.Eventually("agent outbox drained", func() bool {
		entries, _ := os.ReadDir(filepath.Join(w.AgentDir, "jobs"))
		return len(entries) == 0
	})
	w.Kill(w.Agent)
	w.Agent = w.Start("agent", "run", "--state-dir", w.AgentDir)
	w.Eventually("machine online", func() bool { return w.machine("durable").State == "online" })
	again := w.job(j.ID)
	require.Equal(t, done.FinishedAt, again.FinishedAt)
	require.Equal(t, done.UpdatedAt, again.UpdatedAt)
	var list wire.JobList
	require.NoError(t, json.Unmarshal([]byte(w.Run("job", "list", "--machine", "durable", "--json")), &list))
	require.Len(t, list.Jobs, 1)
}
