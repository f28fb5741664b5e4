package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/wire"
	"github.com/deskrun/deskrun/test/world"
)

func (w *e2eWorld) runFlow(args ...string) (wire.Run, string, error) {
	out, err := w.Try(append([]string{"desktopflow", "run"}, append(args, "--json")...)...)
	var r wire.Run
	if i := strings.Index(out, "{"); i >= 0 {
		_ = json.Unmarshal([]byte(out[i:]), &r)
	}
	return r, out, err
}

func (w *e2eWorld) runShow(id string) wire.Run {
	var r wire.Run
	require.NoError(w.T, json.Unmarshal([]byte(w.Run("run", "show", id, "--json")), &r))
	return r
}

func (w *e2eWorld) runLogs(id string) string {
	return w.Run("run", "logs", id)
}

func pidAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	if err != nil {
		return false
	}
	st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	return err == nil && !strings.Contains(string(st), ") Z ") // a zombie is dead
}

func TestDesktopFlowRuns(t *testing.T) {
	t.Parallel()
	w := connWorld(t, "--queue-timeout", "3s")
	ok := fixturePrefix + "ok"
	out, err := w.create("robot", ok, fixturePW)
	require.NoError(t, err, out)
	u, err := user.Lookup(ok)
	require.NoError(t, err)

	probe := world.FlowDir(t, `name: probe
description: prints who it runs as
inputs:
  - name: greeting
    required: true
  - name: count
    type: number
    default: 2
outputs:
  - name: uid
    type: number
  - name: greeting
run: ./probe.sh
timeout: 1m
`, map[string]string{"probe.sh": `#!/bin/sh
echo "uid=$(id -u)"
echo "groups=$(id -G)"
echo "pwd=$(pwd)"
echo "home=$HOME user=$USER"
echo "greeting=$DESKRUN_INPUT_GREETING count=$DESKRUN_INPUT_COUNT"
echo "inputs=$(cat "$DESKRUN_INPUTS")"
env | grep -c '^DESKRUN_E2E_CANARY' || true
printf '{"uid": %s, "greeting": "%s"}' "$(id -u)" "$DESKRUN_INPUT_GREETING" > "$DESKRUN_OUTPUT"
`})
	w.Env = append(w.Env, "DESKRUN_E2E_CANARY=leak")
	w.Run("desktopflow", "push", probe)

	t.Run("runs as the connection's user", func(t *testing.T) {
		r, out, err := w.runFlow("probe", "--connection", "robot", "--input", "greeting=hello", "--wait", "60s")
		require.NoError(t, err, out)
		require.Equal(t, "succeeded", r.State, out)
		logs := w.runLogs(r.ID)
		require.Contains(t, logs, "uid="+u.Uid+"\n")
		require.Contains(t, logs, "greeting=hello count=2")
		require.Contains(t, logs, "home="+u.HomeDir+" user="+ok)
		groups := logs[strings.Index(logs, "groups=")+7:]
		groups = groups[:strings.Index(groups, "\n")]
		for _, g := range strings.Fields(groups) {
			require.NotEqual(t, "0", g, "gid 0 in the flow's groups: %s", groups)
		}
		require.NotContains(t, logs, "pwd=/\n")
		require.Contains(t, logs, "\n0\n", "the agent's environment leaked into the flow")
		var outputs map[string]any
		require.NoError(t, json.Unmarshal(r.Outputs, &outputs))
		require.EqualValues(t, mustAtoi(t, u.Uid), outputs["uid"])
		require.Equal(t, "hello", outputs["greeting"])
		require.NotZero(t, r.StartedAt)
		require.NotZero(t, r.LogonAt)
	})

	t.Run("follow the output", func(t *testing.T) {
		out := w.Run("desktopflow", "run", "probe", "--connection", "robot", "--input", "greeting=followed", "--follow")
		require.Contains(t, out, "greeting=followed count=2")
		require.Contains(t, out, "succeeded")
	})

	t.Run("exclusive sessions", func(t *testing.T) {
		w.Run("machine", "set", "box", "--unattended-sessions", "exclusive")
		defer w.Run("machine", "set", "box", "--unattended-sessions", "shared")
		uid, gid := mustAtoi(t, u.Uid), mustAtoi(t, u.Gid)
		other := exec.Command("sleep", "60")
		other.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		require.NoError(t, other.Start())
		r, _, err := w.runFlow("probe", "--connection", "robot", "--input", "greeting=x", "--wait", "60s")
		require.Error(t, err)
		require.Equal(t, deskrun.CodeSessionExistsUnattended, r.Error.Code)
		other.Process.Kill()
		other.Wait()
		r, out, err := w.runFlow("probe", "--connection", "robot", "--input", "greeting=x", "--wait", "60s")
		require.NoError(t, err, out)
		require.Equal(t, "succeeded", r.State)
	})

	t.Run("bad inputs are refused before any run", func(t *testing.T) {
		_, out, err := w.runFlow("probe", "--connection", "robot")
		require.Error(t, err)
		require.Contains(t, out, "greeting")
		_, out, err = w.runFlow("probe", "--connection", "robot", "--input", "greeting=x", "--input", "nope=1")
		require.Error(t, err)
		require.Contains(t, out, "nope")
		_, out, err = w.runFlow("probe", "--connection", "robot", "--input", "greeting=x", "--input", "count=many")
		require.Error(t, err)
		require.Contains(t, out, "count")
	})

	t.Run("cancel kills a grandchild", func(t *testing.T) {
		dir := world.FlowDir(t, "name: sleeper\nrun: ./sleeper.sh\n", map[string]string{"sleeper.sh": "#!/bin/sh\nsleep 300 &\necho \"grandchild=$!\"\nwait\n"})
		w.Run("desktopflow", "push", dir)
		r, out, err := w.runFlow("sleeper", "--connection", "robot")
		require.NoError(t, err, out)
		var pid int
		w.Eventually("grandchild started", func() bool {
			logs := w.runLogs(r.ID)
			if i := strings.Index(logs, "grandchild="); i >= 0 {
				pid, _ = strconv.Atoi(strings.TrimSpace(strings.SplitN(logs[i+11:], "\n", 2)[0]))
			}
			return pid > 0
		})
		require.True(t, pidAlive(pid))
		w.Run("run", "cancel", r.ID)
		w.Eventually("run cancelled", func() bool { return w.runShow(r.ID).State == "cancelled" })
		w.Eventually("grandchild killed", func() bool { return !pidAlive(pid) })
	})

	t.Run("timeout", func(t *testing.T) {
		dir := world.FlowDir(t, "name: slow\nrun: sleep 30\ntimeout: 1s\n", nil)
		w.Run("desktopflow", "push", dir)
		r, _, err := w.runFlow("slow", "--connection", "robot", "--wait", "60s")
		require.Error(t, err)
		require.Equal(t, "timed-out", r.State)
		require.Equal(t, deskrun.CodeDesktopFlowTimeout, r.Error.Code)
	})

	t.Run("failure with a screenshot", func(t *testing.T) {
		dir := world.FlowDir(t, "name: gui\ndesktop: true\nrun: ./gui.sh\n", map[string]string{"gui.sh": "#!/bin/sh\nxsetroot -solid '#336699'\nxmessage -geometry +50+50 'deskrun e2e' &\nsleep 1\necho 'about to fail' >&2\nexit 3\n"})
		w.Run("desktopflow", "push", dir)
		r, _, err := w.runFlow("gui", "--connection", "robot", "--wait", "60s")
		require.Error(t, err)
		require.Equal(t, "failed", r.State)
		require.Equal(t, deskrun.CodeDesktopFlowFailed, r.Error.Code)
		require.NotNil(t, r.ExitCode)
		require.Equal(t, 3, *r.ExitCode)
		require.True(t, r.HasScreenshot)
		file := filepath.Join(t.TempDir(), "shot.png")
		w.Run("run", "show", r.ID, "--screenshot", file)
		b, err := os.ReadFile(file)
		require.NoError(t, err)
		img, err := png.Decode(bytes.NewReader(b))
		require.NoError(t, err)
		require.Equal(t, 1280, img.Bounds().Dx())
		require.Equal(t, 800, img.Bounds().Dy())
	})

	t.Run("output validation", func(t *testing.T) {
		dir := world.FlowDir(t, "name: badout\noutputs:\n  - name: n\n    type: number\nrun: ./o.sh\n", map[string]string{"o.sh": "#!/bin/sh\necho 'n=not-a-number' > \"$DESKRUN_OUTPUT\"\n"})
		w.Run("desktopflow", "push", dir)
		r, _, err := w.runFlow("badout", "--connection", "robot", "--wait", "60s")
		require.Error(t, err)
		require.Equal(t, deskrun.CodeDesktopFlowOutputInvalid, r.Error.Code)
	})

	t.Run("no candidate machine", func(t *testing.T) {
		w.Kill(w.Agent)
		w.Eventually("machine offline", func() bool { return w.machine("box").State == "offline" })
		r, out, err := w.runFlow("probe", "--connection", "robot", "--input", "greeting=late", "--wait", "30s")
		require.Error(t, err, out)
		require.Equal(t, "failed", r.State)
		require.Equal(t, deskrun.CodeNoCandidateMachine, r.Error.Code)
		require.Contains(t, r.Error.Message, "offline")
		w.Agent = w.Start("agent", "run", "--state-dir", w.AgentDir)
		w.Eventually("machine online", func() bool { return w.machine("box").State == "online" })
	})

	t.Run("a broken connection fails runs at once", func(t *testing.T) {
		nu := newUser(t, "runbrk", "Run-pass-1")
		out, err := w.create("brk", nu, "Run-pass-1")
		require.NoError(t, err, out)
		setPassword(t, nu, "Run-pass-2")
		r, _, err := w.runFlow("probe", "--connection", "brk", "--input", "greeting=a", "--wait", "60s")
		require.Error(t, err)
		require.Equal(t, deskrun.CodeWindowsIdentityIncorrect, r.Error.Code)
		require.Equal(t, "WrongPassword", r.Error.Reason)
		require.Equal(t, "broken", w.connection("brk").State)
		for range 3 {
			r, _, err = w.runFlow("probe", "--connection", "brk", "--input", "greeting=a", "--wait", "60s")
			require.Error(t, err)
			require.Equal(t, deskrun.CodeConnectionBroken, r.Error.Code)
		}
		require.Equal(t, 1, failures(t, nu), "runs after the break reached PAM")
	})
}

func mustAtoi(t *testing.T, s string) int {
	n, err := strconv.Atoi(s)
	require.NoError(t, err)
	return n
}

// TestRunDurability kills the server, then the agent, in the middle of runs.
func TestRunDurability(t *testing.T) {
	t.Parallel()
	w := connWorld(t)
	out, err := w.create("robot", fixturePrefix+"ok", fixturePW)
	require.NoError(t, err, out)
	dir := world.FlowDir(t, "name: steady\noutputs:\n  - name: done\n    type: boolean\nrun: ./steady.sh\n", map[string]string{"steady.sh": `#!/bin/sh
sleep 300 &
echo "grandchild=$!"
for i in 1 2 3 4 5 6; do echo "tick $i"; sleep 0.3; done
kill $!
echo '{"done": true}' > "$DESKRUN_OUTPUT"
`})
	w.Run("desktopflow", "push", dir)
	grandchild := func(id string) int {
		var pid int
		w.Eventually("grandchild started", func() bool {
			logs := w.runLogs(id)
			if i := strings.Index(logs, "grandchild="); i >= 0 {
				pid, _ = strconv.Atoi(strings.TrimSpace(strings.SplitN(logs[i+11:], "\n", 2)[0]))
			}
			return pid > 0
		})
		return pid
	}

	t.Run("server killed mid-run", func(t *testing.T) {
		r, out, err := w.runFlow("steady", "--connection", "robot")
		require.NoError(t, err, out)
		grandchild(r.ID)
		w.Kill(w.Server)
		w.StartServer()
		w.Eventually("run succeeded", func() bool { return w.runShow(r.ID).State == "succeeded" })
		done := w.runShow(r.ID)
		require.JSONEq(t, `{"done": true}`, string(done.Outputs))
		logs := w.runLogs(r.ID)
		require.Equal(t, 1, strings.Count(logs, "tick 6"), "output recorded more than once, or lost: %s", logs)
		// Output written while the server was down arrives after it.
		for i := 1; i <= 6; i++ {
			require.Equal(t, 1, strings.Count(logs, fmt.Sprintf("tick %d\n", i)), "tick %d: %s", i, logs)
		}
		// Another reconnect changes nothing: the result was recorded once.
		w.Kill(w.Agent)
		w.Agent = w.Start("agent", "run", "--state-dir", w.AgentDir)
		w.Eventually("machine online", func() bool { return w.machine("box").State == "online" })
		again := w.runShow(r.ID)
		require.Equal(t, done.FinishedAt, again.FinishedAt)
		require.Equal(t, done.UpdatedAt, again.UpdatedAt)
	})

	t.Run("agent killed mid-run", func(t *testing.T) {
		r, out, err := w.runFlow("steady", "--connection", "robot")
		require.NoError(t, err, out)
		pid := grandchild(r.ID)
		require.True(t, pidAlive(pid))
		w.Kill(w.Agent)
		// The flow's processes die with the agent, before any restart.
		w.Eventually("the flow's processes died with the agent", func() bool { return !pidAlive(pid) })
		w.Agent = w.Start("agent", "run", "--state-dir", w.AgentDir)
		w.Eventually("run ended", func() bool { return deskrun.RunState(w.runShow(r.ID).State).Terminal() })
		got := w.runShow(r.ID)
		require.Equal(t, "failed", got.State)
		require.Equal(t, deskrun.CodeAgentLost, got.Error.Code)
	})
}
