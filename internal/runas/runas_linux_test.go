//go:build linux

package runas

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/deskrun/deskrun/internal/identity"
)

// The tests re-execute a real deskrun binary, built once per test binary.
var bin struct {
	once sync.Once
	dir  string
	path string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bin.dir != "" {
		os.RemoveAll(bin.dir)
	}
	os.Exit(code)
}

func deskrunBinary(t *testing.T) string {
	t.Helper()
	bin.once.Do(func() {
		if bin.dir, bin.err = os.MkdirTemp("", "deskrun-runas-bin-"); bin.err != nil {
			return
		}
		bin.path = filepath.Join(bin.dir, "deskrun")
		out, err := exec.Command("go", "build", "-o", bin.path, "github.com/deskrun/deskrun/cmd/deskrun").CombinedOutput()
		if err != nil {
			bin.err = fmt.Errorf("go build deskrun: %v\n%s", err, out)
		}
	})
	require.NoError(t, bin.err)
	return bin.path
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("runas tests need root, and CI runs as root")
		}
		t.Skip("needs root to create users and drop to them: run as root or via .ci/run")
	}
}

type testUser struct {
	identity.Identity
	SuppGID uint32 // a supplementary group made for the test
	Base    string // 0711, root-owned: holds the home and run directories
}

// newUser creates a real local user with its own primary group and one
// extra supplementary group, removed when the test ends.
func newUser(t *testing.T) testUser {
	t.Helper()
	requireRoot(t)
	var b [4]byte
	_, _ = rand.Read(b[:])
	suffix := hex.EncodeToString(b[:])
	name, group := "drra"+suffix, "drrg"+suffix
	base, err := os.MkdirTemp("", "deskrun-runas-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(base, 0o711))
	t.Cleanup(func() { os.RemoveAll(base) })
	home := filepath.Join(base, "home")

	shadow(t, "groupadd", group)
	t.Cleanup(func() { _ = exec.Command("groupdel", group).Run() })
	shadow(t, "useradd", "-m", "-d", home, "-s", "/bin/sh", "-U", "-G", group, name)
	t.Cleanup(func() { _ = exec.Command("userdel", "-f", name).Run() })

	u, err := user.Lookup(name)
	require.NoError(t, err)
	uid := atou(t, u.Uid)
	t.Cleanup(func() {
		// Every run of this user has ended: nothing may be left running.
		for _, pid := range liveProcesses(uid) {
			t.Errorf("process %d of the test user outlived its run", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	g, err := user.LookupGroup(group)
	require.NoError(t, err)
	gids, err := u.GroupIds()
	require.NoError(t, err)
	id := identity.Identity{Username: name, UID: atou(t, u.Uid), GID: atou(t, u.Gid), Home: u.HomeDir, Shell: "/bin/sh"}
	groups := make([]uint32, 0, len(gids))
	for _, s := range gids {
		groups = append(groups, atou(t, s))
	}
	id.Groups = groups
	return testUser{Identity: id, SuppGID: atou(t, g.Gid), Base: base}
}

// shadow runs useradd and friends, which fail at once when another test
// (here or in another package) holds the passwd lock.
func shadow(t *testing.T, args ...string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err == nil {
			return
		}
		if !bytes.Contains(out, []byte("lock")) || time.Now().After(deadline) {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func atou(t *testing.T, s string) uint32 {
	n, err := strconv.ParseUint(s, 10, 32)
	require.NoError(t, err)
	return uint32(n)
}

func runDir(t *testing.T, u testUser) string {
	t.Helper()
	dir, err := CreateRunDir(u.Base, "run-"+strings.ReplaceAll(t.Name(), "/", "_"), u.UID, u.GID)
	require.NoError(t, err)
	t.Cleanup(func() { _ = RemoveRunDir(dir) })
	return dir
}

// run starts spec and returns its output, exit code and error.
func run(t *testing.T, ctx context.Context, s Spec) (stdout, stderr string, code int, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	s.Stdout, s.Stderr = &out, &errOut
	p, err := Start(ctx, s)
	if err != nil {
		return "", "", -1, err
	}
	code, err = p.Wait()
	return out.String(), errOut.String(), code, err
}

func TestRunAsUser(t *testing.T) {
	u := newUser(t)
	bin := deskrunBinary(t)
	t.Setenv("DESKRUN_CANARY", "must-not-leak")
	dir := runDir(t, u)

	var out, errOut bytes.Buffer
	p, err := Start(context.Background(), Spec{
		Identity: u.Identity, Dir: dir, Executable: bin,
		Path: "sh", Args: []string{"-c", "id -u; id -G; pwd; env"},
		Env:    []string{"DESKRUN_INPUT_GREETING=hello world"},
		Stdout: &out, Stderr: &errOut,
	})
	require.NoError(t, err)
	require.True(t, p.Dropped())
	t.Logf("containment: %s %s", p.Containment(), p.Cgroup())
	code, err := p.Wait()
	require.NoError(t, err)
	require.Equal(t, 0, code, "stderr: %s", errOut.String())

	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.GreaterOrEqual(t, len(lines), 4, out.String())
	require.Equal(t, strconv.Itoa(int(u.UID)), lines[0], "uid")
	var groups []uint32
	for _, f := range strings.Fields(lines[1]) {
		groups = append(groups, atou(t, f))
	}
	require.NotContains(t, groups, uint32(0), "gid 0 leaked into the groups (the nomad bug)")
	require.Contains(t, groups, u.GID)
	require.Contains(t, groups, u.SuppGID, "the user's supplementary group is set")
	require.ElementsMatch(t, slices.Compact(slices.Sorted(slices.Values(u.Groups))), groups, "exactly the user's groups")
	require.Equal(t, dir, lines[2], "pwd")

	env := map[string]string{}
	for _, kv := range lines[3:] {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	require.Equal(t, u.Home, env["HOME"])
	require.Equal(t, u.Username, env["USER"])
	require.Equal(t, u.Username, env["LOGNAME"])
	require.Equal(t, "/bin/sh", env["SHELL"])
	require.Equal(t, DefaultPath, env["PATH"])
	require.Equal(t, dir, env["PWD"])
	require.Equal(t, "hello world", env["DESKRUN_INPUT_GREETING"])
	require.NotContains(t, env, "DESKRUN_CANARY", "the agent's environment leaked")
	for k := range env {
		switch k {
		case "HOME", "USER", "LOGNAME", "SHELL", "PATH", "DESKRUN_INPUT_GREETING", "PWD", "OLDPWD", "SHLVL", "_":
		default:
			t.Errorf("unexpected variable %s in the clean environment", k)
		}
	}
}

func TestAllowRoot(t *testing.T) {
	requireRoot(t)
	root := identity.Identity{Username: "root", Home: "/root", Shell: "/bin/sh"}
	_, err := Start(context.Background(), Spec{Identity: root, Path: "id", Executable: deskrunBinary(t)})
	require.ErrorIs(t, err, ErrRunAsRoot)

	out, _, code, err := run(t, context.Background(), Spec{Identity: root, Path: "id", Args: []string{"-u"}, AllowRoot: true, Executable: deskrunBinary(t)})
	require.NoError(t, err)
	require.Equal(t, 0, code)
	require.Equal(t, "0\n", out)
}

// TestChildRefusesRootWithoutFlag speaks the protocol to the child itself:
// even if a parent forgot the check, the child does not run as root.
func TestChildRefusesRootWithoutFlag(t *testing.T) {
	t.Parallel()
	status := childProtocol(t, childSpec{UID: 0, GID: 0, Dir: "/", Path: "/bin/true", Args: []string{"true"}})
	require.Equal(t, StepVerify, status.Step)
	require.Contains(t, status.Message, "refusing to run as root")
}

// childProtocol starts `deskrun be-child runas` by hand and returns what
// it reported on the status pipe.
func childProtocol(t *testing.T, cs childSpec) ChildError {
	t.Helper()
	specR, specW, err := os.Pipe()
	require.NoError(t, err)
	statR, statW, err := os.Pipe()
	require.NoError(t, err)
	cmd := exec.Command(deskrunBinary(t), "be-child", "runas")
	cmd.ExtraFiles = []*os.File{specR, statW}
	require.NoError(t, cmd.Start())
	specR.Close()
	statW.Close()
	require.NoError(t, json.NewEncoder(specW).Encode(cs))
	specW.Close()
	b, err := io.ReadAll(statR)
	require.NoError(t, err)
	err = cmd.Wait()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee)
	require.Equal(t, ChildExitCode, ee.ExitCode())
	after, ok := strings.CutPrefix(string(b), statusReady)
	require.True(t, ok, "status %q", b)
	var ce ChildError
	require.NoError(t, json.Unmarshal([]byte(after), &ce))
	return ce
}

func TestChildErrors(t *testing.T) {
	u := newUser(t)
	bin := deskrunBinary(t)
	t.Run("no such directory", func(t *testing.T) {
		_, err := Start(context.Background(), Spec{Identity: u.Identity, Dir: "/nonexistent", Path: "true", Executable: bin})
		var ce *ChildError
		require.ErrorAs(t, err, &ce)
		require.Equal(t, StepChdir, ce.Step)
	})
	t.Run("directory the user cannot enter", func(t *testing.T) {
		_, err := Start(context.Background(), Spec{Identity: u.Identity, Dir: "/root", Path: "true", Executable: bin})
		var ce *ChildError
		require.ErrorAs(t, err, &ce)
		require.Equal(t, StepChdir, ce.Step, "the chdir happens after the drop")
	})
	t.Run("no such command", func(t *testing.T) {
		_, err := Start(context.Background(), Spec{Identity: u.Identity, Path: "no-such-command-drr", Executable: bin})
		var ce *ChildError
		require.ErrorAs(t, err, &ce)
		require.Equal(t, StepLookPath, ce.Step)
	})
	t.Run("not deskrun", func(t *testing.T) {
		_, err := Start(context.Background(), Spec{Identity: u.Identity, Path: "true", Executable: "/bin/true"})
		require.ErrorContains(t, err, "did not start the command")
	})
}

// lineWriter sends the first line written to it.
type lineWriter struct {
	once  sync.Once
	buf   bytes.Buffer
	lines chan string
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.buf.Write(p)
	if i := bytes.IndexByte(w.buf.Bytes(), '\n'); i >= 0 {
		w.once.Do(func() { w.lines <- string(w.buf.Bytes()[:i]) })
	}
	return len(p), nil
}

func startGrandchild(t *testing.T, ctx context.Context, u testUser, noCgroup bool, script string) (*Process, int) {
	t.Helper()
	w := &lineWriter{lines: make(chan string, 1)}
	p, err := Start(ctx, Spec{Identity: u.Identity, Path: "sh", Args: []string{"-c", script},
		Stdout: w, NoCgroup: noCgroup, Executable: deskrunBinary(t)})
	require.NoError(t, err)
	t.Cleanup(func() { p.Kill(); _, _ = p.Wait() })
	select {
	case line := <-w.lines:
		pid, err := strconv.Atoi(strings.TrimSpace(line))
		require.NoError(t, err, "line %q", line)
		require.NoError(t, syscall.Kill(pid, 0), "the grandchild runs")
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		require.NoError(t, err)
		require.Regexp(t, fmt.Sprintf(`(?m)^Uid:\s+%d\s+%d\s+%d\s+%d$`, u.UID, u.UID, u.UID, u.UID), string(st), "the grandchild runs as the user")
		return p, pid
	case <-time.After(10 * time.Second):
		t.Fatal("no grandchild pid printed")
		return nil, 0
	}
}

// requireGone waits until pid no longer runs: it does not exist, or it is
// a zombie waiting for init (here PID 1 is not always a prompt reaper).
func requireGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			return
		}
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
			if i := bytes.LastIndexByte(st, ')'); i > 0 && len(st) > i+2 && st[i+2] == 'Z' {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d still runs", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func containments(t *testing.T) []bool {
	modes := []bool{true} // NoCgroup: the process group only
	if _, err := CgroupParent(); err == nil {
		modes = append(modes, false)
	} else {
		t.Logf("no cgroup here (%v): testing the process group only", err)
	}
	return modes
}

func TestCancelKillsGrandchild(t *testing.T) {
	u := newUser(t)
	for _, noCgroup := range containments(t) {
		t.Run(fmt.Sprintf("NoCgroup=%v", noCgroup), func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			p, pid := startGrandchild(t, ctx, u, noCgroup, "sleep 300 & echo $!; wait")
			if noCgroup {
				require.Equal(t, ContainProcessGroup, p.Containment())
			} else {
				require.Equal(t, ContainCgroup, p.Containment())
			}
			cancel()
			code, err := p.Wait()
			require.ErrorIs(t, err, ErrCancelled)
			require.ErrorIs(t, err, context.Canceled)
			require.Equal(t, 128+int(syscall.SIGKILL), code)
			requireGone(t, pid)
			if cg := p.Cgroup(); cg != "" {
				require.NoDirExists(t, cg, "the run's cgroup is removed")
			}
		})
	}
}

// TestEndOfRunKillsLeftovers: a command that exits leaves nothing running.
func TestEndOfRunKillsLeftovers(t *testing.T) {
	u := newUser(t)
	for _, noCgroup := range containments(t) {
		t.Run(fmt.Sprintf("NoCgroup=%v", noCgroup), func(t *testing.T) {
			p, pid := startGrandchild(t, context.Background(), u, noCgroup, "sleep 300 >/dev/null & echo $!; read x </dev/null; exit 3")
			code, err := p.Wait()
			require.NoError(t, err)
			require.Equal(t, 3, code)
			requireGone(t, pid)
		})
	}
}

func TestCgroupCatchesSetsid(t *testing.T) {
	u := newUser(t)
	if _, err := CgroupParent(); err != nil {
		t.Skipf("no writable cgroup v2 here: %v", err)
	}
	p, pid := startGrandchild(t, context.Background(), u, false, "setsid sleep 300 & echo $!; wait")
	require.Equal(t, ContainCgroup, p.Containment())
	requireEventually(t, func() bool { return unixGetsid(pid) == pid }, "the grandchild left the session and process group")
	p.Kill()
	_, err := p.Wait()
	require.ErrorIs(t, err, ErrKilled)
	requireGone(t, pid)
}

func requireEventually(t *testing.T, ok func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTimeout(t *testing.T) {
	u := newUser(t)
	start := time.Now()
	_, _, code, err := run(t, context.Background(), Spec{Identity: u.Identity, Path: "sleep", Args: []string{"300"},
		Timeout: 300 * time.Millisecond, Executable: deskrunBinary(t)})
	require.ErrorIs(t, err, ErrTimeout)
	require.NotErrorIs(t, err, ErrCancelled)
	require.Equal(t, 128+int(syscall.SIGKILL), code)
	require.Less(t, time.Since(start), 10*time.Second)
}

func TestCancelBeforeStart(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Start(ctx, Spec{Identity: alice, Path: "true"})
	require.ErrorIs(t, err, ErrCancelled)
}

// countingWriter counts and forgets.
type countingWriter struct{ n atomic.Int64 }

func (w *countingWriter) Write(p []byte) (int, error) { w.n.Add(int64(len(p))); return len(p), nil }

// TestOutputDoesNotGrowMemory: 50 MB of output pass through a fixed
// buffer. If the agent kept them, the bytes allocated would exceed 50 MB.
func TestOutputDoesNotGrowMemory(t *testing.T) {
	u := newUser(t)
	bin := deskrunBinary(t)
	const size = 50 << 20
	var out, errOut countingWriter
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	p, err := Start(context.Background(), Spec{Identity: u.Identity, Path: "sh",
		Args:   []string{"-c", fmt.Sprintf("head -c %d /dev/zero; head -c %d /dev/zero >&2", size, size)},
		Stdout: &out, Stderr: &errOut, Executable: bin})
	require.NoError(t, err)
	code, err := p.Wait()
	runtime.ReadMemStats(&after)
	require.NoError(t, err)
	require.Equal(t, 0, code)
	require.EqualValues(t, size, out.n.Load())
	require.EqualValues(t, size, errOut.n.Load())
	allocated := after.TotalAlloc - before.TotalAlloc
	t.Logf("100 MB of output: %d KB allocated, heap in use %d → %d KB", allocated>>10, before.HeapInuse>>10, after.HeapInuse>>10)
	require.Less(t, allocated, uint64(8<<20), "output must not be buffered")
}

// failingWriter fails every write.
type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestFailingWriterDoesNotBlockTheCommand(t *testing.T) {
	u := newUser(t)
	p, err := Start(context.Background(), Spec{Identity: u.Identity, Path: "head", Args: []string{"-c", "1000000", "/dev/zero"},
		Stdout: failingWriter{}, Executable: deskrunBinary(t), Timeout: 30 * time.Second})
	require.NoError(t, err)
	code, err := p.Wait()
	require.Equal(t, 0, code, "the command ran to its end")
	require.ErrorContains(t, err, "disk full")
	require.NotErrorIs(t, err, ErrTimeout)
}

func TestRunDir(t *testing.T) {
	u := newUser(t)
	dir, err := CreateRunDir(u.Base, "run-1", u.UID, u.GID)
	require.NoError(t, err)
	st, err := os.Stat(dir)
	require.NoError(t, err)
	require.Equal(t, os.ModeDir|0o700, st.Mode())
	require.Equal(t, u.UID, st.Sys().(*syscall.Stat_t).Uid)
	require.Equal(t, u.GID, st.Sys().(*syscall.Stat_t).Gid)

	_, err = CreateRunDir(u.Base, "run-1", u.UID, u.GID)
	require.Error(t, err, "a run directory is never reused")
	for _, bad := range []string{"", ".", "..", "a/b"} {
		_, err = CreateRunDir(u.Base, bad, u.UID, u.GID)
		require.Error(t, err, "name %q", bad)
	}
	_, err = CreateRunDir(dir, "x", u.UID, u.GID)
	require.ErrorContains(t, err, "must belong to root", "a base the user owns is refused")
	link := filepath.Join(u.Base, "link")
	require.NoError(t, os.Symlink(u.Base, link))
	_, err = CreateRunDir(link, "x", u.UID, u.GID)
	require.ErrorContains(t, err, "not a directory", "a base that is a link is refused")

	// The user plants links to a file and a directory of root's; removing
	// the run directory removes the links, not their targets.
	precious := filepath.Join(u.Base, "precious")
	require.NoError(t, os.MkdirAll(filepath.Join(precious, "sub"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(precious, "file"), []byte("keep"), 0o600))
	_, _, code, err := run(t, context.Background(), Spec{Identity: u.Identity, Dir: dir, Path: "sh", Executable: deskrunBinary(t),
		Args: []string{"-c", fmt.Sprintf("ln -s %s d && ln -s %s/file f && mkdir -p x/y && chmod 000 x", precious, precious)}})
	require.NoError(t, err)
	require.Equal(t, 0, code)
	require.NoError(t, RemoveRunDir(dir))
	require.NoDirExists(t, dir)
	require.FileExists(t, filepath.Join(precious, "file"))
	require.DirExists(t, filepath.Join(precious, "sub"))
}

func unixGetsid(pid int) int {
	sid, err := unix.Getsid(pid)
	if err != nil {
		return -1
	}
	return sid
}

// liveProcesses lists the processes of uid that are not zombies.
func liveProcesses(uid uint32) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil || !bytes.Contains(st, []byte(fmt.Sprintf("\nUid:\t%d\t", uid))) ||
			bytes.Contains(st, []byte("\nState:\tZ")) {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// TestBeforeKill: the hook runs while the tree is still alive, with the
// cause, exactly once.
func TestBeforeKill(t *testing.T) {
	u := newUser(t)
	for _, tt := range []struct {
		name    string
		script  string
		timeout time.Duration
		want    error
	}{
		{"exit", "sleep 300 >/dev/null & echo $!; exec sleep 0.2", 0, nil},
		{"timeout", "sleep 300 & echo $!; wait", 300 * time.Millisecond, ErrTimeout},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int32
			var alive atomic.Bool
			var cause error
			w := &lineWriter{lines: make(chan string, 1)}
			p, err := Start(context.Background(), Spec{Identity: u.Identity, Path: "sh", Args: []string{"-c", tt.script},
				Stdout: w, Timeout: tt.timeout, Executable: deskrunBinary(t),
				BeforeKill: func(c error) {
					calls.Add(1)
					cause = c
					pid, _ := strconv.Atoi(strings.TrimSpace(<-w.lines))
					alive.Store(pid > 0 && syscall.Kill(pid, 0) == nil)
				}})
			require.NoError(t, err)
			_, err = p.Wait()
			require.Equal(t, int32(1), calls.Load())
			require.True(t, alive.Load(), "the grandchild still ran when the hook was called")
			if tt.want == nil {
				require.NoError(t, cause)
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, cause, tt.want)
				require.ErrorIs(t, err, tt.want)
			}
		})
	}
}
