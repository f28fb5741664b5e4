//go:build linux && cgo

package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"image/png"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/deskrun/deskrun"
	"github.com/deskrun/deskrun/internal/desktopflow"
	"github.com/deskrun/deskrun/internal/identity/pam"
	"github.com/deskrun/deskrun/internal/seal"
	"github.com/deskrun/deskrun/internal/wire"
)

// The fixture of the desktop-run tests, set up once per test binary: a
// deskrun binary for runas to re-execute, a real local user with a
// SHA-512 password, deskrun's PAM stack in a private directory, and an
// enrolled agent identity (keys made here, no server).
const runPassword = "Run-Secret-42!"

var runFx struct {
	once  sync.Once
	err   error
	base  string // 0711, root's: home, PAM stack, state
	user  string
	uid   uint32
	gid   uint32
	home  string
	stack pam.Stack
}

func TestMain(m *testing.M) {
	code := m.Run()
	if runFx.user != "" {
		_ = exec.Command("userdel", "-f", runFx.user).Run()
	}
	if runFx.base != "" {
		os.RemoveAll(runFx.base)
	}
	os.Exit(code)
}

func needRunFixture(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("desktop-run tests need root (a real user, PAM, setuid), and CI runs as root")
		}
		t.Skip("needs root to create a user and run flows as it: run as root or via .ci/run")
	}
	runFx.once.Do(func() { runFx.err = setupRunFixture() })
	require.NoError(t, runFx.err)
}

func setupRunFixture() error {
	base, err := os.MkdirTemp("", "deskrun-agent-run-")
	if err != nil {
		return err
	}
	runFx.base = base
	if err := os.Chmod(base, 0o711); err != nil {
		return err
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "drrun" + hex.EncodeToString(b[:])
	runFx.home = filepath.Join(base, "home")
	if err := shadowTool("useradd", "-m", "-d", runFx.home, "-s", "/bin/sh", "-U", name); err != nil {
		return err
	}
	runFx.user = name
	cmd := exec.Command("chpasswd", "-c", "SHA512")
	cmd.Stdin = strings.NewReader(name + ":" + runPassword + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("chpasswd: %v\n%s", err, out)
	}
	u, err := user.Lookup(name)
	if err != nil {
		return err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	runFx.uid, runFx.gid = uint32(uid), uint32(gid)
	runFx.stack = pam.Stack{
		PAMDir: filepath.Join(base, "pam.d"), ConfigDir: filepath.Join(base, "config"),
		FaillockDir: filepath.Join(base, "faillock"), NologinFile: filepath.Join(base, "nologin"),
		Deny: 5, UnlockTime: 600,
	}
	_, err = pam.Install(runFx.stack)
	return err
}

// shadowTool runs useradd and friends, retrying while another test
// package holds the passwd lock.
func shadowTool(args ...string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err == nil {
			return nil
		}
		if !bytes.Contains(out, []byte("lock")) || time.Now().After(deadline) {
			return fmt.Errorf("%v: %v\n%s", args, err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// runHarness is an agent with a fresh state directory and the frames it
// would have sent.
type runHarness struct {
	a      *Agent
	pkg    []byte
	digest string
	mu     sync.Mutex
	logs   []*wire.LogChunk
	prog   []string
}

func newRunHarness(t *testing.T, files map[string]string) *runHarness {
	t.Helper()
	needRunFixture(t)
	state, err := os.MkdirTemp(runFx.base, "state-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(state, 0o700))
	k, err := newKeys()
	require.NoError(t, err)
	h := &runHarness{}
	h.pkg, h.digest = pack(t, files)
	h.a = &Agent{
		StateDir: state, Log: slog.New(slog.DiscardHandler), Info: HostInfo(DefaultHostFiles, 1),
		Logon:      pam.New(pam.Config{Stack: runFx.stack}),
		id:         &Identity{MachineID: "m_run_test", Name: "run-test", SigningKey: k.signing, SealKey: k.seal.Private},
		sealPublic: k.seal.Public,
	}
	h.a.FetchPackage = func(_ context.Context, digest string) ([]byte, error) {
		if digest != h.digest {
			return nil, &deskrun.Error{Code: deskrun.CodeNotFound, Message: "no such package"}
		}
		return h.pkg, nil
	}
	h.a.sendFrame = func(f *wire.Frame) {
		h.mu.Lock()
		h.logs = append(h.logs, f.Log)
		h.mu.Unlock()
	}
	t.Cleanup(func() {
		// A run leaves nothing behind: no process of the user, no run directory.
		for _, pid := range userProcesses(runFx.uid) {
			t.Errorf("process %d of the test user outlived its run", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		ents, _ := os.ReadDir(filepath.Join(state, runsDir))
		require.Empty(t, ents, "run directories left behind")
	})
	return h
}

// pack makes a real package (desktopflow.Pack) of files plus a manifest.
func pack(t *testing.T, files map[string]string) ([]byte, string) {
	dir := t.TempDir()
	files["desktopflow.yaml"] = "name: test-flow\nrun: sh -c true\n"
	for name, body := range files {
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".sh") {
			mode = 0o755
		}
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(body), mode))
	}
	archive, digest, _, err := desktopflow.Pack(dir)
	require.NoError(t, err)
	return archive, digest
}

func (h *runHarness) payload(t *testing.T, p wire.DesktopPayload) json.RawMessage {
	t.Helper()
	ct, err := seal.Seal(h.a.sealPublic, deskrun.SealInfo("c_run", h.a.id.MachineID), []byte(runPassword))
	require.NoError(t, err)
	p.Credential = wire.ValidatePayload{ConnectionID: "c_run", ConnectionName: "run", MachineID: h.a.id.MachineID,
		Username: runFx.user, LogonType: "interactive", KeyID: seal.KeyID(h.a.sealPublic), Ciphertext: ct}
	p.Digest, p.Flow, p.Version = h.digest, "test-flow", 1
	if p.RunID == "" {
		p.RunID = "r_" + strings.ReplaceAll(t.Name(), "/", "_")
	}
	if p.TimeoutMS == 0 {
		p.TimeoutMS = 60_000
	}
	b, err := json.Marshal(p)
	require.NoError(t, err)
	return b
}

// run runs one desktop job and decodes its output (nil if none).
func (h *runHarness) run(t *testing.T, ctx context.Context, p wire.DesktopPayload) (*wire.DesktopOutput, *deskrun.Error) {
	t.Helper()
	raw := h.payload(t, p)
	b, err := h.a.desktopRun(withJobID(ctx, "j_"+p.RunID), raw, func(s string) {
		h.mu.Lock()
		h.prog = append(h.prog, s)
		h.mu.Unlock()
	})
	var de *deskrun.Error
	if err != nil {
		require.True(t, errors.As(err, &de), "error %v is not a *deskrun.Error", err)
	}
	if b == nil {
		return nil, de
	}
	var out wire.DesktopOutput
	require.NoError(t, json.Unmarshal(b, &out))
	return &out, de
}

func (h *runHarness) stdout() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var b strings.Builder
	for _, c := range h.logs {
		if c.Stream == "stdout" {
			b.Write(c.Data)
		}
	}
	return b.String()
}

// userProcesses lists the live (not zombie) processes whose real uid is uid.
func userProcesses(uid uint32) []int {
	var out []int
	for _, pid := range allPIDs() {
		if pi, ok := readProc(pid); ok && pi.uid == uid && pi.state != "Z" && pi.state != "X" {
			out = append(out, pid)
		}
	}
	return out
}

func alive(pid int) bool {
	pi, ok := readProc(pid)
	return ok && pi.state != "Z" && pi.state != "X"
}

func TestDesktopRunAsUser(t *testing.T) {
	h := newRunHarness(t, map[string]string{"flow.sh": `#!/bin/sh
echo "uid=$(id -u)"
echo "groups=$(id -G)"
echo "pwd=$(pwd)"
echo "inputs=$(cat "$DESKRUN_INPUTS")"
env | sed 's/^/env:/'
echo 'count=7' > "$DESKRUN_OUTPUT"
`})
	t.Setenv("DESKRUN_AGENT_CANARY", "leaked")
	inputs := map[string]any{"greeting": "hello world", "count": 3.0, "flag": true}
	out, err := h.run(t, context.Background(), wire.DesktopPayload{Run: "./flow.sh", Inputs: inputs,
		Outputs: []wire.OutputDecl{{Name: "count", Type: "number", Required: true}}})
	require.Nil(t, err)
	so := h.stdout()
	t.Logf("timings (µs): %v; containment %s", out.Timings, out.Containment)

	require.Contains(t, so, fmt.Sprintf("uid=%d\n", runFx.uid))
	groups := regexp.MustCompile(`(?m)^groups=(.*)$`).FindStringSubmatch(so)
	require.NotNil(t, groups)
	require.NotContains(t, strings.Fields(groups[1]), "0", "gid 0 must not be among the flow's groups")
	require.Contains(t, strings.Fields(groups[1]), strconv.Itoa(int(runFx.gid)))
	pwd := regexp.MustCompile(`(?m)^pwd=(.*)$`).FindStringSubmatch(so)
	require.NotNil(t, pwd)
	require.True(t, strings.HasPrefix(pwd[1], filepath.Join(h.a.StateDir, runsDir)+"/"), pwd[1])
	require.Equal(t, "work", filepath.Base(pwd[1]))
	in := regexp.MustCompile(`(?m)^inputs=(.*)$`).FindStringSubmatch(so)
	require.NotNil(t, in)
	var gotInputs map[string]any
	require.NoError(t, json.Unmarshal([]byte(in[1]), &gotInputs))
	require.Equal(t, inputs, gotInputs)

	env := map[string]string{}
	for _, line := range strings.Split(so, "\n") {
		if kv, ok := strings.CutPrefix(line, "env:"); ok {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = v
		}
	}
	require.Equal(t, runFx.home, env["HOME"])
	require.Equal(t, runFx.user, env["USER"])
	require.Equal(t, runFx.user, env["LOGNAME"])
	require.Equal(t, "hello world", env["DESKRUN_INPUT_GREETING"])
	require.Equal(t, "3", env["DESKRUN_INPUT_COUNT"])
	require.Equal(t, "true", env["DESKRUN_INPUT_FLAG"])
	require.Equal(t, filepath.Join(filepath.Dir(pwd[1]), "outputs"), env["DESKRUN_OUTPUT"])
	allowed := map[string]bool{"HOME": true, "USER": true, "LOGNAME": true, "SHELL": true, "PATH": true, "PWD": true, "SHLVL": true, "OLDPWD": true, "_": true,
		"DESKRUN_INPUTS": true, "DESKRUN_OUTPUT": true}
	for k := range env {
		require.True(t, allowed[k] || strings.HasPrefix(k, "DESKRUN_INPUT_"), "unexpected variable %s in the flow's environment", k)
	}

	require.Equal(t, 0, out.ExitCode)
	require.Equal(t, map[string]any{"count": 7.0}, out.Outputs)
	require.Equal(t, runFx.uid, out.Identity.UID)
	require.Equal(t, runFx.user, out.Identity.Username)
	require.Nil(t, out.Screenshot)
	for _, k := range []string{"logon", "session", "display", "spawn", "run"} {
		require.Contains(t, out.Timings, k)
	}
	require.Equal(t, []string{"state:logging-on", "state:running"}, h.prog)
}

func TestDesktopRunScreenshotOnFailure(t *testing.T) {
	h := newRunHarness(t, map[string]string{"README": "x"})
	out, err := h.run(t, context.Background(), wire.DesktopPayload{Desktop: true,
		Run: `xsetroot -solid '#336699'; xmessage hi & sleep 0.3; echo about to fail; exit 3`})
	require.NotNil(t, err)
	require.Equal(t, deskrun.CodeDesktopFlowFailed, err.Code, err.Message)
	require.Contains(t, err.Message, "code 3")
	require.Contains(t, err.Message, "about to fail")
	require.NotNil(t, out)
	require.Equal(t, 3, out.ExitCode)
	require.Equal(t, []string{"about to fail"}, out.LastLines)
	require.NotEmpty(t, out.Screenshot, "a failed desktop flow carries a screenshot")
	img, derr := png.Decode(bytes.NewReader(out.Screenshot))
	require.NoError(t, derr)
	require.Equal(t, 1280, img.Bounds().Dx())
	require.Equal(t, 800, img.Bounds().Dy())
	r, g, b, _ := img.At(1270, 790).RGBA() // xmessage sits at the top left
	require.Equal(t, []uint32{0x33, 0x66, 0x99}, []uint32{r >> 8, g >> 8, b >> 8}, "the root window's colour")
}

func TestDesktopRunCancelKillsGrandchild(t *testing.T) {
	h := newRunHarness(t, map[string]string{"README": "x"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		out *wire.DesktopOutput
		err *deskrun.Error
	}
	done := make(chan result, 1)
	go func() {
		out, err := h.run(t, ctx, wire.DesktopPayload{Run: `sh -c 'sleep 300 & echo "grandchild=$!"; wait'; echo never`})
		done <- result{out, err}
	}()
	re := regexp.MustCompile(`grandchild=(\d+)`)
	var pid int
	require.Eventually(t, func() bool {
		if m := re.FindStringSubmatch(h.stdout()); m != nil {
			pid, _ = strconv.Atoi(m[1])
			return true
		}
		return false
	}, 20*time.Second, 20*time.Millisecond)
	require.True(t, alive(pid))
	cancel()
	var r result
	select {
	case r = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the run did not end after cancel")
	}
	require.NotNil(t, r.err)
	require.Equal(t, deskrun.CodeJobCancelled, r.err.Code)
	require.False(t, alive(pid), "the grandchild survived the cancel")
	require.NotContains(t, h.stdout(), "never")
}

func TestDesktopRunTimeout(t *testing.T) {
	h := newRunHarness(t, map[string]string{"README": "x"})
	start := time.Now()
	// 1.5 s: long enough for the flow to start on a loaded 2-core machine.
	out, err := h.run(t, context.Background(), wire.DesktopPayload{Run: "echo started; sleep 30", TimeoutMS: 1500})
	require.NotNil(t, err)
	require.Equal(t, deskrun.CodeDesktopFlowTimeout, err.Code)
	require.Less(t, time.Since(start), 15*time.Second)
	require.NotNil(t, out)
	require.Equal(t, []string{"started"}, out.LastLines)
}

func TestDesktopRunOutputs(t *testing.T) {
	h := newRunHarness(t, map[string]string{"README": "x"})
	decls := []wire.OutputDecl{{Name: "total", Type: "number", Required: true}, {Name: "name", Type: "string"}}
	for _, tc := range []struct {
		name, run string
		want      map[string]any
		field     string
	}{
		{"json", `printf '{"total": 42, "name": "x"}' > "$DESKRUN_OUTPUT"`, map[string]any{"total": 42.0, "name": "x"}, ""},
		{"key=value", `printf 'total=42\nname=a b\n' > "$DESKRUN_OUTPUT"`, map[string]any{"total": 42.0, "name": "a b"}, ""},
		{"missing required", `echo name=x > "$DESKRUN_OUTPUT"`, nil, "outputs.total"},
		{"no file", `true`, nil, "outputs.total"},
		{"symlink to a root file", `ln -s /etc/shadow "$DESKRUN_OUTPUT"`, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := h.run(t, context.Background(), wire.DesktopPayload{RunID: "r_out_" + strings.ReplaceAll(tc.name, " ", "_"), Run: tc.run, Outputs: decls})
			require.NotNil(t, out)
			if tc.want != nil {
				require.Nil(t, err)
				require.Equal(t, tc.want, out.Outputs)
				return
			}
			require.NotNil(t, err)
			require.Equal(t, deskrun.CodeDesktopFlowOutputInvalid, err.Code, err.Message)
			require.Equal(t, tc.field, err.Field)
			require.NotContains(t, err.Message, "root:")
		})
	}
}

func TestDesktopRunLogMemoryBounded(t *testing.T) {
	h := newRunHarness(t, map[string]string{"README": "x"})
	const total = 50 << 20
	var received, frames, lastSeq int64
	var seqOK = true
	h.a.sendFrame = func(f *wire.Frame) {
		time.Sleep(500 * time.Microsecond) // a slow connection
		frames++
		received += int64(len(f.Log.Data))
		if f.Log.Seq != lastSeq+1 {
			seqOK = false
		}
		lastSeq = f.Log.Seq
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
				var m runtime.MemStats
				runtime.ReadMemStats(&m)
				peak = max(peak, m.HeapInuse)
			}
		}
	}()
	start := time.Now()
	out, err := h.run(t, context.Background(), wire.DesktopPayload{Run: fmt.Sprintf("yes 'deskrun log line' | head -c %d", total)})
	close(stop)
	<-sampled
	require.Nil(t, err)
	require.Equal(t, 0, out.ExitCode)
	require.Equal(t, int64(total), received, "every byte reaches the server")
	require.True(t, seqOK, "log chunks are numbered in send order")
	growth := int64(peak) - int64(base)
	t.Logf("50 MB in %d frames, %s; heap in use %d MB before, peak growth %.1f MB", frames, time.Since(start).Round(time.Millisecond), base>>20, float64(growth)/(1<<20))
	require.Less(t, growth, int64(16<<20), "the agent's heap grew with the output")
}

func TestDesktopRunExclusiveSession(t *testing.T) {
	h := newRunHarness(t, map[string]string{"README": "x"})
	// The user signs in elsewhere: a process of theirs in a session of its
	// own, not started by the agent's runs (setsid -f: its parent exits).
	cmd := exec.Command("setsid", "-f", "sleep", "120")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: runFx.uid, Gid: runFx.gid, Groups: []uint32{}}}
	require.NoError(t, cmd.Run())
	var pids []int
	require.Eventually(t, func() bool { pids = userProcesses(runFx.uid); return len(pids) > 0 }, 5*time.Second, 10*time.Millisecond)
	defer func() {
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		require.Eventually(t, func() bool { return len(userProcesses(runFx.uid)) == 0 }, 5*time.Second, 10*time.Millisecond)
	}()

	out, err := h.run(t, context.Background(), wire.DesktopPayload{Run: "true", Sessions: "exclusive"})
	require.Nil(t, out)
	require.NotNil(t, err)
	require.Equal(t, deskrun.CodeSessionExistsUnattended, err.Code, err.Message)

	out, err = h.run(t, context.Background(), wire.DesktopPayload{RunID: "r_shared", Run: "true", Sessions: "shared"})
	require.Nil(t, err)
	require.Equal(t, 0, out.ExitCode)
}

func TestDesktopRunExclusiveAllowsOwnRuns(t *testing.T) {
	// The agent's own runs (and their Xvfb) are not "a session of the
	// user": an exclusive run next to a running desktop run of the same
	// user goes ahead.
	h := newRunHarness(t, map[string]string{"README": "x"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = h.run(t, ctx, wire.DesktopPayload{RunID: "r_long", Desktop: true, Run: "setsid sleep 120 & echo ready; wait"})
	}()
	require.Eventually(t, func() bool { return strings.Contains(h.stdout(), "ready") }, 20*time.Second, 20*time.Millisecond)
	out, err := h.run(t, context.Background(), wire.DesktopPayload{RunID: "r_second", Run: "true", Sessions: "exclusive"})
	require.Nil(t, err)
	require.Equal(t, 0, out.ExitCode)
	cancel()
	<-done
}

func TestDesktopRunAttended(t *testing.T) {
	h := newRunHarness(t, map[string]string{"README": "x"})
	out, err := h.run(t, context.Background(), wire.DesktopPayload{Run: "true", RunMode: "attended"})
	require.Nil(t, out)
	require.NotNil(t, err)
	require.Equal(t, deskrun.CodeAttendedUserNotLoggedIn, err.Code, err.Message)

	// The user signs in to a desktop: an X server of theirs with an
	// Xauthority file (no cookie in it: Xvfb then accepts local clients).
	require.NoError(t, os.MkdirAll("/tmp/.X11-unix", 0o1777))
	require.NoError(t, os.Chmod("/tmp/.X11-unix", 0o1777))
	auth := filepath.Join(runFx.home, ".Xauthority-test")
	require.NoError(t, os.WriteFile(auth, nil, 0o600))
	require.NoError(t, os.Chown(auth, int(runFx.uid), int(runFx.gid)))
	n := 90 + int(time.Now().UnixNano()%9)
	cmd := exec.Command("setsid", "-f", "Xvfb", ":"+strconv.Itoa(n), "-nolisten", "tcp", "-auth", auth, "-screen", "0", "320x200x24")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: runFx.uid, Gid: runFx.gid, Groups: []uint32{}}}
	require.NoError(t, cmd.Run())
	var pids []int
	defer func() {
		for _, pid := range userProcesses(runFx.uid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		require.Eventually(t, func() bool { return len(userProcesses(runFx.uid)) == 0 }, 5*time.Second, 10*time.Millisecond)
		_ = os.Remove(fmt.Sprintf("/tmp/.X%d-lock", n))
		_ = os.Remove(fmt.Sprintf("/tmp/.X11-unix/X%d", n))
	}()
	require.Eventually(t, func() bool {
		pids = userProcesses(runFx.uid)
		_, err := os.Stat(fmt.Sprintf("/tmp/.X11-unix/X%d", n))
		return len(pids) > 0 && err == nil
	}, 10*time.Second, 20*time.Millisecond)

	out, err = h.run(t, context.Background(), wire.DesktopPayload{RunID: "r_attended", RunMode: "attended", Sessions: "exclusive",
		Run: `echo "display=$DISPLAY auth=$XAUTHORITY"; xdpyinfo | grep dimensions`})
	require.Nil(t, err)
	require.Equal(t, 0, out.ExitCode)
	so := h.stdout()
	require.Contains(t, so, fmt.Sprintf("display=:%d auth=%s", n, auth))
	require.Contains(t, so, "320x200 pixels")
}
