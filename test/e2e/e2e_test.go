// Package e2e drives the real deskrun binary: a server process, an agent
// process, and the CLI, as a user would, including kill -9 of each.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun/internal/wire"
)

var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "deskrun-e2e-")
	if err != nil {
		panic(err)
	}
	bin = filepath.Join(dir, "deskrun")
	out, err := exec.Command("go", "build", "-o", bin, "../../cmd/deskrun").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build deskrun: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	teardownPAM()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

// world is one server data dir, one agent state dir and a client config.
type world struct {
	t        *testing.T
	dir      string
	addr     string
	env      []string
	server   *exec.Cmd
	agent    *exec.Cmd
	agentDir string
	// serverArgs are extra flags for `deskrun server`.
	serverArgs []string
}

func newWorld(t *testing.T) *world {
	dir := t.TempDir()
	w := &world{t: t, dir: dir, addr: freePort(t), agentDir: filepath.Join(dir, "agent")}
	w.env = append(os.Environ(), "HOME="+dir, "XDG_CONFIG_HOME="+filepath.Join(dir, "config"))
	return w
}

func (w *world) start(args ...string) *exec.Cmd {
	cmd := exec.Command(bin, args...)
	cmd.Env = w.env
	logf, err := os.OpenFile(filepath.Join(w.dir, args[0]+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	require.NoError(w.t, err)
	cmd.Stdout, cmd.Stderr = logf, logf
	require.NoError(w.t, cmd.Start())
	w.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); logf.Close() })
	return cmd
}

func (w *world) startServer() {
	w.server = w.start(append([]string{"server", "--data", filepath.Join(w.dir, "data"), "--listen", w.addr,
		"--heartbeat-interval", "200ms", "--agent-lease", "10s"}, w.serverArgs...)...)
	w.eventually("server ready", func() bool {
		_, err := os.Stat(filepath.Join(w.dir, "data", "admin.token"))
		if err != nil {
			return false
		}
		c, err := net.Dial("tcp", w.addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	tok, err := os.ReadFile(filepath.Join(w.dir, "data", "admin.token"))
	require.NoError(w.t, err)
	w.env = append(w.env, "DESKRUN_SERVER=https://"+w.addr, "DESKRUN_TOKEN="+strings.TrimSpace(string(tok)),
		"DESKRUN_CA_FILE="+filepath.Join(w.dir, "data", "tls", "ca.crt"))
}

func (w *world) kill(cmd *exec.Cmd) {
	require.NoError(w.t, cmd.Process.Signal(syscall.SIGKILL))
	cmd.Wait()
}

// run runs a CLI command and returns stdout; it fails the test on error.
func (w *world) run(args ...string) string {
	w.t.Helper()
	out, err := w.try(args...)
	require.NoError(w.t, err, "deskrun %s: %s", strings.Join(args, " "), out)
	return out
}

func (w *world) try(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = w.env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String() + errb.String(), err
	}
	return out.String(), nil
}

func (w *world) machine(name string) wire.Machine {
	var m wire.Machine
	require.NoError(w.t, json.Unmarshal([]byte(w.run("machine", "show", name, "--json")), &m))
	return m
}

func (w *world) job(id string) wire.Job {
	var j wire.Job
	require.NoError(w.t, json.Unmarshal([]byte(w.run("job", "show", id, "--json")), &j))
	return j
}

func (w *world) eventually(what string, cond func() bool) {
	w.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			logs, _ := filepath.Glob(filepath.Join(w.dir, "*.log"))
			for _, l := range logs {
				b, _ := os.ReadFile(l)
				w.t.Logf("%s:\n%s", l, b)
			}
			w.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestEnrollKillRestart(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.startServer()
	token := strings.TrimSpace(w.run("token", "create", "--enrollment", "--ttl", "10m"))
	require.True(t, strings.HasPrefix(token, "dre1_"), token)
	w.run("agent", "enroll", "--token", token, "--name", "e2e-box", "--state-dir", w.agentDir)
	for _, f := range []string{"signing.key", "seal.key"} {
		st, err := os.Stat(filepath.Join(w.agentDir, f))
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), st.Mode().Perm(), f)
	}
	// The token was for one use.
	out, err := w.try("agent", "enroll", "--token", token, "--name", "again", "--state-dir", filepath.Join(w.dir, "agent2"))
	require.Error(t, err)
	require.Contains(t, out, "EnrollmentTokenUsedUp")

	w.agent = w.start("agent", "run", "--state-dir", w.agentDir)
	w.eventually("machine online", func() bool { return w.machine("e2e-box").State == "online" })
	require.Contains(t, w.run("machine", "list"), "e2e-box")
	// The agent sends its doctor report when it connects; show sums it up.
	doctorLine := regexp.MustCompile(`(?m)^doctor: +\d+ pass, \d+ warn, \d+ fail.* ago\)$`)
	w.eventually("doctor report", func() bool { return doctorLine.MatchString(w.run("machine", "show", "e2e-box")) })

	// kill -9 the agent: offline within the heartbeat window, with a reason.
	w.kill(w.agent)
	killed := time.Now()
	w.eventually("machine offline", func() bool { return w.machine("e2e-box").State == "offline" })
	require.Less(t, time.Since(killed), 3*time.Second)
	require.Contains(t, w.machine("e2e-box").OfflineReason, "connection lost")

	// The agent comes back; then the server is killed and restarted: the
	// agent reconnects by itself.
	w.agent = w.start("agent", "run", "--state-dir", w.agentDir)
	w.eventually("machine online again", func() bool { return w.machine("e2e-box").State == "online" })
	w.kill(w.server)
	w.startServer()
	w.eventually("agent reconnected after server restart", func() bool { return w.machine("e2e-box").State == "online" })
}

func TestJobSurvivesServerKill(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	w.startServer()
	token := strings.TrimSpace(w.run("token", "create", "--enrollment"))
	w.run("agent", "enroll", "--token", token, "--name", "durable", "--state-dir", w.agentDir)
	w.agent = w.start("agent", "run", "--state-dir", w.agentDir)
	w.eventually("machine online", func() bool { return w.machine("durable").State == "online" })

	var j wire.Job
	require.NoError(t, json.Unmarshal([]byte(w.run("job", "run", "--machine", "durable", "--kind", "sleep", "--payload", `{"ms": 1500}`, "--json")), &j))
	w.eventually("job running", func() bool { return w.job(j.ID).State == "running" })

	// The server dies while the agent works; the agent finishes, keeps the
	// result, and delivers it when the server is back.
	w.kill(w.server)
	w.startServer()
	w.eventually("job succeeded", func() bool { return w.job(j.ID).State == "succeeded" })
	done := w.job(j.ID)
	require.JSONEq(t, `{"slept_ms":1500}`, string(done.Result))

	// Recorded once: the agent's outbox is empty, and another reconnect
	// changes nothing.
	w.eventually("agent outbox drained", func() bool {
		entries, _ := os.ReadDir(filepath.Join(w.agentDir, "jobs"))
		return len(entries) == 0
	})
	w.kill(w.agent)
	w.agent = w.start("agent", "run", "--state-dir", w.agentDir)
	w.eventually("machine online", func() bool { return w.machine("durable").State == "online" })
	again := w.job(j.ID)
	require.Equal(t, done.FinishedAt, again.FinishedAt)
	require.Equal(t, done.UpdatedAt, again.UpdatedAt)
	var list wire.JobList
	require.NoError(t, json.Unmarshal([]byte(w.run("job", "list", "--machine", "durable", "--json")), &list))
	require.Len(t, list.Jobs, 1)
}
